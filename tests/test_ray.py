"""Ray engine: byte-identical output to the local engine, resuming, errors; sharded search
over Ray actors equals one index. ``merge_topk`` is checked against the numpy reference."""

import filecmp
import os

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from bebr.distributed import merge_topk
from bebr.reference import topk_rows


# ----------------------------------------------------------------------------- merge (no ray)
@settings(max_examples=60, deadline=None)
@given(nq=st.integers(1, 4), sizes=st.lists(st.integers(0, 12), min_size=1, max_size=4),
       k=st.integers(1, 15), levels=st.integers(1, 4), desc=st.booleans(),
       seed=st.integers(0, 2**16))
def test_merge_topk_equals_one_topk(nq, sizes, k, levels, desc, seed):
    rng = np.random.default_rng(seed)
    n = sum(sizes)
    ids = rng.permutation(1000)[:n].astype(np.int64)
    scores = rng.integers(0, levels, (nq, n)).astype(np.float32)  # many ties
    want_s, want_i = topk_rows(scores, ids, k, desc)
    parts_s, parts_i, a = [], [], 0
    for size in sizes:
        s, i = topk_rows(scores[:, a:a + size], ids[a:a + size], k, desc)
        parts_s.append(s)
        parts_i.append(i)
        a += size
    got_s, got_i = merge_topk(parts_s, parts_i, k, descending=desc)
    np.testing.assert_array_equal(got_i, want_i)
    np.testing.assert_array_equal(got_s, want_s)


def test_merge_topk_rejects_bad_args():
    with pytest.raises(ValueError, match="k must be a positive int"):
        merge_topk([np.zeros((1, 1))], [np.zeros((1, 1), np.int64)], 0)
    with pytest.raises(ValueError, match="differ in shape"):
        merge_topk([np.zeros((1, 2))], [np.zeros((1, 3), np.int64)], 1)


# ----------------------------------------------------------------------------- ray
@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    import torch

    from bebr import Binarizer
    from bebr.datasets import glove_words

    d = tmp_path_factory.mktemp("rayjob")
    x = glove_words(2500)[1]
    (d / "in").mkdir()
    np.save(d / "in" / "a.npy", x[:1500])
    np.save(d / "in" / "b.npy", x[1500:])
    torch.manual_seed(1)
    Binarizer(50, 48, 2, hidden=32, version="ray-v1").save(d / "model")
    return d, x


def _same_dirs(a, b):
    names = sorted(p for p in os.listdir(a) if not p.startswith("."))
    assert names == sorted(p for p in os.listdir(b) if not p.startswith("."))
    assert filecmp.cmpfiles(a, b, names, shallow=False)[0] == names


@pytest.mark.ray
def test_ray_engine_is_byte_identical_and_resumes(ray_local, job, tmp_path):
    from bebr.io import CodeShards, Manifest
    from bebr.jobs import encode_shards

    d, x = job
    kw = dict(chunk_rows=300, shard_rows=600, progress=False)
    encode_shards(d / "model", d / "in", tmp_path / "local", **kw)
    res = encode_shards(d / "model", d / "in", tmp_path / "ray", engine="ray", **kw)
    assert res.written == 5 and res.manifest.complete
    _same_dirs(tmp_path / "local", tmp_path / "ray")
    assert len(CodeShards(tmp_path / "ray")) == 2500

    m = Manifest.load(tmp_path / "ray")
    del m.shards[0], m.shards[3]
    m.save(tmp_path / "ray")
    res = encode_shards(d / "model", d / "in", tmp_path / "ray", engine="ray", **kw)
    assert (res.resumed, res.written) == (3, 2)
    _same_dirs(tmp_path / "local", tmp_path / "ray")


@pytest.mark.ray
def test_cli_ray_engine(ray_local, job, tmp_path):
    import contextlib
    import io

    from bebr.cli import main

    d, _ = job
    args = ["encode", str(d / "in"), "--model", str(d / "model"), "--chunk-rows", "300",
            "--shard-rows", "600", "--no-progress"]
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(args + ["-o", str(tmp_path / "ray"), "--engine", "ray"]) == 0
        assert main(args + ["-o", str(tmp_path / "local")]) == 0
    assert "encoded 2500 vectors" in err.getvalue()
    _same_dirs(tmp_path / "local", tmp_path / "ray")


@pytest.mark.ray
def test_ray_engine_reports_worker_errors(ray_local, job, tmp_path):
    from bebr.io import BadRowError
    from bebr.jobs import encode_shards

    d, x = job
    bad = x[:400].copy()
    bad[250, 1] = np.inf
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(BadRowError, match="bad.npy: row 250 contains inf"):
        encode_shards(d / "model", tmp_path / "bad.npy", tmp_path / "o", engine="ray",
                      progress=False)
    with pytest.raises(ValueError, match="pass the saved model file's path"):
        from bebr import Binarizer

        encode_shards(Binarizer.load(d / "model"), d / "in", tmp_path / "o2", engine="ray")


@pytest.mark.ray
def test_sharded_index_equals_one_index(ray_local, tmp_path):
    import bebr
    from bebr.distributed import ShardedIndex

    spec = bebr.CodeSpec(40, 2)
    rng = np.random.default_rng(3)
    n = 3000
    codes = spec.pack(rng.integers(0, 4, (n, 40)))
    codes[1000:1010] = codes[:10]  # exact ties across shards
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    q = spec.pack(rng.integers(0, 4, (25, 40)))
    q[:3] = codes[:3]
    one = bebr.Index(spec)
    one.add(codes, ids)
    paths = []
    for s, (a, b) in enumerate([(0, 900), (900, 2100), (2100, n)]):
        idx = bebr.Index(spec)
        idx.add(codes[a:b], ids[a:b])
        idx.save(tmp_path / f"shard{s}.bebr")
        paths.append(tmp_path / f"shard{s}.bebr")
    with ShardedIndex(paths) as sharded:
        assert len(sharded) == n and sharded.sizes == [900, 1200, 900]
        for k in (1, 10, 57):
            want_s, want_i = one.search(q, k)
            got_s, got_i = sharded.search(q, k)
            np.testing.assert_array_equal(got_i, want_i)
            np.testing.assert_array_equal(got_s, want_s)
        q4 = bebr.CodeSpec(40, 4).pack(rng.integers(0, 16, (7, 40)))
        np.testing.assert_array_equal(sharded.search(q4, 10, query_bits=4)[1],
                                      one.search(q4, 10, query_bits=4)[1])
    # a mixed-version index in shards: version queries and calibration pass through
    vers = np.where(np.arange(n) % 3 == 0, 1, 2)
    mixed = bebr.Index(spec, "cosine")
    paths = []
    for s, (a, b) in enumerate([(0, 1700), (1700, n)]):
        idx = bebr.Index(spec, "cosine")
        for v in (1, 2):
            sel = np.arange(a, b)[vers[a:b] == v]
            idx.add(codes[sel], ids[sel], version=v)
            mixed.add(codes[sel], ids[sel], version=v)
        idx.save(tmp_path / f"mixed{s}.bebr")
        paths.append(tmp_path / f"mixed{s}.bebr")
    q1 = bebr.CodeSpec(40, 4).pack(rng.integers(0, 16, (7, 40)))
    kw = dict(query_bits=4, version_queries={1: q1}, version_calibration={1: (0.8, 0.05)})
    with ShardedIndex(paths) as sharded:
        got_s, got_i = sharded.search(q4, 10, **kw)
        want_s, want_i = mixed.search(q4, 10, **kw)
        np.testing.assert_array_equal(got_i, want_i)
        np.testing.assert_array_equal(got_s, want_s)
        assert not np.array_equal(got_i, mixed.search(q4, 10, query_bits=4)[1])
