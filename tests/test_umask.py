"""Output files and directories honour the process umask (0o666 / 0o777 & ~umask), as files
made by open() and Path.mkdir do: atomic_writer, Binarizer save, index save, encode shards and
their manifest."""

import os
import stat
from contextlib import contextmanager

import numpy as np
import pytest

import bebr
from bebr.fileio import atomic_write_bytes, atomic_writer
from bebr.jobs import encode_shards

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")

UMASKS = [0o022, 0o002, 0o077, 0o027]


@contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


def _check_tree(root, mask):
    """Every file under root (and root) has the mode open()/mkdir would give it."""
    seen = 0
    for dirpath, dirs, files in os.walk(root):
        assert _mode(dirpath) == 0o777 & ~mask, dirpath
        for f in files:
            assert _mode(os.path.join(dirpath, f)) == 0o666 & ~mask, f
            seen += 1
    assert seen > 0


@pytest.mark.parametrize("mask", UMASKS)
def test_atomic_writer_honours_umask(tmp_path, mask):
    with umask(mask):
        atomic_write_bytes(tmp_path / "sub" / "a.bin", b"x")
        with atomic_writer(tmp_path / "b.bin") as f:
            f.write(b"y")
        with open(tmp_path / "ref.bin", "wb") as f:  # what open() gives, the reference
            f.write(b"z")
    assert _mode(tmp_path / "sub" / "a.bin") == 0o666 & ~mask
    assert _mode(tmp_path / "b.bin") == _mode(tmp_path / "ref.bin") == 0o666 & ~mask
    assert _mode(tmp_path / "sub") == 0o777 & ~mask


def test_atomic_writer_replacing_a_file_gets_the_umask_mode(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"old")
    os.chmod(p, 0o600)
    with umask(0o022):
        atomic_write_bytes(p, b"new")
    assert p.read_bytes() == b"new" and _mode(p) == 0o644


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_model_index_and_shards_honour_umask(tmp_path, mask):
    import torch

    torch.manual_seed(0)
    model = bebr.Binarizer(16, 8, 2, hidden=8, version="umask-v1")
    x = np.random.default_rng(0).standard_normal((300, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with umask(mask):
        model.save(tmp_path / "model" / "m")
        idx = bebr.Index(model.spec)
        idx.add(model.encode(x))
        idx.save(tmp_path / "idx" / "items.bebr")
        encode_shards(tmp_path / "model" / "m", tmp_path / "x.npy", tmp_path / "shards",
                      chunk_rows=64, shard_rows=100, progress=False)
    _check_tree(tmp_path / "model", mask)
    _check_tree(tmp_path / "idx", mask)
    _check_tree(tmp_path / "shards", mask)
    names = sorted(os.listdir(tmp_path / "shards"))
    assert "manifest.json" in names and len([n for n in names if n.startswith("codes-")]) == 3
