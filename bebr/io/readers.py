"""Readers of float embedding shards, one ``Source`` per file, bounded memory.

Every source knows its row count ``n`` and dimension ``d`` up front (from the .npy header, the
vecs file size or the parquet footer) and reads any row range ``[start, stop)`` as float32
chunks of exactly ``chunk_rows`` rows (the last one shorter), whatever the file's internal
batching, so the same job cut the same way always encodes the same chunks. At most one
chunk (plus one parquet batch) is in memory at a time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List, Optional, Union

import numpy as np

from ..fileio import CorruptFileError
from .vecs import VECS_DTYPES, VecsFile

__all__ = ["Chunk", "Source", "NpySource", "VecsSource", "ParquetSource", "open_source",
           "load_npy", "SUFFIXES"]

SUFFIXES = (".npy", ".fvecs", ".bvecs", ".parquet", ".pq")


@dataclass
class Chunk:
    """Rows ``[offset, offset + len(x))`` of one source, as float32, with their ids if the
    source carries an id column (else None)."""

    offset: int
    x: np.ndarray
    ids: Optional[np.ndarray]


def _as_float32(block: np.ndarray, where: str) -> np.ndarray:
    if block.dtype.kind not in "fiu":
        raise TypeError(f"{where}: embeddings must be numeric, got dtype {block.dtype}")
    return np.array(block, dtype=np.float32, order="C")  # an owned, writable copy


class Source:
    """One input shard. Subclasses set ``path``, ``n``, ``d``, ``format``, ``has_ids``."""

    path: Path
    n: int
    d: int
    format: str
    has_ids: bool = False

    def fingerprint(self) -> dict:
        """Identity of the input file for resumability: path, size, mtime, rows, dim."""
        st = os.stat(self.path)
        return {"path": str(self.path), "format": self.format, "size": st.st_size,
                "mtime_ns": st.st_mtime_ns, "rows": self.n, "dim": self.d}

    def _blocks(self, start: int, stop: int, chunk_rows: int):
        """Yield ``(x, ids)`` blocks covering ``[start, stop)`` in order, any block sizes."""
        raise NotImplementedError

    def read(self, start: int = 0, stop: Optional[int] = None,
             chunk_rows: int = 65536) -> Iterator[Chunk]:
        """Rows ``[start, stop)`` as float32 chunks of ``chunk_rows`` rows (the last shorter)."""
        stop = self.n if stop is None else stop
        if not 0 <= start <= stop <= self.n:
            raise ValueError(f"{self.path}: row range [{start}, {stop}) outside [0, {self.n})")
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
        pending_x: List[np.ndarray] = []
        pending_i: List[np.ndarray] = []
        have, offset = 0, start
        for x, ids in self._blocks(start, stop, chunk_rows):
            pending_x.append(x)
            if ids is not None:
                pending_i.append(ids)
            have += x.shape[0]
            while have >= chunk_rows:
                cat_x = np.concatenate(pending_x) if len(pending_x) > 1 else pending_x[0]
                cat_i = (np.concatenate(pending_i) if len(pending_i) > 1 else pending_i[0]) \
                    if pending_i else None
                yield Chunk(offset, cat_x[:chunk_rows],
                            None if cat_i is None else cat_i[:chunk_rows])
                offset += chunk_rows
                have -= chunk_rows
                pending_x = [cat_x[chunk_rows:]] if have else []
                pending_i = [cat_i[chunk_rows:]] if have and cat_i is not None else []
        if have:
            cat_x = np.concatenate(pending_x) if len(pending_x) > 1 else pending_x[0]
            cat_i = (np.concatenate(pending_i) if len(pending_i) > 1 else pending_i[0]) \
                if pending_i else None
            yield Chunk(offset, cat_x, cat_i)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n={self.n}, d={self.d})"


def _pread(path: Path, offset: int, nbytes: int) -> np.ndarray:
    """``nbytes`` bytes of ``path`` from ``offset`` into fresh memory (a short read is an
    error: the file was truncated under us)."""
    buf = np.empty(nbytes, dtype=np.uint8)
    with open(path, "rb", buffering=0) as f:
        f.seek(offset)
        got = f.readinto(memoryview(buf))
    if got != nbytes:
        raise CorruptFileError(f"{path}: truncated (wanted {nbytes} bytes at offset {offset}, "
                               f"got {got})")
    return buf


def load_npy(path: Union[str, Path], what: str = "array", *,
             mmap_mode: Optional[str] = None) -> np.ndarray:
    """``np.load(path)`` without pickle, for a file the user gave: a missing file is
    FileNotFoundError, an unreadable one (0 bytes, truncated header or data, pickled object
    array, not .npy at all) CorruptFileError naming ``what`` the file was meant to hold."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise ValueError(f"{p}: is a directory, expected a .npy file of {what}")
    try:
        return np.load(p, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, EOFError, OSError) as e:
        size = p.stat().st_size
        why = "empty file (0 bytes)" if size == 0 else " ".join(str(e).split())
        raise CorruptFileError(f"{p}: not a readable .npy file of {what} ({why})") from None


class NpySource(Source):
    """A 2-D numeric .npy file. The header is read once; C-order files are read chunk by
    chunk with plain reads (no mapping stays resident, so memory stays bounded however big
    the file); Fortran-order files through ``np.load(mmap_mode="r")``."""

    format = "npy"

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        arr = load_npy(self.path, "embeddings", mmap_mode="r")
        try:
            with open(self.path, "rb") as f:
                major, _ = np.lib.format.read_magic(f)
                read_header = (np.lib.format.read_array_header_1_0 if major == 1
                               else np.lib.format.read_array_header_2_0)
                read_header(f)
                self._data_offset = f.tell()
        except (ValueError, EOFError) as e:
            raise CorruptFileError(f"{self.path}: not a readable .npy file ({e})") from None
        if arr.ndim != 2:
            raise ValueError(f"{self.path}: embeddings must be a 2-D array (n, dim), "
                             f"got shape {arr.shape}")
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{self.path}: embeddings must be numeric, got dtype {arr.dtype}")
        self.n, self.d = (int(s) for s in arr.shape)
        self._dtype = arr.dtype
        self._fortran = bool(arr.flags.f_contiguous and not arr.flags.c_contiguous)
        self._arr = arr if self._fortran else None
        del arr

    def _blocks(self, start, stop, chunk_rows):
        row_bytes = self.d * self._dtype.itemsize
        for a in range(start, stop, chunk_rows):
            b = min(a + chunk_rows, stop)
            if self._fortran:
                block = self._arr[a:b]
            else:
                raw = _pread(self.path, self._data_offset + a * row_bytes, (b - a) * row_bytes)
                block = raw.view(self._dtype).reshape(b - a, self.d)
                if self._dtype == np.float32 and self._dtype.isnative:
                    yield block, None  # already a fresh, owned float32 buffer: no copy
                    continue
            yield _as_float32(block, str(self.path)), None


class VecsSource(Source):
    """A .fvecs or .bvecs file (ANN-benchmark format), read by row range; bvecs become float32."""

    def __init__(self, path: Union[str, Path]):
        self.path = Path(path)
        self.format = self.path.suffix.lower().lstrip(".")
        self._f = VecsFile(self.path)
        self.n, self.d = self._f.n, self._f.d

    def _blocks(self, start, stop, chunk_rows):
        for a in range(start, stop, chunk_rows):
            b = min(a + chunk_rows, stop)
            yield self._f.rows(a, b).astype(np.float32, copy=False), None


class ParquetSource(Source):
    """A parquet file: one list<float> or fixed_size_list<float> column of embeddings
    (``column``, default: the first list column) and an optional integer id column
    (``id_column``, default: a column named ``id`` if present). Read batch by batch."""

    format = "parquet"

    def __init__(self, path: Union[str, Path], column: Optional[str] = None,
                 id_column: Optional[str] = None):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = Path(path)
        try:
            self._pf = pq.ParquetFile(self.path)
        except (pa.ArrowInvalid, OSError) as e:
            raise CorruptFileError(f"{self.path}: not a readable parquet file ({e})") from None
        schema = self._pf.schema_arrow
        lists = [f.name for f in schema
                 if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
                 or pa.types.is_large_list(f.type)]
        if column is None:
            if not lists:
                raise ValueError(f"{self.path}: no list<float> or fixed_size_list column of "
                                 f"embeddings (columns: {schema.names})")
            column = lists[0]
        elif column not in lists:
            raise ValueError(f"{self.path}: column {column!r} is not a list column of "
                             f"embeddings (list columns: {lists})")
        vt = schema.field(column).type.value_type
        if not (pa.types.is_floating(vt) or pa.types.is_integer(vt)):
            raise TypeError(f"{self.path}: column {column!r} holds {vt}, expected floats")
        if id_column is None and "id" in schema.names:
            id_column = "id"
        if id_column is not None:
            if id_column not in schema.names:
                raise ValueError(f"{self.path}: no id column {id_column!r} "
                                 f"(columns: {schema.names})")
            if not pa.types.is_integer(schema.field(id_column).type):
                raise TypeError(f"{self.path}: id column {id_column!r} must be integers, got "
                                f"{schema.field(id_column).type}")
        self.column, self.id_column = column, id_column
        self.has_ids = id_column is not None
        self.n = int(self._pf.metadata.num_rows)
        ftype = schema.field(column).type
        if pa.types.is_fixed_size_list(ftype):
            self.d = int(ftype.list_size)
        elif self.n:
            first = next(self._pf.iter_batches(batch_size=1, columns=[column]))
            self.d = len(first.column(0)[0])
        else:
            self.d = 0

    def _to_numpy(self, arr, first_row: int) -> np.ndarray:
        import pyarrow as pa

        if arr.null_count:
            raise ValueError(f"{self.path}: column {self.column!r} has a null row near row "
                             f"{first_row}")
        if pa.types.is_fixed_size_list(arr.type):
            vals = arr.flatten()
        else:
            offsets = np.asarray(arr.offsets)
            lens = np.diff(offsets)
            if (lens != self.d).any():
                r = int(np.flatnonzero(lens != self.d)[0])
                raise ValueError(f"{self.path}: row {first_row + r} has {int(lens[r])} "
                                 f"components, expected {self.d} (ragged embeddings)")
            vals = arr.flatten()
        if vals.null_count:
            raise ValueError(f"{self.path}: column {self.column!r} has null components near "
                             f"row {first_row}")
        return np.array(vals.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(
            len(arr), self.d)  # an owned, writable copy

    def _blocks(self, start, stop, chunk_rows):
        md = self._pf.metadata
        cols = [self.column] + ([self.id_column] if self.id_column else [])
        row = 0
        for g in range(md.num_row_groups):
            g_rows = md.row_group(g).num_rows
            g_start, g_stop = row, row + g_rows
            row = g_stop
            if g_stop <= start or g_start >= stop:
                continue
            pos = g_start
            for batch in self._pf.iter_batches(batch_size=min(chunk_rows, 65536),
                                               row_groups=[g], columns=cols):
                b0, b1 = pos, pos + batch.num_rows
                pos = b1
                lo, hi = max(b0, start), min(b1, stop)
                if lo >= hi:
                    continue
                batch = batch.slice(lo - b0, hi - lo)
                x = self._to_numpy(batch.column(0), lo)
                ids = None
                if self.id_column:
                    idc = batch.column(1)
                    if idc.null_count:
                        raise ValueError(f"{self.path}: id column {self.id_column!r} has nulls "
                                         f"near row {lo}")
                    ids = np.array(idc.to_numpy(), dtype=np.int64)
                yield x, ids
                if pos >= stop:
                    return


def open_source(path: Union[str, Path], *, column: Optional[str] = None,
                id_column: Optional[str] = None) -> Source:
    """Open one input shard by its extension (.npy, .fvecs, .bvecs, .parquet/.pq)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file")
    if p.is_dir():
        raise ValueError(f"{p}: is a directory, expected an embeddings file")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return NpySource(p)
    if suffix in (".fvecs", ".bvecs"):
        return VecsSource(p)
    if suffix in (".parquet", ".pq"):
        return ParquetSource(p, column=column, id_column=id_column)
    if suffix in VECS_DTYPES:
        raise ValueError(f"{p}: {suffix} holds integer ids, not embeddings")
    raise ValueError(f"{p}: unknown input format {suffix or '(no extension)'!r}; "
                     f"expected one of {', '.join(SUFFIXES)}")
