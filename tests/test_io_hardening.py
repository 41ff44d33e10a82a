"""Untrusted files and job inputs (issue 15): manifests naming files outside their directory,
weights of the wrong dtype or shape, model files without head calibrations, unreadable .npy
files, ids that an index would refuse, and the ``--skip-bad`` rerun of a failed job."""

import json
import os
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file, save_file

from bebr import Binarizer, CodeSpec
from bebr.fileio import CorruptFileError, header_digest, sha256_file
from bebr.io import CodeShards, Manifest, open_source
from bebr.io.idcheck import check_ids, find_duplicate_id
from bebr.io.readers import load_npy
from bebr.jobs import encode_shards
from bebr.model import UncalibratedHeadWarning

D = 16


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return Binarizer(D, 32, 2, hidden=16, version="v1")


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(0).standard_normal((300, D)).astype(np.float32)


def _rewrite_weights(path, state):
    """Replace a model directory's weights and fix the header's size and checksum, as a
    crafted (not merely corrupted) file would."""
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((path / "config.json").read_text())
    cfg["weights_sha256"] = sha256_file(path / "model.safetensors")
    cfg["weights_bytes"] = os.path.getsize(path / "model.safetensors")
    _seal(path / "config.json", cfg)


def _seal(path, header):
    """Write a JSON header with a matching header_sha256: a crafted file, not a corrupted one
    (an unsealed edit is refused by the checksum before any field check)."""
    header["header_sha256"] = header_digest(header)
    path.write_text(json.dumps(header))


def _write_parquet(path, x, ids):
    flat = pa.array(np.ascontiguousarray(x).ravel(), type=pa.float32())
    pq.write_table(pa.table({"id": np.asarray(ids, np.int64),
                             "emb": pa.FixedSizeListArray.from_arrays(flat, x.shape[1])}),
                   path, row_group_size=64)


def _edit_manifest(directory, edit):
    m = json.loads((directory / "manifest.json").read_text())
    edit(m)
    _seal(directory / "manifest.json", m)


# ------------------------------------------------------------------ manifest paths
@pytest.mark.parametrize("name", ["../codes-00000.npy", "/etc/passwd", "sub/codes-00000.npy",
                                  "codes-00001.npy", "ids-00000.npy"])
def test_manifest_cannot_name_files_outside_its_directory(model, x, tmp_path, name):
    out = tmp_path / "c"
    encode_shards(model, _save(tmp_path, x), out, progress=False)
    _edit_manifest(out, lambda m: m["shards"][0].update(codes=name))
    with pytest.raises(CorruptFileError, match="must lie in the manifest's directory"):
        CodeShards(out)


def test_shard_symlink_escaping_the_directory_is_refused(model, x, tmp_path):
    out = tmp_path / "c"
    encode_shards(model, _save(tmp_path, x), out, progress=False)
    outside = tmp_path / "elsewhere.npy"
    os.replace(out / "codes-00000.npy", outside)
    os.symlink(outside, out / "codes-00000.npy")
    with pytest.raises(CorruptFileError, match="outside the shard directory"):
        CodeShards(out)
    with pytest.raises(CorruptFileError, match="outside the shard directory"):
        list(CodeShards(out, verify=False).shards())
    os.unlink(out / "codes-00000.npy")  # a link inside the directory is fine
    os.replace(outside, out / "real.npy")
    os.symlink(out / "real.npy", out / "codes-00000.npy")
    assert len(CodeShards(out)) == x.shape[0]


@pytest.mark.parametrize("field,value", [("count", "300"), ("count", -1), ("count", True),
                                         ("index", 1.0), ("sha256", "zz"), ("start", 500),
                                         ("source", "0"), ("extra", 1)])
def test_manifest_shard_fields_are_type_checked(model, x, tmp_path, field, value):
    out = tmp_path / "c"
    encode_shards(model, _save(tmp_path, x), out, progress=False)
    _edit_manifest(out, lambda m: m["shards"][0].update({field: value}))
    with pytest.raises(CorruptFileError, match="corrupted manifest"):
        Manifest.load(out)


def _save(tmp_path, x, name="x.npy"):
    np.save(tmp_path / name, x)
    return tmp_path / name


@pytest.mark.parametrize("edit", [lambda h: h.update(version="v3"),
                                  lambda h: h["config"].update(dim=31),
                                  lambda h: h.pop("code_spec")])
def test_edited_model_header_is_refused_by_its_checksum(model, tmp_path, edit):
    model.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    edit(cfg)
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CorruptFileError, match="config.json: header checksum mismatch"):
        Binarizer.load(tmp_path / "m")
    del cfg["header_sha256"]  # a file from before the checksum: its fields are checked
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    if "code_spec" in cfg and cfg["version"] == "v1" and cfg["config"]["dim"] == 32:
        raise AssertionError("edit did nothing")
    with pytest.raises(CorruptFileError):
        Binarizer.load(tmp_path / "m")


def test_edited_manifest_is_refused_by_its_checksum(model, x, tmp_path):
    out = tmp_path / "c"
    encode_shards(model, _save(tmp_path, x), out, progress=False)
    m = json.loads((out / "manifest.json").read_text())
    m["spec"]["dim"] = 31  # same code width as 32: only the checksum can tell
    (out / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(CorruptFileError, match="header checksum mismatch"):
        CodeShards(out)
    del m["header_sha256"]  # manifests from before the checksum still load
    (out / "manifest.json").write_text(json.dumps(m))
    assert CodeShards(out).spec == CodeSpec(31, 2)


# ------------------------------------------------------------------ weights
@pytest.mark.parametrize("what", ["dtype", "shape", "nan"])
def test_binarizer_weights_dtype_shape_and_values_checked(model, tmp_path, what):
    model.save(tmp_path / "m")
    state = load_file(str(tmp_path / "m" / "model.safetensors"))
    key = "W.skip.weight"
    if what == "dtype":
        state[key] = state[key].double()
    elif what == "shape":
        state[key] = state[key][:, :-1].contiguous()
    else:
        state[key][0, 0] = float("nan")
    _rewrite_weights(tmp_path / "m", state)
    match = {"dtype": "has dtype torch.float64, expected torch.float32",
             "shape": "has shape", "nan": "NaN or inf"}[what]
    with pytest.raises(CorruptFileError, match=match):
        Binarizer.load(tmp_path / "m")


def test_code_shards_refuse_a_shard_swapped_after_the_check(model, x, tmp_path):
    encode_shards(model, _save(tmp_path, x), tmp_path / "c", progress=False)
    shards = CodeShards(tmp_path / "c")  # checksums verified here
    # the shard changes between the check and the read: the read checks dtype and shape again
    np.save(tmp_path / "c" / "codes-00000.npy", np.zeros((3, 4), np.uint8))
    with pytest.raises(CorruptFileError, match="shard holds uint8 \\(3, 4\\)"):
        list(shards.shards())


# ------------------------------------------------------------------ legacy calibration
def _legacy_head_model(tmp_path):
    torch.manual_seed(0)
    m = Binarizer(D, 32, 2, hidden=16, version="v2", cross_versions=["v1", "v0"],
                  cross_hidden=8, cross_depth=1)
    m.save(tmp_path / "mh")
    state = load_file(str(tmp_path / "mh" / "model.safetensors"))
    del state["cross.0.calibration"]  # as written before heads were calibrated
    state = {("cross.0.net." + k[len("cross.0.nets.0."):]
              if k.startswith("cross.0.nets.0.") else k): v for k, v in state.items()}
    _rewrite_weights(tmp_path / "mh", state)
    return m


def test_model_without_head_calibration_is_marked_and_warned(tmp_path):
    m = _legacy_head_model(tmp_path)
    assert Binarizer(D, 32, 2, hidden=16).uncalibrated_heads == []
    with pytest.warns(UncalibratedHeadWarning, match=r"versions \['v1'\] have no score "
                                                     "calibration"):
        old = Binarizer.load(tmp_path / "mh")
    assert old.uncalibrated_heads == ["v1"]
    assert old.cross_calibration("v1") == (1.0, 0.0)
    q = np.random.default_rng(1).standard_normal((5, D)).astype(np.float32)
    np.testing.assert_array_equal(old.encode_query_codes(q, 2, target="v1"),
                                  m.encode_query_codes(q, 2, target="v1"))
    old.save(tmp_path / "again")  # the mark survives a save
    with pytest.warns(UncalibratedHeadWarning, match="v1"):
        assert Binarizer.load(tmp_path / "again").uncalibrated_heads == ["v1"]
    with warnings.catch_warnings():  # a calibrated file: no warning (errors under pytest)
        warnings.simplefilter("error")
        m.save(tmp_path / "fresh")
        assert Binarizer.load(tmp_path / "fresh").uncalibrated_heads == []
    cfg = json.loads((tmp_path / "again" / "config.json").read_text())
    cfg["uncalibrated_heads"] = ["nope"]
    _seal(tmp_path / "again" / "config.json", cfg)
    with pytest.raises(CorruptFileError, match="uncalibrated_heads"):
        Binarizer.load(tmp_path / "again")


# ------------------------------------------------------------------ unreadable .npy
@pytest.mark.parametrize("kind", ["empty", "header", "data", "object", "text"])
def test_unreadable_npy_is_a_corrupt_file(tmp_path, kind):
    p = tmp_path / "a.npy"
    np.save(p, np.zeros((10, D), np.float32))
    raw = p.read_bytes()
    if kind == "object":
        np.save(p, np.array([{"a": 1}] * 3, dtype=object), allow_pickle=True)
    else:
        p.write_bytes({"empty": b"", "header": raw[:20], "data": raw[:200],
                       "text": b"not a numpy file\n" * 9}[kind])
    with pytest.raises(CorruptFileError, match="a.npy: not a readable .npy file"):
        open_source(p)
    with pytest.raises(CorruptFileError, match="not a readable .npy file of codes"):
        load_npy(p, "codes")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_npy(tmp_path / "none.npy")


# ------------------------------------------------------------------ ids
def test_check_ids_names_rows():
    rows = np.arange(10, 15)
    check_ids(np.array([4, 3, 2, 1, 0]), rows, "f")
    with pytest.raises(ValueError, match="f: row 12 has id -1"):
        check_ids(np.array([4, 3, -1, 1, 0]), rows, "f")
    with pytest.raises(ValueError, match="f: row 10 has id 9223372036854775807"):
        check_ids(np.array([2**63 - 1, 3, 2, 1, 0]), rows, "f")
    with pytest.raises(ValueError, match="f: rows 11 and 14 have the same id 3"):
        check_ids(np.array([4, 3, 2, 1, 3]), rows, "f")


@pytest.mark.parametrize("bucket_rows", [7, 1 << 22])
def test_find_duplicate_id_across_files(tmp_path, bucket_rows):
    rng = np.random.default_rng(0)
    ids = rng.permutation(5000).astype(np.int64)
    files = []
    for i in range(6):
        files.append(tmp_path / f"{i}.npy")
        np.save(files[-1], ids[i * 800:(i + 1) * 800])
    assert find_duplicate_id(files, bucket_rows=bucket_rows) is None
    a = np.load(files[4])
    a[17] = np.load(files[1])[5]
    np.save(files[4], a)
    assert find_duplicate_id(files, bucket_rows=bucket_rows) == (int(a[17]), 1, 4)
    sorted_files = []  # disjoint ranges: no bucket pass at all
    for i in range(3):
        sorted_files.append(tmp_path / f"s{i}.npy")
        np.save(sorted_files[-1], np.arange(i * 10, i * 10 + 10))
    assert find_duplicate_id(sorted_files, bucket_rows=1) is None


def test_encode_refuses_bad_ids_naming_file_and_row(model, x, tmp_path):
    ids = np.arange(300) * 3
    ids[250] = ids[20]
    _write_parquet(tmp_path / "dup.parquet", x, ids)
    with pytest.raises(ValueError, match="dup.parquet \\(id column 'id'\\): rows 20 and 250 "
                                         "have the same id 60"):
        encode_shards(model, tmp_path / "dup.parquet", tmp_path / "o1", progress=False)
    # the same duplicate split over shards: found by the closing cross-shard check
    with pytest.raises(ValueError, match="id 60 is given twice: .*dup.parquet row 20 and "
                                         ".*dup.parquet row 250"):
        encode_shards(model, tmp_path / "dup.parquet", tmp_path / "o2", progress=False,
                      shard_rows=100, chunk_rows=30)
    with pytest.raises(CorruptFileError, match="incomplete job"):
        CodeShards(tmp_path / "o2")  # not left behind as a complete directory
    ids = np.arange(300)
    ids[123] = -1
    _write_parquet(tmp_path / "neg.parquet", x, ids)
    with pytest.raises(ValueError, match="neg.parquet \\(id column 'id'\\): row 123 has id -1"):
        encode_shards(model, tmp_path / "neg.parquet", tmp_path / "o3", progress=False)
    _write_parquet(tmp_path / "a.parquet", x[:150], np.arange(150))
    _write_parquet(tmp_path / "b.parquet", x[150:], np.arange(149, 299))
    with pytest.raises(ValueError, match="id 149 is given twice: .*a.parquet row 149 and "
                                         ".*b.parquet row 0"):
        encode_shards(model, [tmp_path / "a.parquet", tmp_path / "b.parquet"],
                      tmp_path / "o4", progress=False)
    _write_parquet(tmp_path / "b.parquet", x[150:], np.arange(150, 300) * 7)
    res = encode_shards(model, [tmp_path / "a.parquet", tmp_path / "b.parquet"],
                        tmp_path / "o5", progress=False)
    assert res.manifest.complete and res.manifest.count == 300


def test_skip_bad_rerun_of_a_failed_job_resumes_it(model, x, tmp_path):
    bad = x.copy()
    bad[160, 2] = np.nan
    bad[260, 1] = np.inf
    p = _save(tmp_path, bad, "nan.npy")
    out = tmp_path / "o"
    with pytest.raises(ValueError, match="row 160 contains NaN .* pass --skip-bad"):
        encode_shards(model, p, out, progress=False, shard_rows=100)  # shard 0 done
    assert sorted(Manifest.load(out).shards) == [0]
    res = encode_shards(model, p, out, progress=False, shard_rows=100, skip_bad=True)
    assert res.manifest.complete and res.manifest.skipped == 2 and res.manifest.count == 298
    codes, ids = CodeShards(out).load_all()
    keep = np.isfinite(bad).all(1)
    np.testing.assert_array_equal(ids, np.arange(300)[keep])
    np.testing.assert_array_equal(codes, model.encode(x[keep]))
    # back to refusing bad rows: the shards that dropped rows are redone (and refused)
    with pytest.raises(ValueError, match="row 160 contains NaN"):
        encode_shards(model, p, out, progress=False, shard_rows=100)
    with pytest.raises(ValueError, match="job settings differ: chunk_rows: 65536 vs 9\\)"):
        encode_shards(model, p, out, progress=False, shard_rows=100, chunk_rows=9)
