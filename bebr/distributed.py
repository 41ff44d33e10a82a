"""Sharded search across machines: index shards served by Ray actors, top-k merged exactly.

Each actor loads one saved ``bebr.Index`` file (memory-mapped by default) and answers
``search(queries, k)``; the client sends the queries to every actor once (Ray object store),
and merges the per-shard top-k into the global top-k with the index's own order: score
descending (ascending distance for a ``HammingIndex``), ties to the smaller id; missing
results are id -1 with score -inf (+inf for Hamming). Because every shard returns its exact
top-k, the merge equals one index holding all items (ids must be unique across shards).

Needs the ``ray`` extra: ``pip install "bebr[ray]"``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np

from .raytools import ensure_ray

__all__ = ["merge_topk", "load_index", "ShardedIndex"]


def merge_topk(scores: Sequence[np.ndarray], ids: Sequence[np.ndarray], k: int, *,
               descending: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """Merge per-shard results ``(nq, k_i)`` into the global top-``k`` ``(nq, k)``.

    Order: best score first (``descending``), ties to the smaller id; padding entries
    (id -1) always sort last. Returns ``(scores float32, ids int64)``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive int, got {k!r}")
    if len(scores) != len(ids) or not scores:
        raise ValueError("merge_topk needs the same positive number of score and id arrays")
    s = np.concatenate([np.asarray(a, dtype=np.float64) for a in scores], axis=1)
    i = np.concatenate([np.asarray(a, dtype=np.int64) for a in ids], axis=1)
    if s.shape != i.shape:
        raise ValueError(f"scores {s.shape} and ids {i.shape} differ in shape")
    nq = s.shape[0]
    pad = i < 0
    key_score = np.where(pad, np.inf, -s if descending else s)
    key_id = np.where(pad, np.iinfo(np.int64).max, i)
    order = np.lexsort((key_id, key_score), axis=1)[:, :k]
    rows = np.arange(nq)[:, None]
    out_s = s[rows, order].astype(np.float32)
    out_i = i[rows, order]
    if out_i.shape[1] < k:  # fewer candidates than k in all
        extra = k - out_i.shape[1]
        out_s = np.hstack([out_s, np.full((nq, extra), -np.inf if descending else np.inf,
                                          np.float32)])
        out_i = np.hstack([out_i, np.full((nq, extra), -1, np.int64)])
    worst = -np.inf if descending else np.inf
    out_s[out_i < 0] = worst
    return out_s, out_i


def load_index(path: Union[str, "os.PathLike[str]"], mmap: bool = True):
    """Load a saved ``bebr.Index`` (or ``bebr.HammingIndex``) file."""
    import bebr

    loaders = [getattr(bebr, name) for name in ("Index", "HammingIndex") if hasattr(bebr, name)]
    if not loaders:
        raise ImportError("this bebr build has no Index class")
    first_error: Optional[Exception] = None
    for cls in loaders:
        if not hasattr(cls, "load"):
            continue
        try:
            return cls.load(path, mmap=mmap)
        except ValueError as e:  # wrong kind of index file: try the next class
            first_error = first_error or e
    if first_error is not None:
        raise first_error
    raise ImportError("this bebr build cannot load index files (no Index.load)")


class _ShardServer:
    """Ray actor body: one index file, loaded once (memory-mapped), searched on request."""

    def __init__(self, path: str, mmap: bool):
        self.path = path
        self.index = load_index(path, mmap=mmap)

    def info(self):
        idx = self.index
        return {"path": self.path, "n": len(idx), "spec": getattr(idx, "spec", None),
                "descending": type(idx).__name__ != "HammingIndex"}

    def search(self, queries, k, threads=None, query_bits=None, version_queries=None,
               version_calibration=None):
        kw = {}
        if query_bits is not None:
            kw["query_bits"] = query_bits
        if version_queries is not None:
            kw["version_queries"] = {v: _canonical(c) for v, c in version_queries.items()}
        if version_calibration is not None:
            kw["version_calibration"] = version_calibration
        return self.index.search(_canonical(queries), k, threads=threads, **kw)


def _canonical(codes):
    """Arrays unpickled from Ray's object store carry a non-canonical dtype instance that
    bebr._C's identity dtype check refuses ("must have dtype uint8, got uint8"); a view with
    the canonical dtype fixes that without a copy."""
    q = np.ascontiguousarray(codes)
    return q.view(np.uint8) if q.dtype == np.uint8 else q


class ShardedIndex:
    """Search index shards served by Ray actors as if they were one index.

    ``paths``: saved index files (one per shard; a file must be readable where its actor
    runs, e.g. on a shared filesystem). ``address``: the Ray cluster (None: the running Ray
    instance, or a new local one). ``actor_cpus``: CPUs reserved per actor.
    """

    def __init__(self, paths: Sequence[Union[str, "os.PathLike[str]"]], *,
                 address: Optional[str] = None, mmap: bool = True, actor_cpus: float = 0):
        paths = [str(Path(p).resolve()) for p in paths]
        if not paths:
            raise ValueError("ShardedIndex needs at least one index file")
        for p in paths:
            if not Path(p).exists():
                raise FileNotFoundError(f"{p}: no such index file")
        ray = ensure_ray(address)
        self._ray = ray
        Server = ray.remote(num_cpus=actor_cpus)(_ShardServer)
        self.actors = [Server.remote(p, mmap) for p in paths]
        infos = ray.get([a.info.remote() for a in self.actors])
        specs = {repr(i["spec"]) for i in infos}
        orders = {i["descending"] for i in infos}
        if len(specs) > 1 or len(orders) > 1:
            self.close()
            raise ValueError(f"index shards disagree on code spec or index kind: "
                             f"{sorted(specs)}")
        self.spec = infos[0]["spec"]
        self.descending = orders.pop()
        self.sizes: List[int] = [i["n"] for i in infos]

    def __len__(self) -> int:
        return sum(self.sizes)

    def search(self, queries: np.ndarray, k: int, threads: Optional[int] = None,
               query_bits: Optional[int] = None, version_queries=None,
               version_calibration=None) -> Tuple[np.ndarray, np.ndarray]:
        """Global top-k over all shards: ``(scores float32 (nq, k), ids int64 (nq, k))``.
        ``query_bits``, ``version_queries``, ``version_calibration``: as in
        :meth:`bebr.Index.search` (SDC index shards only); shards of a mixed-version index
        score each version's items with its own query codes, so the merge is exact."""
        q = self._ray.put(np.ascontiguousarray(queries))
        vq = None if version_queries is None else self._ray.put(
            {v: np.ascontiguousarray(c) for v, c in dict(version_queries).items()})
        parts = self._ray.get([a.search.remote(q, k, threads, query_bits, vq,
                                               version_calibration)
                               for a in self.actors])
        return merge_topk([p[0] for p in parts], [p[1] for p in parts], k,
                          descending=self.descending)

    def close(self) -> None:
        """Stop the actors."""
        for a in getattr(self, "actors", []):
            self._ray.kill(a)
        self.actors = []

    def __enter__(self) -> "ShardedIndex":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
