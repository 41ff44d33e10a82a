"""Property test (hypothesis): mutated model directories, code-shard manifests and shard files
are either loaded with the same results or refused with the library's error type.

Mutations: JSON fields of ``config.json`` / ``manifest.json`` removed, retyped or edited
(plain edits, which the header checksum refuses, and *sealed* ones with a recomputed
``header_sha256``, as a crafted file would have, which reach the field checks behind it);
bytes of every file truncated or flipped; shard ``.npy`` files replaced by arrays of another
dtype or shape (sealed: with the manifest's checksums updated). Each mutated copy is loaded
through the API (``Binarizer.load``, ``CodeShards``) and the CLI (``bebr index build``); the
outcome must be the original results, or ``CorruptFileError`` / a one-line CLI error, never
another exception. A sealed manifest edit may change what the manifest says about the codes
(its spec, model version) -- nothing in the bytes can tell -- but never the codes and ids
read. The test prints how many mutations it tried.
"""

import contextlib
import io
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bebr import Binarizer
from bebr.cli import main
from bebr.fileio import CorruptFileError, header_digest, sha256_file
from bebr.io import CodeShards
from bebr.jobs import encode_shards
from bebr.model import UncalibratedHeadWarning

D = 12
VALUES = [None, "", "x", "../codes-00000.npy", 1.5, -1, 0, 1, 2 ** 40, True, [], {}, [1],
          {"dim": 8}]
TRIED = {"model": 0, "shards": 0}


def _paths(obj, prefix=()):
    """Every key path into a JSON value (not the root)."""
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) \
        if isinstance(obj, list) else ()
    for k, v in items:
        yield prefix + (k,)
        yield from _paths(v, prefix + (k,))


def _get(obj, path):
    for k in path:
        obj = obj[k]
    return obj


def _edit(doc, op, path, value):
    parent, key = _get(doc, path[:-1]), path[-1]
    if op == "drop":
        del parent[key]
    elif op == "set":
        parent[key] = value
    else:  # bump an int (or a string: append a character)
        v = parent[key]
        parent[key] = v + 1 if isinstance(v, int) and not isinstance(v, bool) else \
            v + "z" if isinstance(v, str) else value


def _mutate_bytes(path, op, pos, bit):
    data = bytearray(path.read_bytes())
    if not data:
        return
    i = pos % len(data)
    if op == "truncate":
        del data[i:]
    else:
        data[i] ^= 1 << bit
    path.write_bytes(bytes(data))


def _mutate_json(path, op, which, value, seal):
    doc = json.loads(path.read_text())
    paths = [p for p in _paths(doc) if p[-1] != "header_sha256"]
    _edit(doc, op, paths[which % len(paths)], value)
    if seal:
        doc["header_sha256"] = header_digest(doc)
    path.write_text(json.dumps(doc))


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    t = tmp_path_factory.mktemp("mut")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((90, D)).astype(np.float32)
    np.save(t / "x.npy", x)
    torch.manual_seed(0)
    m = Binarizer(D, 20, 2, hidden=8, version="v2", cross_versions=["v1"], cross_hidden=8,
                  cross_depth=1)
    m.save(t / "model")
    encode_shards(t / "model", t / "x.npy", t / "shards", shard_rows=40, progress=False)
    codes, ids = CodeShards(t / "shards").load_all()
    probe = rng.standard_normal((7, D)).astype(np.float32)
    return {"dir": t, "probe": probe, "codes": m.encode(probe), "spec": m.spec,
            "version": m.version, "head": m.encode_query_codes(probe, 2, target="v1"),
            "shard_codes": codes, "shard_ids": ids}


def _cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, err.getvalue()


json_mutation = st.tuples(st.just("json"), st.sampled_from(["drop", "set", "bump"]),
                          st.integers(0, 10 ** 6), st.sampled_from(VALUES), st.booleans())
byte_mutation = st.tuples(st.just("bytes"), st.sampled_from(["truncate", "flip"]),
                          st.integers(0, 10 ** 9), st.integers(0, 7))


@settings(max_examples=int(os.environ.get("BEBR_MUTATIONS", 150)), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(target=st.sampled_from(["config.json", "model.safetensors"]),
       mutation=st.one_of(json_mutation, byte_mutation))
def _model_property(pristine, target, mutation):
    TRIED["model"] += 1
    if target == "model.safetensors" and mutation[0] == "json":
        target = "config.json"
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "model"
        shutil.copytree(pristine["dir"] / "model", d)
        sealed = False
        if mutation[0] == "json":
            _, op, which, value, sealed = mutation
            _mutate_json(d / target, op, which, value, sealed)
        else:
            _mutate_bytes(d / target, *mutation[1:])
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UncalibratedHeadWarning)
                m = Binarizer.load(d)
        except CorruptFileError:
            return
        # loaded: the same model (a sealed edit may rename versions, never change codes)
        assert m.spec == pristine["spec"]
        np.testing.assert_array_equal(m.encode(pristine["probe"]), pristine["codes"])
        if not sealed:
            assert m.version == pristine["version"] and m.config.cross_versions == ["v1"]
        if m.config.cross_versions:
            np.testing.assert_array_equal(
                m.encode_query_codes(pristine["probe"], 2, target=m.config.cross_versions[0]),
                pristine["head"])


def test_mutated_model_directories(pristine):
    TRIED["model"] = 0
    _model_property(pristine)
    print(f"\nmodel directory mutations tried: {TRIED['model']}")
    assert TRIED["model"] >= 100


shard_file = st.sampled_from(["codes-00000.npy", "ids-00001.npy", "codes-00002.npy"])
array_mutation = st.tuples(st.just("array"), shard_file,
                           st.sampled_from(["dtype", "shape", "rows", "fortran", "bigendian"]),
                           st.booleans())


@settings(max_examples=int(os.environ.get("BEBR_MUTATIONS", 200)), deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mutation=st.one_of(json_mutation, st.tuples(st.sampled_from(["manifest.json"]),
                                                   st.sampled_from(["truncate", "flip"]),
                                                   st.integers(0, 10 ** 9), st.integers(0, 7)),
                          st.tuples(shard_file, st.sampled_from(["truncate", "flip"]),
                                    st.integers(0, 10 ** 9), st.integers(0, 7)),
                          array_mutation))
def _shards_property(pristine, mutation):
    TRIED["shards"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "shards"
        shutil.copytree(pristine["dir"] / "shards", d)
        sealed = False
        if mutation[0] == "json":
            _, op, which, value, sealed = mutation
            _mutate_json(d / "manifest.json", op, which, value, sealed)
        elif mutation[0] == "array":
            _, name, how, sealed = mutation
            a = np.load(d / name)
            a = {"dtype": a.astype(np.int32 if a.dtype == np.int64 else np.uint16),
                 "shape": a.reshape(-1) if a.ndim == 2 else a[:, None],
                 "rows": a[:-1], "fortran": np.asfortranarray(a),
                 "bigendian": a.astype(a.dtype.newbyteorder(">"))}[how]
            np.save(d / name, a)
            if sealed:  # a crafted directory: the manifest's checksums updated as well
                doc = json.loads((d / "manifest.json").read_text())
                for e in doc["shards"]:
                    for key, digest in (("codes", "sha256"), ("ids", "ids_sha256")):
                        if e[key] == name:
                            e[digest] = sha256_file(d / name)
                doc["header_sha256"] = header_digest(doc)
                (d / "manifest.json").write_text(json.dumps(doc))
        else:
            _mutate_bytes(d / mutation[0], *mutation[1:])
        rc, err = _cli("index", "build", d, "-o", Path(tmp) / "idx")
        lines = err.strip().splitlines()
        assert rc == 0 or (rc == 1 and len(lines) == 1 and lines[0].startswith("bebr: error: ")
                           and "Traceback" not in err), err
        try:
            cs = CodeShards(d)
            codes, ids = cs.load_all()
        except CorruptFileError:
            assert rc == 1, "the CLI built an index from a directory the API refuses"
            return
        np.testing.assert_array_equal(codes, pristine["shard_codes"])
        np.testing.assert_array_equal(ids, pristine["shard_ids"])
        if not sealed:
            assert cs.spec == pristine["spec"] and cs.model_version == pristine["version"]
        else:
            assert cs.spec.code_bytes == pristine["spec"].code_bytes


def test_mutated_code_shards(pristine):
    TRIED["shards"] = 0
    _shards_property(pristine)
    print(f"\ncode-shard mutations tried: {TRIED['shards']}")
    assert TRIED["shards"] >= 150
