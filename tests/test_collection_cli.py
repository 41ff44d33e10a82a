"""`bebr collection ...` drives the same collection as the Python API, result for result."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bebr.collection import Collection
from bebr.datasets import glove_words, l2_normalize
from bebr.train import train_binarizer

N = 1200
KW = dict(epochs=1, progress=False, hidden=64, batch_size=512, seed=0, threads=1)


def cli(*args, check=True):
    p = subprocess.run([sys.executable, "-m", "bebr", *map(str, args)], capture_output=True,
                       text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("ccli")
    _, g = glove_words(N)
    rng = np.random.default_rng(3)
    x2 = l2_normalize(np.tanh(2 * g @ rng.standard_normal((50, 40)).astype(np.float32)))
    train_binarizer(g, 16, 2, version="glove-v1", **KW).save(d / "v1")
    train_binarizer(x2, 16, 2, version="mixed-v2", **KW).save(d / "v2")
    for name, arr in (("g", g[:1000]), ("x2", x2[:1000]), ("s1", g[:600]), ("s2", x2[:600]),
                      ("q1", g[1000:1020]), ("q2", x2[1000:1020])):
        np.save(d / f"{name}.npy", arr)
    c = d / "coll"
    cli("collection", "create", c, "--model", d / "v1", "--metric", "ip")
    cli("collection", "add", c, d / "g.npy")
    cli("collection", "upgrade", c, d / "s2.npy", "--model", d / "v2",
        "--older", f"glove-v1={d / 's1.npy'}", "--members", 1, "--head-epochs", 2,
        "--threads", 1, "-q")
    return d, c


def test_cli_and_python_agree(setup):
    d, c = setup
    info = json.loads(cli("collection", "info", c).stdout)
    assert info["current"] == "mixed-v2" and info["versions"] == {"glove-v1": 1000,
                                                                   "mixed-v2": 0}
    assert info["lineage"] == ["glove-v1"]
    coll = Collection.open(c)
    q2, q1 = np.load(d / "q2.npy"), np.load(d / "q1.npy")
    for extra, older in (((), None), (("--older", f"glove-v1={d / 'q1.npy'}"), {"glove-v1": q1})):
        cli("collection", "search", c, d / "q2.npy", "-k", 6, "--ids-out", d / "i.npy",
            "--scores-out", d / "s.npy", *extra)
        s, i = coll.search(q2, 6, older=older)
        np.testing.assert_array_equal(np.load(d / "i.npy"), i)
        np.testing.assert_array_equal(np.load(d / "s.npy"), s)


def test_cli_backfill_upsert_remove_retire(setup, tmp_path):
    d, c = setup
    import shutil
    shutil.copytree(c, tmp_path / "c")
    c = tmp_path / "c"
    cli("collection", "backfill-order", c, "-n", 1000, "--strategy", "uncertainty", "-o",
        tmp_path / "todo.npy")
    todo = np.load(tmp_path / "todo.npy")
    assert np.array_equal(todo, Collection.open(c).backfill_order(1000, "uncertainty"))
    p = cli("collection", "retire", c, "glove-v1", check=False)
    assert p.returncode == 1 and "still has 1000 items" in p.stderr
    assert "Traceback" not in p.stderr
    cli("collection", "upsert", c, d / "x2.npy")
    cli("collection", "remove", c, "--ids", "0,1,2")
    cli("collection", "retire", c, "glove-v1")
    info = json.loads(cli("collection", "info", c).stdout)
    assert info["versions"] == {"mixed-v2": 997}
    p = cli("collection", "search", c, d / "q1.npy", check=False)  # floats of the old model
    assert p.returncode == 1 and "dim 50, expected 40" in p.stderr


def test_cli_ivf_collection(setup, tmp_path):
    """`collection create --nlist` builds an IVF collection; `search --nprobe` gives the
    Python API's results; at nprobe = nlist the flat collection's."""
    d, flat = setup
    c = tmp_path / "ivf"
    cli("collection", "create", c, "--model", d / "v1", "--metric", "ip", "--nlist", 8,
        "--nprobe", 2)
    cli("collection", "add", c, d / "g.npy")
    info = json.loads(cli("collection", "info", c).stdout)
    assert info["nlist"] == 8 and info["nprobe"] == 2 and info["versions"] == {"glove-v1": 1000}
    coll = Collection.open(c)
    q1 = np.load(d / "q1.npy")
    for extra, nprobe in (((), None), (("--nprobe", 8), 8)):
        cli("collection", "search", c, d / "q1.npy", "-k", 5, "--ids-out", d / "ii.npy",
            "--scores-out", d / "ss.npy", *extra)
        s, i = coll.search(q1, 5, nprobe=nprobe)
        np.testing.assert_array_equal(np.load(d / "ii.npy"), i)
        np.testing.assert_array_equal(np.load(d / "ss.npy"), s)
    # the flat collection before its upgrade held the same glove-v1 codes: a fresh flat one
    f = tmp_path / "flat"
    cli("collection", "create", f, "--model", d / "v1", "--metric", "ip")
    cli("collection", "add", f, d / "g.npy")
    s, i = coll.search(q1, 5, nprobe=8)
    s2, i2 = Collection.open(f).search(q1, 5)
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_array_equal(s, s2)
    p = cli("collection", "search", f, d / "q1.npy", "--nprobe", 3, check=False)
    assert p.returncode != 0 and "nprobe applies to IVF" in p.stderr
