"""bebr.io: readers (.npy, .fvecs/.bvecs, parquet, dirs/globs), row validation, code shards
and the manifest."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings, strategies as st

from bebr.codes import CodeSpec
from bebr.fileio import CorruptFileError, header_digest
from bebr.io import (BadRowError, CodeShards, InputError, Manifest, check_rows, open_inputs,
                     open_source, read_vecs, write_code_shard, write_vecs)
from bebr.io.manifest import MANIFEST_NAME
from bebr.jobs import plan_units

SETTINGS = settings(max_examples=25, deadline=None)


def _gather(src, start=0, stop=None, chunk_rows=7):
    chunks = list(src.read(start, stop, chunk_rows))
    x = np.concatenate([c.x for c in chunks]) if chunks else np.empty((0, src.d), np.float32)
    return chunks, x


def _check_chunking(chunks, start, stop, chunk_rows):
    sizes = [c.x.shape[0] for c in chunks]
    assert all(s == chunk_rows for s in sizes[:-1])
    assert sum(sizes) == stop - start
    assert [c.offset for c in chunks] == list(range(start, stop, chunk_rows))
    for c in chunks:
        assert c.x.dtype == np.float32 and c.x.flags.c_contiguous and c.x.flags.writeable


# ----------------------------------------------------------------------------- vecs
@SETTINGS
@given(n=st.integers(0, 40), d=st.integers(1, 19), kind=st.sampled_from(["fvecs", "bvecs"]),
       chunk=st.integers(1, 16), seed=st.integers(0, 2**16))
def test_vecs_round_trip_and_chunks(tmp_path_factory, n, d, kind, chunk, seed):
    rng = np.random.default_rng(seed)
    if kind == "fvecs":
        x = rng.standard_normal((n, d)).astype(np.float32)
    else:
        x = rng.integers(0, 256, (n, d), dtype=np.uint8)
    path = tmp_path_factory.mktemp("v") / f"x.{kind}"
    write_vecs(path, x)
    assert path.stat().st_size == n * (4 + d * x.dtype.itemsize)
    back = read_vecs(path)
    if n:
        np.testing.assert_array_equal(back, x)
        src = open_source(path)
        assert (src.n, src.d) == (n, d)
        start, stop = n // 3, n - n // 4
        chunks, got = _gather(src, start, stop, chunk)
        _check_chunking(chunks, start, stop, chunk)
        np.testing.assert_array_equal(got, x[start:stop].astype(np.float32))


def test_fvecs_truncated_and_inconsistent(tmp_path):
    x = np.arange(30, dtype=np.float32).reshape(5, 6)
    p = tmp_path / "x.fvecs"
    write_vecs(p, x)
    data = p.read_bytes()
    (tmp_path / "t.fvecs").write_bytes(data[:-3])
    with pytest.raises(CorruptFileError, match="truncated"):
        open_source(tmp_path / "t.fvecs")
    bad = bytearray(data)
    rec = 4 + 6 * 4
    bad[3 * rec:3 * rec + 4] = np.int32(7).tobytes()
    (tmp_path / "b.fvecs").write_bytes(bytes(bad))
    src = open_source(tmp_path / "b.fvecs")
    with pytest.raises(CorruptFileError, match="record 3 has dimension header 7"):
        list(src.read(0, 5, 2))
    (tmp_path / "z.fvecs").write_bytes(np.int32(-4).tobytes() + b"\0" * 12)
    with pytest.raises(CorruptFileError, match="invalid dimension header"):
        open_source(tmp_path / "z.fvecs")


# ----------------------------------------------------------------------------- npy
@SETTINGS
@given(n=st.integers(1, 60), chunk=st.integers(1, 70), dtype=st.sampled_from(
    ["float32", "float64", "float16", "int16"]), fortran=st.booleans())
def test_npy_source_chunks(tmp_path_factory, n, chunk, dtype, fortran):
    x = (np.arange(n * 5).reshape(n, 5) % 13 - 6).astype(dtype)
    if fortran:
        x = np.asfortranarray(x)
    p = tmp_path_factory.mktemp("n") / "x.npy"
    np.save(p, x)
    src = open_source(p)
    chunks, got = _gather(src, 0, None, chunk)
    _check_chunking(chunks, 0, n, chunk)
    np.testing.assert_array_equal(got, x.astype(np.float32))


def test_npy_rejects_bad_arrays(tmp_path):
    np.save(tmp_path / "one.npy", np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="2-D"):
        open_source(tmp_path / "one.npy")
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="numeric"):
        open_source(tmp_path / "s.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an npy file at all")
    with pytest.raises(CorruptFileError, match="not a readable .npy"):
        open_source(tmp_path / "junk.npy")
    with pytest.raises(FileNotFoundError, match="no such file"):
        open_source(tmp_path / "missing.npy")
    (tmp_path / "x.csv").write_text("1,2\n")
    with pytest.raises(ValueError, match="unknown input format"):
        open_source(tmp_path / "x.csv")


# ----------------------------------------------------------------------------- parquet
def _write_parquet(path, x, ids=None, fixed=True, row_group_size=None):
    flat = pa.array(x.ravel(), type=pa.float32())
    if fixed:
        col = pa.FixedSizeListArray.from_arrays(flat, x.shape[1])
    else:
        col = pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, x.shape[1],
                                                          dtype=np.int32)), flat)
    cols = {"emb": col}
    if ids is not None:
        cols["id"] = pa.array(ids, type=pa.int64())
    pq.write_table(pa.table(cols), path, row_group_size=row_group_size)


@SETTINGS
@given(n=st.integers(1, 80), rg=st.integers(1, 30), chunk=st.integers(1, 25),
       fixed=st.booleans(), seed=st.integers(0, 2**16))
def test_parquet_source_chunks_across_row_groups(tmp_path_factory, n, rg, chunk, fixed, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    p = tmp_path_factory.mktemp("p") / "x.parquet"
    _write_parquet(p, x, ids, fixed=fixed, row_group_size=rg)
    src = open_source(p)
    assert (src.n, src.d, src.has_ids) == (n, 6, True)
    start, stop = n // 4, n - n // 5
    chunks, got = _gather(src, start, stop, chunk)
    _check_chunking(chunks, start, stop, chunk)
    np.testing.assert_array_equal(got, x[start:stop])
    np.testing.assert_array_equal(np.concatenate([c.ids for c in chunks]) if chunks
                                  else np.empty(0, np.int64), ids[start:stop])


def test_parquet_errors(tmp_path):
    ragged = pa.table({"emb": pa.array([[1.0, 2.0], [3.0]], type=pa.list_(pa.float32()))})
    pq.write_table(ragged, tmp_path / "r.parquet")
    with pytest.raises(ValueError, match="row 1 has 1 components, expected 2"):
        list(open_source(tmp_path / "r.parquet").read())
    pq.write_table(pa.table({"a": [1, 2]}), tmp_path / "nolist.parquet")
    with pytest.raises(ValueError, match="no list<float>"):
        open_source(tmp_path / "nolist.parquet")
    _write_parquet(tmp_path / "ok.parquet", np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="no id column 'key'"):
        open_source(tmp_path / "ok.parquet", id_column="key")
    with pytest.raises(ValueError, match="not a list column"):
        open_source(tmp_path / "ok.parquet", column="nope")
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(CorruptFileError, match="not a readable parquet"):
        open_source(tmp_path / "junk.parquet")


# ----------------------------------------------------------------------------- inputs
def test_open_inputs_dirs_globs_and_errors(tmp_path):
    d = tmp_path / "shards"
    d.mkdir()
    for i, n in enumerate([3, 0, 4]):
        np.save(d / f"part-{2 - i}.npy", np.full((n, 5), i, np.float32))
    (d / "README.txt").write_text("not a shard")
    srcs = open_inputs(d)
    assert [s.path.name for s in srcs] == ["part-0.npy", "part-1.npy", "part-2.npy"]
    assert [s.n for s in open_inputs(str(d / "part-*.npy"))] == [4, 0, 3]
    with pytest.raises(InputError, match="glob matches no files"):
        open_inputs(str(d / "*.fvecs"))
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        open_inputs(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no input shards"):
        open_inputs(tmp_path / "empty")
    with pytest.raises(InputError, match="empty input"):
        open_inputs(d / "part-1.npy")
    np.save(tmp_path / "wide.npy", np.zeros((2, 6), np.float32))
    with pytest.raises(InputError, match="dim 6, expected 5"):
        open_inputs([d, tmp_path / "wide.npy"])
    with pytest.raises(InputError, match="dim 5, expected 9 .the model's input dim"):
        open_inputs(d, dim=9)


# ----------------------------------------------------------------------------- validate
def test_check_rows():
    x = np.ones((6, 3), np.float32)
    assert check_rows(x, where="s.npy", first_row=10, skip_bad=False) == (None, 0)
    x[2, 1] = np.nan
    x[4, 0] = np.inf
    with pytest.raises(BadRowError, match=r"s.npy: row 12 contains NaN \(2 bad row"):
        check_rows(x, where="s.npy", first_row=10, skip_bad=False)
    keep, bad = check_rows(x, where="s.npy", first_row=10, skip_bad=True)
    assert bad == 2 and keep.tolist() == [True, True, False, True, False, True]
    x[2, 1] = 0
    with pytest.raises(BadRowError, match="row 14 contains inf"):
        check_rows(x, where="s.npy", first_row=10, skip_bad=False)


# ----------------------------------------------------------------------------- shards
def test_plan_units():
    units = plan_units([5, 0, 12], 5)
    assert [(u.index, u.source, u.start, u.stop, u.id_base) for u in units] == [
        (0, 0, 0, 5, 0), (1, 2, 0, 5, 5), (2, 2, 5, 10, 5), (3, 2, 10, 12, 5)]
    with pytest.raises(ValueError, match="shard_rows"):
        plan_units([3], 0)


def _shards_dir(tmp_path, counts=(5, 0, 7), spec=CodeSpec(20, 2)):
    rng = np.random.default_rng(0)
    m = Manifest(model_version="v1", spec=spec, job={"kind": "test"}, inputs=[],
                 units=len(counts))
    all_codes, all_ids, base = [], [], 0
    for i, n in enumerate(counts):
        codes = spec.pack(rng.integers(0, spec.n_levels, (n, spec.dim)))
        ids = np.arange(base, base + n, dtype=np.int64)
        base += n
        m.shards[i] = write_code_shard(tmp_path, i, codes, ids, source=i, start=0, stop=n)
        all_codes.append(codes)
        all_ids.append(ids)
    m.save(tmp_path)
    return m, np.concatenate(all_codes), np.concatenate(all_ids)


def test_code_shards_round_trip(tmp_path):
    m, codes, ids = _shards_dir(tmp_path)
    cs = CodeShards(tmp_path)
    assert len(cs) == 12 and cs.spec == CodeSpec(20, 2) and cs.model_version == "v1"
    c, i = cs.load_all()
    np.testing.assert_array_equal(c, codes)
    np.testing.assert_array_equal(i, ids)
    d = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert d["format"] == "bebr.codeshards" and d["format_version"] == 1
    assert d["complete"] and d["count"] == 12 and [s["count"] for s in d["shards"]] == [5, 0, 7]
    assert Manifest.load(tmp_path).to_dict() == d


def test_code_shards_detect_corruption(tmp_path):
    _shards_dir(tmp_path)
    p = tmp_path / "codes-00002.npy"
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x10
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptFileError, match="codes-00002.npy: checksum mismatch"):
        CodeShards(tmp_path)
    (tmp_path / "ids-00000.npy").unlink()
    with pytest.raises(CorruptFileError, match="ids-00000.npy: missing"):
        CodeShards(tmp_path)


def test_manifest_refuses_bad_files(tmp_path):
    m, _, _ = _shards_dir(tmp_path)
    mp = tmp_path / MANIFEST_NAME
    good = mp.read_text()
    mp.write_text(good[: len(good) // 2])
    with pytest.raises(CorruptFileError, match="invalid JSON"):
        Manifest.load(tmp_path)
    d = json.loads(good)
    d["format_version"] = 99
    mp.write_text(json.dumps(d))
    with pytest.raises(CorruptFileError, match="format version 99 is not supported"):
        Manifest.load(tmp_path)
    d = json.loads(good)
    d["units"] = 4
    mp.write_text(json.dumps(d))
    with pytest.raises(CorruptFileError, match="header checksum mismatch"):
        Manifest.load(tmp_path)
    d = json.loads(good)
    d["count"] = 13
    d["header_sha256"] = header_digest(d)  # crafted: checksum and all
    mp.write_text(json.dumps(d))
    with pytest.raises(CorruptFileError, match="totals disagree"):
        Manifest.load(tmp_path)
    d = json.loads(good)
    del d["shards"][1]["sha256"]
    d["count"] = 12
    mp.write_text(json.dumps(d))
    with pytest.raises(CorruptFileError, match="corrupted manifest"):
        Manifest.load(tmp_path)
    d = json.loads(good)
    d["shards"].pop()
    d.update(count=5, complete=False)
    d["header_sha256"] = header_digest(d)  # crafted: checksum and all
    mp.write_text(json.dumps(d))
    with pytest.raises(CorruptFileError, match="incomplete job .2 of 3 shards"):
        CodeShards(tmp_path)
    mp.unlink()
    with pytest.raises(FileNotFoundError, match="no manifest"):
        CodeShards(tmp_path)
