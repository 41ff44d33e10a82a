"""Index under concurrent use: saves while another thread changes the index, adds without ids
from several threads, a file replaced while it is loaded, the largest id, and the threaded
search paths (min_parallel_work lowered so small indexes run them) against one thread."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import bebr
import bebr.index as bindex
from bebr import CodeSpec, reference
from bebr.fileio import CorruptFileError

MAX_ID = 2**63 - 2


def random_codes(rng, spec, n):
    return spec.pack(rng.integers(0, spec.n_levels, (n, spec.dim)))


@pytest.fixture
def parallel_work():
    """Set bebr.index.set_min_parallel_work for the test, restoring the previous value."""
    before = bindex.min_parallel_work()
    yield bindex.set_min_parallel_work
    bindex.set_min_parallel_work(before)


# ---------------------------------------------------------------- save while changing
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_saves_while_another_thread_adds_and_removes_load_back_consistent(tmp_path, metric):
    # (before saves held the index's lock: files with -1 ids, too few code bytes, or a load
    # that hung)
    rng = np.random.default_rng(1)
    spec = CodeSpec(64, 2)
    table = random_codes(rng, spec, 4099)  # the code of id i is table[i % 4099]
    idx = bebr.Index(spec, metric)
    idx.add(table[np.arange(8000) % 4099], ids=np.arange(8000))
    stop = threading.Event()
    errors = []

    def writer():
        try:
            live, nxt = list(range(8000)), 8000
            while not stop.is_set():
                ids = np.arange(nxt, nxt + 4000)
                idx.add(table[ids % 4099], ids=ids)
                idx.remove(live[:4000])  # over half the slots dead: compacts
                live = live[4000:] + list(ids)
                nxt += 4000
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    t = threading.Thread(target=writer)
    t.start()
    try:
        for r in range(15):
            path = tmp_path / f"s{r}.bebr"
            idx.save(path)
            back = bebr.Index.load(path, mmap=bool(r % 2))
            ids = back.ids()
            assert len(ids) == len(back) and len(np.unique(ids)) == len(ids)
            assert ids.min() >= 0
            np.testing.assert_array_equal(back.get_codes(ids), table[ids % 4099])
    finally:
        stop.set()
        t.join()
    assert not errors


# ---------------------------------------------------------------- ids
@pytest.mark.parametrize("kind", ["index", "hamming"])
def test_concurrent_adds_without_ids_get_distinct_ids(kind):
    rng = np.random.default_rng(2)
    spec = CodeSpec(32, 2) if kind == "index" else CodeSpec(32, 1)
    idx = bebr.Index(spec) if kind == "index" else bebr.HammingIndex(32)
    codes = random_codes(rng, spec, 64)
    idx.add(codes[:5])  # next id 5
    n_threads, rounds, batch = 4, 60, 9
    got = [[] for _ in range(n_threads)]
    errors = []
    start = threading.Barrier(n_threads)

    def adder(t):
        try:
            start.wait()
            for _ in range(rounds):
                got[t].append(idx.add(codes[:batch]))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=adder, args=(t,)) for t in range(n_threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors
    every = np.concatenate([a for g in got for a in g])
    assert len(idx) == 5 + n_threads * rounds * batch
    np.testing.assert_array_equal(np.sort(every), np.arange(5, len(idx)))
    for g in got:  # each add's ids are one contiguous run
        for a in g:
            np.testing.assert_array_equal(a, np.arange(a[0], a[0] + batch))
    np.testing.assert_array_equal(np.sort(idx.ids()), np.arange(len(idx)))


def test_largest_id_is_two_to_63_minus_2(tmp_path):
    rng = np.random.default_rng(3)
    spec = CodeSpec(16, 1)
    codes = random_codes(rng, spec, 3)
    idx = bebr.Index(spec)
    for bad in ([2**63 - 1], np.array([2**63 - 1], np.int64), np.array([2**63 - 1], np.uint64)):
        with pytest.raises(ValueError, match=r"2\*\*63 - 2"):
            idx.add(codes[:1], ids=bad)
        with pytest.raises(ValueError, match=r"2\*\*63 - 2"):
            idx.upsert(codes[:1], ids=bad)
    assert len(idx) == 0
    idx.add(codes[:1], ids=[MAX_ID])
    s, i = idx.search(codes[:1], 2)
    assert i[0, 0] == MAX_ID and i[0, 1] == -1
    with pytest.raises(ValueError, match="ids end at 2\\*\\*63 - 2"):
        idx.add(codes[1:2])  # no id left after the largest one
    assert len(idx) == 1
    path = tmp_path / "top.bebr"
    idx.save(path)
    back = bebr.Index.load(path)
    np.testing.assert_array_equal(back.ids(), [MAX_ID])
    with pytest.raises(ValueError, match="ids end"):
        back.add(codes[1:2])
    h = bebr.HammingIndex(16)
    with pytest.raises(ValueError, match=r"2\*\*63 - 2"):
        h.add(codes[:1], ids=[2**63 - 1])


# ---------------------------------------------------------------- load vs replace
def test_load_maps_the_file_it_verified(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    spec = CodeSpec(40, 2)
    a, b = bebr.Index(spec), bebr.Index(spec)
    ca, cb = random_codes(rng, spec, 700), random_codes(rng, spec, 700)
    a.add(ca)
    b.add(cb)
    path, other = tmp_path / "x.bebr", tmp_path / "y.bebr"
    a.save(path)
    b.save(other)
    real = bindex._map_section
    replaced = []

    def replace_then_map(*args, **kwargs):
        # an atomic replace between the checksum pass and the mapping (another process's save)
        if not replaced:
            os.replace(other, path)
            replaced.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(bindex, "_map_section", replace_then_map)
    loaded = bebr.Index.load(path, mmap=True)
    assert replaced and loaded.is_mmapped
    np.testing.assert_array_equal(loaded.get_codes(np.arange(700)), ca)
    want = reference.search_codes(spec, ca[:3], ca, np.arange(700), 5)[1]
    np.testing.assert_array_equal(loaded.search(ca[:3], 5)[1], want)


# ---------------------------------------------------------------- threaded search paths
@pytest.mark.parametrize("metric", ["ip", "cosine", "hamming"])
def test_threaded_search_paths_match_one_thread(parallel_work, metric, level):
    rng = np.random.default_rng(5)
    spec = CodeSpec(512, 1 if metric == "hamming" else 2)
    idx = bebr.HammingIndex(512) if metric == "hamming" else bebr.Index(spec, metric)
    n = 64 * 70  # 70 blocks of 4 or 8 KiB: 2 or 3 cache chunks of 256 KiB
    codes = random_codes(rng, spec, n)
    idx.add(codes)
    idx.remove(np.arange(0, n, 7))
    queries = random_codes(rng, spec, 256)
    parallel_work(10)  # one thread per 10 block-queries
    # many queries split by queries: items of 4 x kMaxGroup, or of 64 where a batched kernel
    # (amx) scores them, so 256 queries give every one of 4 threads an item at every level
    for nq, split in ((1, "database"), (3, "database"), (256, "queries")):
        q = queries[:nq]
        s1, i1 = idx.search(q, 10, threads=1)
        one = bindex.last_search_stats()
        assert one["workers"] == 1 and one["split"] == "none"
        for threads in (2, 4):
            s, i = idx.search(q, 10, threads=threads, exclude=np.arange(1, n, 11))
            e1 = idx.search(q, 10, threads=1, exclude=np.arange(1, n, 11))
            np.testing.assert_array_equal(i, e1[1])
            np.testing.assert_array_equal(s, e1[0])
            s, i = idx.search(q, 10, threads=threads)
            st = bindex.last_search_stats()
            np.testing.assert_array_equal(i, i1)
            np.testing.assert_array_equal(s, s1)
            assert st["workers"] == threads, st  # 70 * nq / 10 >= 4 threads' work
            assert st["split"] == split, st
            assert 1 <= st["active_workers"] <= threads
            assert st["items"] >= 2
    parallel_work(4096)
    idx.search(queries[:1], 10, threads=4)
    assert bindex.last_search_stats()["workers"] == 1  # 70 block-queries < 4096


def test_min_parallel_work_checks_and_environment():
    with pytest.raises(ValueError, match="min_parallel_work must be >= 1"):
        bindex.set_min_parallel_work(0)
    with pytest.raises(TypeError, match="must be an int"):
        bindex.set_min_parallel_work(2.5)
    code = "import bebr.index as b; print(b.min_parallel_work())"
    env = dict(os.environ, BEBR_MIN_PARALLEL_WORK="7")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "7"
    env["BEBR_MIN_PARALLEL_WORK"] = "zero"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "BEBR_MIN_PARALLEL_WORK must be an integer >= 1" in bad.stderr


def test_corrupt_file_error_is_the_load_error(tmp_path):
    path = tmp_path / "empty.bebr"
    path.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="truncated"):
        bebr.Index.load(path)
