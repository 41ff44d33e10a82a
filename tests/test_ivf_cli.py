"""``bebr index build --nlist`` / ``bebr search --nprobe`` / ``bebr index info`` on IVF
indexes, and ``distributed.load_index`` by file kind."""
import contextlib
import io
import json

import numpy as np

from bebr import CodeSpec, Index, IVFIndex
from bebr.cli import main
from bebr.distributed import load_index
from bebr.io import Manifest
from bebr.io.codeshards import write_code_shard


def cli(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()


def shards(tmp_path, spec, n=600, parts=2):
    rng = np.random.default_rng(0)
    m = Manifest(model_version="v1", spec=spec, job={"kind": "test"}, inputs=[], units=parts)
    all_codes = []
    for i in range(parts):
        codes = spec.pack(rng.integers(0, spec.n_levels, (n, spec.dim)))
        ids = np.arange(i * n, (i + 1) * n, dtype=np.int64)
        m.shards[i] = write_code_shard(tmp_path, i, codes, ids, source=i, start=0, stop=n)
        all_codes.append(codes)
    m.save(tmp_path)
    return np.concatenate(all_codes)


def test_build_info_search_ivf(tmp_path):
    spec = CodeSpec(24, 2)
    codes = shards(tmp_path / "s", spec)
    idx = tmp_path / "ivf.bebr"
    rc, _, err = cli("index", "build", tmp_path / "s", "-o", idx, "--nlist", 8, "--metric", "cosine")
    assert rc == 0, err
    loaded = load_index(idx)
    assert isinstance(loaded, IVFIndex) and loaded.nlist == 8 and len(loaded) == 1200
    rc, out, _ = cli("index", "info", idx)
    info = json.loads(out)
    assert info["kind"] == "IVFIndex" and info["nlist"] == 8 and info["count"] == 1200
    q = codes[:5]
    np.save(tmp_path / "q.npy", q)
    rc, _, err = cli("search", tmp_path / "q.npy", "--index", idx, "--codes", "-k", 3,
                     "--nprobe", 8, "--ids-out", tmp_path / "ids.npy", "--threads", 1)
    assert rc == 0, err
    flat = Index(spec, "cosine")
    flat.add(codes)
    np.testing.assert_array_equal(np.load(tmp_path / "ids.npy"), flat.search(q, 3)[1])


def test_bad_ivf_cli_args(tmp_path):
    spec = CodeSpec(16, 1)
    shards(tmp_path / "s", spec, n=3, parts=1)
    rc, _, err = cli("index", "build", tmp_path / "s", "-o", tmp_path / "i", "--nlist", 8)
    assert rc == 1 and "needs at least that many codes" in err
    rc, _, err = cli("index", "build", tmp_path / "s", "-o", tmp_path / "i", "--nlist", 2,
                     "--hamming")
    assert rc == 1 and "exclude each other" in err
    cli("index", "build", tmp_path / "s", "-o", tmp_path / "flat.bebr")
    np.save(tmp_path / "q.npy", np.zeros((1, 2), np.uint8))
    rc, _, err = cli("search", tmp_path / "q.npy", "--index", tmp_path / "flat.bebr", "--codes",
                     "--nprobe", 2)
    assert rc == 1 and "--nprobe applies to IVF indexes" in err
