"""Index versions, save/load/mmap, corrupted files, concurrency, and a stateful model test."""

import os
import struct
import threading

import numpy as np
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

import bebr
import bebr.index as bindex
from bebr import CodeSpec, reference
from bebr.fileio import CorruptFileError, sha256_file


def random_codes(rng, spec, n):
    return spec.pack(rng.integers(0, spec.n_levels, (n, spec.dim)))


def rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")  # pragma: no cover


@pytest.fixture
def small(tmp_path):
    rng = np.random.default_rng(0)
    spec = CodeSpec(45, 3)
    codes = random_codes(rng, spec, 500)
    idx = bebr.Index(spec, "cosine")
    idx.add(codes[:300], version=1)
    idx.add(codes[300:], ids=np.arange(1000, 1200), version=2)
    idx.remove(np.arange(0, 300, 3))
    path = tmp_path / "small.bebr"
    idx.save(path)
    return idx, path, codes, rng


# ---------------------------------------------------------------- versions
def test_versions_upsert_and_ids_of_version():
    spec = CodeSpec(10, 2)
    rng = np.random.default_rng(1)
    idx = bebr.Index(spec)
    a = random_codes(rng, spec, 6)
    idx.add(a, version=1)
    assert idx.versions() == {1: 6}
    b = random_codes(rng, spec, 3)
    idx.upsert(b, ids=[4, 5, 9], version=2)  # replaces 4, 5; adds 9
    assert idx.versions() == {1: 4, 2: 3}
    assert sorted(idx.ids_of_version(2).tolist()) == [4, 5, 9]
    np.testing.assert_array_equal(idx.get_codes([4, 5, 9]), b)
    np.testing.assert_array_equal(idx.get_codes([0, 3]), a[[0, 3]])
    idx.remove([4])
    assert idx.versions() == {1: 4, 2: 2}
    assert idx.ids_of_version(7).tolist() == []
    # one pass over every version
    q = random_codes(rng, spec, 2)
    allc = np.concatenate([a[:4], b[1:]])
    want = reference.search_codes(spec, q, allc, np.array([0, 1, 2, 3, 5, 9]), 6)
    got = idx.search(q, 6)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    with pytest.raises(ValueError, match="duplicate id 3"):
        idx.upsert(b[:2], ids=[3, 3])


# ---------------------------------------------------------------- save / load
@pytest.mark.parametrize("mmap", [True, False])
def test_round_trip_exact(small, mmap):
    idx, path, codes, rng = small
    loaded = bebr.Index.load(path, mmap=mmap)
    assert loaded.is_mmapped == mmap
    assert isinstance(loaded._mmap, np.memmap) == mmap
    assert loaded.spec == idx.spec and loaded.metric == "cosine"
    assert len(loaded) == len(idx) and loaded.versions() == idx.versions()
    np.testing.assert_array_equal(np.sort(loaded.ids()), np.sort(idx.ids()))
    ids = idx.ids()
    np.testing.assert_array_equal(loaded.get_codes(ids), idx.get_codes(ids))
    q = random_codes(rng, idx.spec, 7)
    for a, b in zip(idx.search(q, 20), loaded.search(q, 20)):
        np.testing.assert_array_equal(a, b)
    # default ids continue after the largest id ever added
    assert loaded.add(codes[:1], version=3).tolist() == [1200]


def test_hamming_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    spec = CodeSpec(70, 1)
    h = bebr.HammingIndex(70)
    h.add(random_codes(rng, spec, 100))
    h.save(tmp_path / "h.bebr")
    g = bebr.HammingIndex.load(tmp_path / "h.bebr")
    q = random_codes(rng, spec, 3)
    for a, b in zip(h.search(q, 9), g.search(q, 9)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(CorruptFileError, match="not a Index file"):
        bebr.Index.load(tmp_path / "h.bebr")


def test_mmap_does_not_read_codes_and_copies_on_write(tmp_path):
    rng = np.random.default_rng(3)
    spec = CodeSpec(512, 4)  # 256 bytes per code
    n = 160_000  # 40 MiB of codes
    idx = bebr.Index(spec)
    idx.add(rng.integers(0, 256, (n, spec.code_bytes), dtype=np.uint8))
    path = tmp_path / "big.bebr"
    idx.save(path)
    digest = sha256_file(path)
    del idx
    before = rss_bytes()
    loaded = bebr.Index.load(path, mmap=True, verify=True)
    grown = rss_bytes() - before
    assert loaded.is_mmapped and isinstance(loaded._mmap, np.memmap)
    assert grown < 12 << 20, f"loading grew RSS by {grown >> 20} MiB for 40 MiB of codes"
    loaded.remove([5, 6])  # tombstones only: still mapped
    assert loaded.is_mmapped
    loaded.add(random_codes(rng, spec, 2), version=1)  # copy-on-write
    assert not loaded.is_mmapped and len(loaded) == n
    assert sha256_file(path) == digest  # the file is never written through the mapping
    loaded.save(path)  # replacing the file it was loaded from is fine
    assert len(bebr.Index.load(path, mmap=False)) == n


def test_truncated_corrupted_and_wrong_version_files(small, tmp_path):
    _, path, _, _ = small
    data = path.read_bytes()
    bad = tmp_path / "bad.bebr"
    cases = {
        "truncated": data[: len(data) - 100],
        "no header": data[:10],
        "bad magic": b"XXXXXXXX" + data[8:],
        "format version": data[:8] + struct.pack("<I", 99) + data[12:],
        "header checksum": data[:90] + bytes([data[90] ^ 1]) + data[91:],
        "checksum mismatch": data[:-200] + bytes([data[-200] ^ 0x10]) + data[-199:],
    }
    for match, content in cases.items():
        bad.write_bytes(content)
        with pytest.raises(CorruptFileError, match=match):
            bebr.Index.load(bad, mmap=True)
    with pytest.raises(FileNotFoundError):
        bebr.Index.load(tmp_path / "missing.bebr")


def test_crash_mid_save_leaves_old_file(small, monkeypatch, tmp_path):
    idx, path, codes, _ = small
    digest = sha256_file(path)
    real = bindex.atomic_writer

    class Boom(RuntimeError):
        pass

    def crashing_writer(p):
        class Wrapped:
            def __init__(self, ctx):
                self.ctx = ctx

            def __enter__(self):
                f = self.ctx.__enter__()
                written = [0]
                orig = f.write

                def write(b):
                    written[0] += len(b)
                    if written[0] > 100:  # the header (the data area is streamed by C++)
                        raise Boom("disk on fire")
                    return orig(b)

                f.write = write
                return f

            def __exit__(self, *exc):
                return self.ctx.__exit__(*exc)

        return Wrapped(real(p))

    monkeypatch.setattr(bindex, "atomic_writer", crashing_writer)
    idx.add(codes[:5], ids=np.arange(5000, 5005))
    with pytest.raises(Boom):
        idx.save(path)
    assert sha256_file(path) == digest
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    assert len(bebr.Index.load(path)) == len(idx) - 5


# ---------------------------------------------------------------- concurrency
def test_search_while_adding_is_consistent():
    rng = np.random.default_rng(4)
    spec = CodeSpec(64, 2)
    batches = [random_codes(rng, spec, 700) for _ in range(12)]
    q = random_codes(rng, spec, 2)
    allc = np.concatenate(batches)
    prefix_results = []  # states a search may see: batches 0..j-1, optionally + churn of j-1
    for j in range(len(batches) + 1):
        m = 700 * j
        prefix_results.append(reference.search_codes(spec, q, allc[:m], np.arange(m), 10)[1])
        if j:
            c = np.concatenate([allc[:m], batches[j - 1][:50]])
            ids = np.concatenate([np.arange(m), 10**6 + np.arange(50)])
            prefix_results.append(reference.search_codes(spec, q, c, ids, 10)[1])
    idx = bebr.Index(spec)
    errors, seen = [], []
    done = threading.Event()

    def reader():
        try:
            while not done.is_set():
                s, i = idx.search(q, 10, threads=2)
                seen.append(i)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    try:
        for j, b in enumerate(batches):
            idx.add(b, ids=np.arange(700 * j, 700 * (j + 1)))
            churn = 10**6 + np.arange(50)
            idx.add(b[:50], ids=churn)
            idx.remove(churn)  # churn: add + remove (may compact)
    finally:
        done.set()
        for t in readers:
            t.join()
    assert not errors
    assert seen
    for i in seen:  # every result is the exact answer for some prefix of the adds
        assert any(np.array_equal(i, want) for want in prefix_results)


# ---------------------------------------------------------------- stateful model test
SPEC = CodeSpec(13, 2)


class IndexMachine(RuleBasedStateMachine):
    """bebr.Index against a dict model {id: (code, version)} under random operations."""

    def __init__(self):
        super().__init__()
        self.rng = np.random.default_rng(0)
        self.model = {}
        self.next_id = 0

    @initialize(tmp=st.just(None))
    def setup(self, tmp):
        import tempfile

        self.dir = tempfile.mkdtemp(prefix="bebr-state-")
        self.idx = bebr.Index(SPEC)

    def codes(self, n, seed):
        return random_codes(np.random.default_rng(seed), SPEC, n)

    @rule(n=st.integers(0, 80), version=st.integers(0, 3), seed=st.integers(0, 1000),
          explicit=st.booleans())
    def add(self, n, version, seed, explicit):
        c = self.codes(n, seed)
        if explicit:
            ids = np.arange(self.next_id + 3, self.next_id + 3 + 2 * n, 2)
            got = self.idx.add(c, ids, version=version)
        else:
            got = self.idx.add(c, version=version)
        for i, code in zip(got.tolist(), c):
            self.model[i] = (code, version)
        if n:
            self.next_id = max(self.next_id, int(got.max()) + 1)

    @rule(n=st.integers(1, 30), version=st.integers(0, 3), seed=st.integers(0, 1000))
    def upsert(self, n, version, seed):
        have = sorted(self.model)
        rng = np.random.default_rng(seed)
        old = rng.choice(have, min(len(have), n // 2), replace=False) if have else []
        new = np.arange(self.next_id, self.next_id + n - len(old))
        ids = np.concatenate([np.asarray(old, np.int64), new]).astype(np.int64)
        c = self.codes(len(ids), seed + 1)
        self.idx.upsert(c, ids, version=version)
        for i, code in zip(ids.tolist(), c):
            self.model[i] = (code, version)
        self.next_id = max(self.next_id, int(ids.max()) + 1)

    @precondition(lambda self: self.model)
    @rule(frac=st.floats(0.05, 1.0), seed=st.integers(0, 1000))
    def remove(self, frac, seed):
        have = sorted(self.model)
        ids = np.random.default_rng(seed).choice(have, max(1, int(frac * len(have))), replace=False)
        self.idx.remove(ids)
        for i in ids.tolist():
            del self.model[i]

    @rule(seed=st.integers(0, 1000))
    def remove_unknown(self, seed):
        with pytest.raises(ValueError, match="not in the index"):
            self.idx.remove([self.next_id + 10 + seed])

    @rule(k=st.integers(1, 25), seed=st.integers(0, 1000), threads=st.sampled_from([1, 2]))
    def search(self, k, seed, threads):
        q = self.codes(3, seed + 7)
        ids = np.array(sorted(self.model), np.int64)
        codes = (np.stack([self.model[i][0] for i in ids]) if len(ids)
                 else np.zeros((0, SPEC.code_bytes), np.uint8))
        want = reference.search_codes(SPEC, q, codes, ids, k)
        got = self.idx.search(q, k, threads=threads)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])

    @rule(mmap=st.booleans())
    def save_load(self, mmap):
        path = os.path.join(self.dir, "state.bebr")
        self.idx.save(path)
        self.idx = bebr.Index.load(path, mmap=mmap)

    @rule()
    def compact(self):
        self.idx.compact()

    @invariant()
    def counts_match(self):
        if not hasattr(self, "idx"):
            return
        assert len(self.idx) == len(self.model)
        versions = {}
        for _, v in self.model.values():
            versions[v] = versions.get(v, 0) + 1
        assert self.idx.versions() == versions


TestIndexStateMachine = IndexMachine.TestCase
TestIndexStateMachine.settings = settings(max_examples=25, stateful_step_count=20, deadline=None)


# ---------------------------------------------------------------- resident memory
@pytest.mark.parametrize("metric", ["ip", "cosine"])
def test_memory_bytes_per_item_as_documented(tmp_path, metric):
    # docs/FORMAT.md "Resident memory": with mmap=True 8 (id) + 4 (version) + 4 (cosine norm)
    # + 1/8 (alive bit) + 8 / load (id map, load 0.35..0.7) bytes per item; the codes stay mapped
    spec = CodeSpec(64, 4)
    n = 20_000
    idx = bebr.Index(spec, metric)
    idx.add(random_codes(np.random.default_rng(8), spec, n))
    path = tmp_path / "m.bebr"
    idx.save(path)
    mapped = bebr.Index.load(path, mmap=True)
    read = bebr.Index.load(path, mmap=False)
    fixed = 12 + (4 if metric == "cosine" else 0) + 1 / 8
    per_item = mapped.memory_bytes() / n
    assert fixed + 8 / 0.7 - 0.5 <= per_item <= fixed + 8 / 0.35 + 0.5
    assert read.memory_bytes() - mapped.memory_bytes() >= n * spec.code_bytes
    mapped.add(random_codes(np.random.default_rng(9), spec, 1))  # copy-on-write: codes owned now
    assert not mapped.is_mmapped and mapped.memory_bytes() >= read.memory_bytes()
