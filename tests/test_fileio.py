"""Atomic writes leave the old file intact when the write fails part-way."""

import pytest

from bebr.fileio import atomic_write_bytes, atomic_writer, sha256_bytes, sha256_file


def test_atomic_write_and_checksum(tmp_path):
    p = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(p, b"hello")
    assert p.read_bytes() == b"hello"
    assert sha256_file(p) == sha256_bytes(b"hello")


def test_failed_write_keeps_old_file_and_leaves_no_temp(tmp_path):
    p = tmp_path / "f.bin"
    atomic_write_bytes(p, b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_writer(p) as f:
            f.write(b"new-partial")
            raise RuntimeError("boom")
    assert p.read_bytes() == b"old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.bin"]
