"""The ANN-benchmark vector formats (.fvecs, .bvecs, .ivecs), read in row ranges.

Layout: a file is a sequence of records, one per vector; a record is a little-endian int32
``d`` (the dimension) followed by ``d`` components: float32 (.fvecs), uint8 (.bvecs) or
int32 (.ivecs). Every record of a file has the same ``d``; the file size is an exact multiple
of the record size. Anything else is refused as corrupt (``CorruptFileError``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np

from ..fileio import CorruptFileError, atomic_writer

__all__ = ["VecsFile", "read_vecs", "write_vecs", "VECS_DTYPES"]

VECS_DTYPES = {".fvecs": np.dtype("<f4"), ".bvecs": np.dtype("u1"), ".ivecs": np.dtype("<i4")}


def _kind(path: Path) -> np.dtype:
    try:
        return VECS_DTYPES[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"{path}: not a .fvecs/.bvecs/.ivecs file") from None


class VecsFile:
    """A .fvecs/.bvecs/.ivecs file: ``n`` rows of ``d`` components, validated from its size
    and first header; ``rows`` reads a range and checks every header in it."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.dtype = _kind(self.path)
        size = self.path.stat().st_size
        if size == 0:
            self.n, self.d, self._rec_bytes = 0, 0, 4
            return
        if size < 4:
            raise CorruptFileError(f"{self.path}: truncated ({size} bytes, no dimension header)")
        d = int(np.fromfile(self.path, dtype="<i4", count=1)[0])
        if not 1 <= d <= 1 << 20:
            raise CorruptFileError(f"{self.path}: invalid dimension header {d} in the first "
                                   "record (not a vecs file, or corrupted)")
        rec_bytes = 4 + d * self.dtype.itemsize
        if size % rec_bytes:
            raise CorruptFileError(
                f"{self.path}: truncated or corrupted: {size} bytes is not a multiple of the "
                f"record size {rec_bytes} (dim {d}); last record incomplete")
        self.n, self.d = size // rec_bytes, d
        self._rec_bytes = rec_bytes

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``[start, stop)`` as a fresh array of the file's dtype; checks their headers."""
        if not self.n or start >= stop:
            return np.empty((0, self.d), dtype=self.dtype)
        if not 0 <= start < stop <= self.n:
            raise ValueError(f"{self.path}: rows [{start}, {stop}) outside [0, {self.n})")
        # plain reads, not a mapping: nothing stays resident after the rows are copied
        nbytes = (stop - start) * self._rec_bytes
        with open(self.path, "rb", buffering=0) as f:
            f.seek(start * self._rec_bytes)
            block = np.empty(nbytes, dtype=np.uint8)
            got = f.readinto(memoryview(block))
        if got != nbytes:
            raise CorruptFileError(f"{self.path}: truncated while reading rows {start}..{stop}")
        block = block.reshape(stop - start, self._rec_bytes)
        heads = block[:, :4].copy().view("<i4").ravel()
        if (heads != self.d).any():
            r = int(np.flatnonzero(heads != self.d)[0])
            raise CorruptFileError(
                f"{self.path}: record {start + r} has dimension header {int(heads[r])}, "
                f"expected {self.d} (inconsistent dimensions: corrupted file)")
        return block[:, 4:].copy().view(self.dtype).reshape(stop - start, self.d)


def read_vecs(path: Union[str, Path]) -> np.ndarray:
    """The whole file as an ``(n, d)`` array (float32, uint8 or int32 by extension)."""
    f = VecsFile(path)
    return f.rows(0, f.n)


def write_vecs(path: Union[str, Path], x: np.ndarray) -> None:
    """Write ``(n, d)`` rows to a .fvecs/.bvecs/.ivecs file, atomically."""
    path = Path(path)
    dtype = _kind(path)
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] < 1:
        raise ValueError(f"write_vecs needs an (n, d) array with d >= 1, got shape {x.shape}")
    if dtype.kind != x.dtype.kind and not (dtype.kind == "f" and x.dtype.kind in "iuf"):
        raise TypeError(f"{path.suffix} holds {dtype} components, got dtype {x.dtype}")
    n, d = x.shape
    rec = np.empty((n, 4 + d * dtype.itemsize), dtype=np.uint8)
    rec[:, :4] = np.frombuffer(np.int32(d).astype("<i4").tobytes(), dtype=np.uint8)
    rec[:, 4:] = np.ascontiguousarray(x, dtype=dtype).view(np.uint8).reshape(n, d * dtype.itemsize)
    with atomic_writer(path) as f:
        f.write(rec.tobytes())
