"""Item ids of an encode job: non-negative, below the index's sentinel, unique across shards.

An index refuses negative ids (-1 means "no result"), the sentinel ``2**63 - 1`` and
duplicates, so ``bebr encode`` refuses them as it reads them, naming the input file and row,
instead of writing a directory that ``bebr index build`` refuses later.

- Within one shard: checked in memory (the shard's ids are in memory anyway).
- Across shards (``find_duplicate_id``): shards whose id ranges ``[min, max]`` are disjoint
  (sorted ids, the usual case) cannot share an id, so nothing more is read. Otherwise the ids
  of the overlapping shards are hash-partitioned into temporary bucket files of at most
  ``bucket_rows`` ids on average (8 bytes per id on disk, next to the shards), and each bucket
  is sorted and scanned: memory is one bucket plus one read chunk (about 32 MB + 1 MB at the
  defaults) whatever the number of items; time two passes over the id shards.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["ID_SENTINEL", "check_ids", "find_duplicate_id"]

ID_SENTINEL = (1 << 63) - 1   # the index's "no item" id: never an item id
_HASH = np.uint64(0x9E3779B97F4A7C15)


def check_ids(ids: np.ndarray, rows: np.ndarray, where: str) -> None:
    """Refuse negative ids, the sentinel and duplicates among ``ids``; ``rows[i]`` is the
    input row of ``ids[i]`` and ``where`` names the input file. ValueError naming the rows."""
    bad = np.flatnonzero((ids < 0) | (ids == ID_SENTINEL))
    if bad.size:
        i = int(bad[0])
        raise ValueError(f"{where}: row {int(rows[i])} has id {int(ids[i])}; ids must be in "
                         f"[0, 2**63 - 1) (-1 means 'no result' in search results)")
    if ids.size < 2:
        return
    order = np.argsort(ids, kind="stable")
    s = ids[order]
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        a, b = int(order[dup[0]]), int(order[dup[0] + 1])
        raise ValueError(f"{where}: rows {int(rows[a])} and {int(rows[b])} have the same id "
                         f"{int(ids[a])}; ids must be unique")


def find_duplicate_id(id_files: Sequence[Union[str, Path]], *,
                      bucket_rows: int = 1 << 22, chunk_rows: int = 1 << 17,
                      tmp_dir: Optional[Union[str, Path]] = None) -> Optional[Tuple[int, int, int]]:
    """An id held by two of the (each duplicate-free) int64 id files, as ``(id, i, j)`` with
    ``i < j`` indices into ``id_files``; None if all ids are distinct. Bounded memory (module
    docstring)."""
    arrays = [np.load(p, mmap_mode="r", allow_pickle=False) for p in id_files]
    ranges = [(int(a.min()), int(a.max()), i) for i, a in enumerate(arrays) if a.size]
    ranges.sort()
    # group shards whose [min, max] overlap; a group of one cannot hold a duplicate
    groups: List[List[int]] = []
    hi = None
    for lo, top, i in ranges:
        if hi is not None and lo <= hi:
            groups[-1].append(i)
            hi = max(hi, top)
        else:
            groups.append([i])
            hi = top
    for g in groups:
        if len(g) > 1:
            found = _duplicate_in(arrays, sorted(g), bucket_rows, chunk_rows, tmp_dir)
            if found is not None:
                return found
    return None


def _duplicate_in(arrays, members: List[int], bucket_rows: int, chunk_rows: int,
                  tmp_dir) -> Optional[Tuple[int, int, int]]:
    total = sum(arrays[i].size for i in members)
    n_buckets = max(1, -(-total // bucket_rows))
    if n_buckets == 1:
        value = _first_duplicate(np.concatenate([np.asarray(arrays[i]) for i in members]))
    else:
        value = None
        with tempfile.TemporaryDirectory(prefix=".bebr-ids-", dir=tmp_dir) as tmp:
            paths = [Path(tmp) / f"b{b:05d}" for b in range(n_buckets)]
            files = [open(p, "wb") for p in paths]
            try:
                for i in members:
                    a = arrays[i]
                    for s in range(0, a.size, chunk_rows):
                        c = np.asarray(a[s:s + chunk_rows])
                        with np.errstate(over="ignore"):
                            h = (c.view(np.uint64) * _HASH) % np.uint64(n_buckets)
                        order = np.argsort(h, kind="stable")
                        hs = h[order]
                        cuts = np.searchsorted(hs, np.arange(n_buckets + 1, dtype=np.uint64))
                        cs = c[order]
                        for b in np.flatnonzero(np.diff(cuts)):
                            files[b].write(cs[cuts[b]:cuts[b + 1]].tobytes())
            finally:
                for f in files:
                    f.close()
            for p in paths:
                value = _first_duplicate(np.fromfile(p, dtype=np.int64))
                if value is not None:
                    break
    if value is None:
        return None
    holders = [i for i in members if np.any(np.asarray(arrays[i]) == value)]
    return value, holders[0], holders[1]


def _first_duplicate(ids: np.ndarray) -> Optional[int]:
    s = np.sort(ids)
    dup = np.flatnonzero(s[1:] == s[:-1])
    return int(s[dup[0]]) if dup.size else None


def row_of_id(source, start: int, stop: int, value: int) -> Optional[int]:
    """The first row in ``[start, stop)`` of ``source`` (a ``bebr.io.Source`` with an id
    column) whose id is ``value``; None if none."""
    for ch in source.read(start, stop, 1 << 16):
        hit = np.flatnonzero(ch.ids == value)
        if hit.size:
            return ch.offset + int(hit[0])
    return None
