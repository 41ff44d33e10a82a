"""bebr.jobs: encode jobs over shards (in process and worker processes), resuming, bad rows,
ids, and refusing a different job in the same directory."""

import filecmp
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from bebr.datasets import glove_words
from bebr.fileio import CorruptFileError
from bebr.io import BadRowError, CodeShards, InputError, Manifest
from bebr.jobs import JobMismatchError, encode_shards
from bebr import Binarizer


@pytest.fixture(scope="module")
def glove():
    return glove_words(3000)[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("model") / "m"
    Binarizer(50, 40, 2, hidden=32, version="test-v1").save(d)
    return d


@pytest.fixture
def shards(tmp_path, glove):
    d = tmp_path / "in"
    d.mkdir()
    np.save(d / "a.npy", glove[:1300])
    np.save(d / "b.npy", glove[1300:2000])
    return d


def _files(d):
    return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


def _same_dirs(a, b):
    names = _files(a)
    assert names == _files(b)
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert mismatch == [] and errors == []


def test_encode_matches_model_and_ids(tmp_path, shards, glove, model_dir):
    res = encode_shards(model_dir, shards, tmp_path / "out", chunk_rows=256, shard_rows=500,
                        progress=False)
    m = res.manifest
    assert m.complete and m.count == 2000 and m.units == 3 + 2
    assert (res.written, res.resumed) == (5, 0)
    assert m.model_version == "test-v1" and m.spec.to_dict() == {"dim": 40, "bits": 2}
    codes, ids = CodeShards(tmp_path / "out").load_all()
    ref = Binarizer.load(model_dir).encode(glove[:2000], batch_size=256)
    np.testing.assert_array_equal(codes, ref)
    np.testing.assert_array_equal(ids, np.arange(2000))
    assert [(e.source, e.start, e.stop) for e in m.shards.values()] == [
        (0, 0, 500), (0, 500, 1000), (0, 1000, 1300), (1, 0, 500), (1, 500, 700)]


def test_resume_verifies_and_redoes_only_missing_shards(tmp_path, shards, model_dir):
    ref = tmp_path / "ref"
    encode_shards(model_dir, shards, ref, chunk_rows=256, shard_rows=500, progress=False)
    out = tmp_path / "out"
    encode_shards(model_dir, shards, out, chunk_rows=256, shard_rows=500, progress=False)
    # as after a crash: shard 1 never recorded, shard 3 damaged on disk, a stale temp file
    m = Manifest.load(out)
    del m.shards[1]
    m.save(out)
    (out / "codes-00003.npy").write_bytes(b"half a shard")
    (out / ".codes-00004.npy.x1y2.tmp").write_bytes(b"partial")
    with pytest.raises(CorruptFileError):
        CodeShards(out)
    res = encode_shards(model_dir, shards, out, chunk_rows=256, shard_rows=500, progress=False)
    assert (res.resumed, res.written) == (3, 2)
    _same_dirs(ref, out)
    res = encode_shards(model_dir, shards, out, chunk_rows=256, shard_rows=500, progress=False)
    assert (res.resumed, res.written) == (5, 0)


def test_different_job_in_same_dir_is_refused(tmp_path, shards, model_dir):
    out = tmp_path / "out"
    encode_shards(model_dir, shards, out, chunk_rows=256, shard_rows=500, progress=False)
    with pytest.raises(JobMismatchError, match="job settings differ"):
        encode_shards(model_dir, shards, out, chunk_rows=128, shard_rows=500, progress=False)
    res = encode_shards(model_dir, shards, out, chunk_rows=128, shard_rows=500,
                        progress=False, overwrite=True)
    assert res.written == 5 and res.manifest.job["chunk_rows"] == 128


def test_bad_rows_refused_or_skipped(tmp_path, glove, model_dir):
    x = glove[:600].copy()
    x[123, 7] = np.nan
    x[400, 0] = -np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(BadRowError, match=r"x.npy: row 123 contains NaN"):
        encode_shards(model_dir, tmp_path / "x.npy", tmp_path / "o1", chunk_rows=100,
                      progress=False)
    y = x.copy()
    y[123] = glove[123]
    np.save(tmp_path / "y.npy", y)
    with pytest.raises(BadRowError, match=r"y.npy: row 400 contains inf"):  # from a worker
        encode_shards(model_dir, tmp_path / "y.npy", tmp_path / "o1w", chunk_rows=100,
                      shard_rows=300, progress=False, workers=2)
    res = encode_shards(model_dir, tmp_path / "x.npy", tmp_path / "o2", chunk_rows=100,
                        skip_bad=True, progress=False)
    assert res.manifest.skipped == 2 and res.manifest.count == 598
    codes, ids = CodeShards(tmp_path / "o2").load_all()
    keep = np.setdiff1d(np.arange(600), [123, 400])
    np.testing.assert_array_equal(ids, keep)
    np.testing.assert_array_equal(codes, Binarizer.load(model_dir).encode(x[keep]))


def test_parquet_ids_and_wrong_dim(tmp_path, glove, model_dir):
    ids = np.arange(700, dtype=np.int64) * 10 + 5
    flat = pa.array(glove[:700].ravel(), type=pa.float32())
    pq.write_table(pa.table({"id": ids, "vec": pa.FixedSizeListArray.from_arrays(flat, 50)}),
                   tmp_path / "x.parquet", row_group_size=300)
    encode_shards(model_dir, tmp_path / "x.parquet", tmp_path / "o", chunk_rows=128,
                  shard_rows=256, progress=False)
    codes, got = CodeShards(tmp_path / "o").load_all()
    np.testing.assert_array_equal(got, ids)
    np.testing.assert_array_equal(codes, Binarizer.load(model_dir).encode(glove[:700]))
    np.save(tmp_path / "w.npy", np.zeros((5, 49), np.float32))
    with pytest.raises(InputError, match="dim 49, expected 50"):
        encode_shards(model_dir, tmp_path / "w.npy", tmp_path / "o3", progress=False)


def test_worker_processes_write_identical_output(tmp_path, shards, model_dir):
    encode_shards(model_dir, shards, tmp_path / "one", chunk_rows=256, shard_rows=500,
                  progress=False)
    res = encode_shards(model_dir, shards, tmp_path / "two", chunk_rows=256, shard_rows=500,
                        progress=False, workers=2)
    assert res.written == 5
    _same_dirs(tmp_path / "one", tmp_path / "two")
    assert not [p for p in os.listdir(tmp_path / "two") if p.endswith(".tmp")]


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(state=st.lists(st.sampled_from(["done", "unlisted", "corrupt", "missing", "tmp"]),
                      min_size=6, max_size=6))
def test_resume_from_any_partial_state(tmp_path_factory, glove, model_dir, state):
    """Whatever mix of finished, unrecorded, damaged and missing shards a killed job left,
    a rerun redoes exactly the shards that are not verified and ends identical."""
    d = tmp_path_factory.mktemp("resume")
    np.save(d / "x.npy", glove[:600])
    kw = dict(chunk_rows=64, shard_rows=100, progress=False)
    encode_shards(model_dir, d / "x.npy", d / "ref", **kw)
    out = d / "out"
    encode_shards(model_dir, d / "x.npy", out, **kw)
    m = Manifest.load(out)
    for i, s in enumerate(state):
        codes = out / f"codes-{i:05d}.npy"
        if s == "unlisted":
            del m.shards[i]
        elif s == "corrupt":
            codes.write_bytes(codes.read_bytes()[:-7] + b"garbage")
        elif s == "missing":
            codes.unlink()
        elif s == "tmp":
            del m.shards[i]
            codes.unlink()
            (out / f".codes-{i:05d}.npy.abc.tmp").write_bytes(b"half")
    m.save(out)
    res = encode_shards(model_dir, d / "x.npy", out, **kw)
    assert res.resumed == state.count("done") and res.written == 6 - state.count("done")
    _same_dirs(d / "ref", out)
    assert not list(out.glob(".*.tmp"))
