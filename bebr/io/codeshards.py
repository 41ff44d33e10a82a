"""Code shard files: ``codes-NNNNN.npy`` (uint8 packed codes, (n, code_bytes)) and
``ids-NNNNN.npy`` (int64 ids, (n,)), written atomically, read memory-mapped."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterator, Tuple, Union

import numpy as np

from ..codes import CodeSpec
from ..fileio import CorruptFileError, atomic_writer
from .manifest import Manifest, ShardEntry, outside_directory, shard_names

__all__ = ["CodeShards", "write_code_shard", "load_shard_file", "CRASH_ENV"]

# Test hook: a job that reaches shard index >= N writes half of that shard's bytes to its
# temporary file and exits the process hard, as a kill mid-write would. Never set in use.
CRASH_ENV = "BEBR_TEST_CRASH_AFTER_SHARDS"


class _HashingWriter:
    """File wrapper hashing what passes through ``write``."""

    def __init__(self, f):
        self.f, self.h = f, hashlib.sha256()

    def write(self, b) -> int:
        self.h.update(b)
        return self.f.write(b)


def _save_npy(path: Path, arr: np.ndarray, crash: bool = False) -> str:
    with atomic_writer(path) as f:
        hw = _HashingWriter(f)
        if crash:
            import io

            buf = io.BytesIO()
            np.save(buf, arr, allow_pickle=False)
            data = buf.getvalue()
            f.write(data[:len(data) // 2])
            f.flush()
            os._exit(70)
        np.save(hw, arr, allow_pickle=False)
    return hw.h.hexdigest()


def write_code_shard(directory: Union[str, Path], index: int, codes: np.ndarray,
                     ids: np.ndarray, **where) -> ShardEntry:
    """Write shard ``index`` (codes, then ids) atomically; return its manifest entry.

    ``where`` fills the entry's provenance fields (source, start, stop, skipped).
    """
    directory = Path(directory)
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if codes.ndim != 2 or ids.shape != (codes.shape[0],):
        raise ValueError(f"shard {index}: codes {codes.shape} and ids {ids.shape} disagree")
    crash_at = os.environ.get(CRASH_ENV)
    crash = crash_at is not None and index >= int(crash_at)
    cname, iname = shard_names(index)
    digest = _save_npy(directory / cname, codes, crash=crash)
    ids_digest = _save_npy(directory / iname, ids)
    return ShardEntry(index=index, codes=cname, ids=iname, count=int(codes.shape[0]),
                      sha256=digest, ids_sha256=ids_digest, **where)


class CodeShards:
    """A complete, verified code-shard directory, read shard by shard (memory-mapped)."""

    def __init__(self, directory: Union[str, Path], *, verify: bool = True):
        self.directory = Path(directory)
        self.manifest = Manifest.load(self.directory)
        if not self.manifest.complete:
            raise CorruptFileError(
                f"{self.directory}: incomplete job ({len(self.manifest.shards)} of "
                f"{self.manifest.units} shards done); rerun the same command to resume it")
        if verify:
            self.manifest.verify(self.directory)

    @property
    def spec(self) -> CodeSpec:
        return self.manifest.spec

    @property
    def model_version(self):
        return self.manifest.model_version

    def __len__(self) -> int:
        return self.manifest.count

    def shards(self) -> Iterator[Tuple[ShardEntry, np.ndarray, np.ndarray]]:
        """Yield ``(entry, codes, ids)`` per shard in order; arrays are memory-mapped."""
        for i in range(self.manifest.units):
            e = self.manifest.shards[i]
            codes = self._load(e.codes, (e.count, self.spec.code_bytes), np.uint8)
            ids = self._load(e.ids, (e.count,), np.int64)
            yield e, codes, ids

    def _load(self, name: str, shape, dtype) -> np.ndarray:
        return load_shard_file(self.directory, name, shape, dtype)

    def load_all(self) -> Tuple[np.ndarray, np.ndarray]:
        """All codes and ids concatenated in memory (for small directories)."""
        parts = list(self.shards())
        if not parts:
            return (np.empty((0, self.spec.code_bytes), np.uint8), np.empty(0, np.int64))
        return (np.concatenate([np.asarray(c) for _, c, _ in parts]),
                np.concatenate([np.asarray(i) for _, _, i in parts]))


def load_shard_file(directory: Union[str, Path], name: str, shape, dtype) -> np.ndarray:
    """Shard file ``directory/name``, memory-mapped, checked to lie in ``directory`` and to
    hold exactly ``dtype`` ``shape`` (what the manifest says); CorruptFileError otherwise."""
    p = Path(directory) / name
    why = outside_directory(directory, p)
    if why:
        raise CorruptFileError(why)
    try:
        a = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CorruptFileError(f"{p}: unreadable shard ({e})") from None
    if a.shape != tuple(shape) or a.dtype != dtype:
        raise CorruptFileError(f"{p}: shard holds {a.dtype} {a.shape}, manifest says "
                               f"{np.dtype(dtype)} {tuple(shape)}")
    return a


def open_code_shards(directory: Union[str, Path], verify: bool = True) -> CodeShards:
    """Shorthand for ``CodeShards(directory, verify=verify)``."""
    return CodeShards(directory, verify=verify)


def shard_spec_check(shards: CodeShards, spec: CodeSpec, what: str) -> None:
    """Refuse shards whose code spec differs from ``spec`` (``what`` names the other side)."""
    if shards.spec != spec:
        raise ValueError(f"{shards.directory}: codes are {shards.spec}, but {what} is {spec}")


