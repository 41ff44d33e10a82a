"""``IVFIndex``: sub-linear SDC search over inverted lists of packed codes.

Wraps the private compiled ``bebr._C.IvfIndex``. ``train`` fits ``nlist`` coarse centroids
(spherical k-means, faiss, on the code values ``CodeSpec.values(codes) / scale`` of a
sample); every added item goes to the list whose centroid has the largest inner product with
its code values; each list is a ``bebr.Index``-style store of 64-item transposed blocks.
``search`` scores each query code against the centroids (the query's own code values, at its
``query_bits``), scans the ``nprobe`` best lists with the same SIMD kernels, keys and tie rules
as ``bebr.Index`` and keeps one top-k per query: with ``nprobe=nlist`` the results are the
flat index's, id for id and bit for bit.

The contract is ``bebr.Index``'s (ids, add / upsert / remove, versions, filters, threads,
padding, save / load / mmap with checksums), plus ``train``, ``nlist``, ``is_trained`` and the
``nprobe`` search argument. Versions are model version strings (or int tags) kept in the
same registry as ``Index`` and saved in the file header. An item is assigned by its own codes; with
``version_queries`` each version's query codes probe their own lists and score only that
version's items there (calibrations as in ``Index``).

Spilled assignment (optional, ``spill_lambda=``): every item is also stored in a second list
chosen by the SOAR criterion (Sun et al. 2023); a search drops the second copy of an id, so
results keep the single-assignment contract. Files: the ``Index`` format with kind
``IVFIndex``; the lists' slots concatenated in list order (a spilled index keeps each list's
spilled copies at its end, ``spilled_sizes`` in the header counts them), ``list_sizes`` and
the centroids in the checksummed header.

Refinement (optional): ``search(..., refine=Refine(vectors, queries, factor))`` takes the top
``k * factor`` SDC candidates and re-ranks them by the exact float inner product (cosine for
``metric="cosine"``) of ``queries`` with ``vectors[id]`` (rows indexed by id: an in-RAM array
or ``numpy.load(path, mmap_mode="r")``, faiss ``IndexRefineFlat`` style, or ``SQ8`` codes of
them, faiss ``Refine(SQ8)`` style); scores are then the float ones, computed in C++ with the
GIL released.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import numpy as np

from . import _C
from .codes import CodeSpec
from .fileio import CorruptFileError, sha256_bytes
from .index import (_METRICS, Index, _check_codes, _check_k, _check_threads, _query_spec,
                    _read_index_file, _write_index_file)
from .versions import Version, VersionRegistry

__all__ = ["IVFIndex", "Refine", "SQ8"]

_U8, _F32 = np.dtype(np.uint8), np.dtype(np.float32)


def _check_positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


class SQ8:
    """Re-ranking vectors stored as uint8 per-dimension scalar quantization (faiss SQ8): 1
    byte per dimension (value ``lo[j] + step[j] * code``; for cosine the decoded row's norm is
    computed while scoring, not stored). ``SQ8.encode(x)`` fits the per-dimension range of
    ``x`` and quantizes it; rows are indexed by id like ``Refine.vectors``."""

    def __init__(self, codes: np.ndarray, lo: np.ndarray, step: np.ndarray) -> None:
        self.codes = np.ascontiguousarray(codes, dtype=np.uint8)
        self.lo = np.asarray(lo, dtype=np.float32)
        self.step = np.asarray(step, dtype=np.float32)
        if self.codes.ndim != 2 or self.lo.shape != (self.codes.shape[1],) or \
                self.step.shape != self.lo.shape:
            raise ValueError(f"SQ8: codes (n, d) with lo and step (d,), got {self.codes.shape}, "
                             f"{self.lo.shape}, {self.step.shape}")

    @classmethod
    def encode(cls, x: Any, chunk: int = 65536) -> "SQ8":
        x = np.asarray(x, dtype=np.float32)
        lo, hi = x.min(axis=0), x.max(axis=0)
        step = np.maximum(hi - lo, 1e-12) / 255.0
        codes = np.empty(x.shape, np.uint8)
        for s in range(0, x.shape[0], chunk):
            codes[s:s + chunk] = np.clip(np.rint((x[s:s + chunk] - lo) / step), 0, 255)
        return cls(codes, lo, step)

    @property
    def shape(self) -> tuple:
        return self.codes.shape

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        return self.codes.nbytes + self.lo.nbytes + self.step.nbytes

    def decode(self, rows: np.ndarray) -> np.ndarray:
        return self.codes[rows].astype(np.float32) * self.step + self.lo


@dataclass(frozen=True)
class Refine:
    """Re-ranking data of ``IVFIndex.search``: ``vectors`` (rows indexed by id, float, e.g. a
    memory-mapped ``.npy``), the float ``queries`` (one row per query, same dim) and the
    candidate factor (``k * factor`` SDC candidates are re-ranked)."""

    vectors: Any
    queries: Any
    factor: int = 4


class IVFIndex(Index):
    """Inverted-file SDC index over codes of one ``CodeSpec`` (``nlist`` lists).

    Same API as ``bebr.Index`` plus ``train(codes)`` (required before ``add``), ``nlist``,
    ``is_trained`` and ``search(..., nprobe=)``.
    """

    def __init__(self, spec: CodeSpec, nlist: int, metric: str = "ip", *,
                 spill_lambda: Optional[float] = None) -> None:
        self._nlist = _check_positive(nlist, "nlist")
        if spill_lambda is not None:
            if isinstance(spill_lambda, bool) or not isinstance(spill_lambda, (int, float, np.number)):
                raise TypeError(f"spill_lambda must be a float or None, got {type(spill_lambda).__name__}")
            if not np.isfinite(spill_lambda) or spill_lambda < 0:
                raise ValueError(f"spill_lambda must be a finite float >= 0, got {spill_lambda}")
        self._spill = None if spill_lambda is None else float(spill_lambda)
        super().__init__(spec, metric)  # spec / metric checks, version registry
        # search's fast path: query_bits (None = the codes' bits) -> (bits, code bytes) of the
        # query codes, for the widths whose packed codes have no padding bits to check
        self._plain_qbits = {}
        for qb in [None] + list(range(1, 8)):
            try:
                qs = self.spec if qb is None else _query_spec(self.spec, qb)
            except ValueError:
                continue
            if qs.plane_bytes * 8 == qs.dim:
                self._plain_qbits[qb] = (qs.bits, qs.code_bytes)

    def _new_core(self):
        return _C.IvfIndex(self.spec.dim, self.spec.bits, self.metric, self._nlist,
                           -1.0 if self._spill is None else self._spill)

    @property
    def spill_lambda(self) -> Optional[float]:
        """SOAR lambda of the spilled assignment (every item also in a second list), or None."""
        return self._spill

    def __repr__(self) -> str:
        return (f"IVFIndex(CodeSpec(dim={self.spec.dim}, bits={self.spec.bits}), "
                f"nlist={self.nlist}, metric={self.metric!r}, n={len(self)})")

    @property
    def nlist(self) -> int:
        """Number of inverted lists."""
        return int(self._core.nlist)

    @property
    def is_trained(self) -> bool:
        """True once the coarse centroids are set (``train``)."""
        return bool(self._core.is_trained)

    def _require_trained(self) -> None:
        if not self.is_trained:
            raise ValueError("the IVFIndex is not trained: call train(codes) on a sample first")

    # ------------------------------------------------------------------ training
    def train(self, codes: Any, *, niter: int = 20, seed: int = 0,
              max_points_per_centroid: int = 256) -> None:
        """Fit the coarse centroids on packed codes ``(n, code_bytes)`` (n >= nlist).

        Spherical k-means (``faiss.Kmeans``, ``niter`` iterations, seeded) on the code values;
        at most ``max_points_per_centroid * nlist`` codes are used (a seeded subsample).
        ValueError if the index already holds items (their lists would be stale).
        """
        arr = _check_codes(self.spec, codes, "codes")
        niter = _check_positive(niter, "niter")
        mppc = _check_positive(max_points_per_centroid, "max_points_per_centroid")
        if len(self):
            raise ValueError(f"cannot train an IVFIndex that holds {len(self)} items")
        if arr.shape[0] < self.nlist:
            raise ValueError(f"train needs at least nlist={self.nlist} codes, got {arr.shape[0]}")
        try:
            import faiss
        except ImportError as e:  # pragma: no cover - faiss is in the ivf/test extras
            raise ImportError("IVFIndex.train runs faiss k-means: pip install 'bebr[ivf]' "
                              "(or set_centroids with centroids of your own)") from e

        x = (self.spec.values(arr) / float(self.spec.scale)).astype(np.float32)
        km = faiss.Kmeans(self.spec.dim, self.nlist, niter=niter, seed=int(seed),
                          spherical=True, max_points_per_centroid=mppc, verbose=False)
        km.train(np.ascontiguousarray(x))
        self.set_centroids(km.centroids)

    def set_centroids(self, centroids: Any) -> None:
        """Set the coarse centroids directly: float ``(nlist, dim)`` in code-value units."""
        c = np.ascontiguousarray(np.asarray(centroids, dtype=np.float32))
        self._core.set_centroids(c)

    def centroids(self) -> np.ndarray:
        """The coarse centroids ``(nlist, dim)`` float32 (``(0, dim)`` before training)."""
        return self._core.centroids()

    def list_sizes(self) -> np.ndarray:
        """Live items per list (int64, ``nlist``)."""
        return self._core.list_sizes()

    def assign(self, packed: Any) -> np.ndarray:
        """List (int32) each packed code would be added to."""
        self._require_trained()
        return self._core.assign_lists(_check_codes(self.spec, packed, "packed"))

    def probe(self, queries: Any, nprobe: int, *, query_bits: Optional[int] = None) -> np.ndarray:
        """The lists (int32 ``(nq, min(nprobe, nlist))``, best first) a search probes."""
        self._require_trained()
        qspec = self.spec if query_bits is None else CodeSpec(self.spec.dim, int(query_bits))
        q = _check_codes(qspec, queries, "queries")
        return self._core.probe(q, _check_positive(nprobe, "nprobe"), qspec.bits)

    def memory_bytes(self) -> int:
        """Bytes the index holds in RAM: codes (unless memory-mapped), ids, inverse norms,
        alive masks, version runs, the id table (once built), centroids; ``memory_breakdown``
        gives them by part."""
        return int(self._core.memory_bytes())

    def memory_breakdown(self) -> dict:
        """``memory_bytes`` by part: ``codes``, ``ids``, ``norms``, ``masks``, ``versions``,
        ``id_table``, ``centroids``, ``lists``."""
        return {k: int(v) for k, v in self._core.memory_breakdown().items()}

    @property
    def id_table_built(self) -> bool:
        """True once the id -> list table is held (built by the first remove, upsert,
        ``in``, ``get_codes`` or add of ids below the next free id; about 10-14 bytes per
        item). An index only filled with new ids and searched never builds it."""
        return bool(self._core.id_table_built)

    # ------------------------------------------------------------------ changes
    def add(self, packed: Any, ids: Any = None, version: Version = 0) -> np.ndarray:
        """``Index.add``; ValueError if the index is not trained."""
        self._require_trained()
        return super().add(packed, ids, version)

    def upsert(self, packed: Any, ids: Any, version: Version = 0) -> None:
        """``Index.upsert`` (a replaced item moves to the list of its new code)."""
        self._require_trained()
        super().upsert(packed, ids, version)

    # ------------------------------------------------------------------ search
    def search(self, queries: Any, k: int, threads: Optional[int] = None, filter: Any = None,
               exclude: Any = None, query_bits: Optional[int] = None,
               version_queries: Optional[Mapping[Any, Any]] = None,
               version_calibration: Optional[Mapping[Any, tuple]] = None, *,
               nprobe: int = 8, refine: Optional[Refine] = None):
        """``Index.search`` over the ``nprobe`` lists of each query code (clamped to
        ``nlist``; ``nprobe=nlist`` is the flat scan). ``refine``: see ``Refine`` (scores are
        then float inner products / cosines of the refine vectors). Without filters or version
        queries, arguments already in their plain form (C-contiguous uint8 query codes, int k,
        nprobe and threads, SQ8 refine data with C-contiguous float32 queries) go to the core
        in one call, search and re-ranking together (the single-query latency path; the same
        results as any other form of the same arguments).
        """
        if filter is None and exclude is None and version_queries is None and version_calibration is None:
            out = self._search_plain(queries, k, threads, query_bits, nprobe, refine)
            if out is not None:
                return out
        self._require_trained()
        nprobe = _check_positive(nprobe, "nprobe")
        if refine is None:
            args = self._search_args(queries, k, threads, filter, exclude, query_bits,
                                     version_queries, version_calibration)
            return self._core.search(*args, nprobe=nprobe)
        if not isinstance(refine, Refine):
            raise TypeError(f"refine must be a bebr.ivf.Refine, got {type(refine).__name__}")
        k = _check_k(k)
        factor = _check_positive(refine.factor, "refine.factor")
        args = self._search_args(queries, k * factor, threads, filter, exclude, query_bits,
                                 version_queries, version_calibration)
        _, cand = self._core.search(*args, nprobe=nprobe)
        return _rerank(cand, refine.vectors, refine.queries, k, self.metric == "cosine", args[2])

    def _search_plain(self, queries: Any, k: Any, threads: Any, query_bits: Any, nprobe: Any,
                      refine: Any):
        """The fast path of ``search`` without filters or version queries: when every argument
        already has its plain form (C-contiguous uint8 query codes of a width without padding
        bits, int k / nprobe / threads, no refine or SQ8 refine data with C-contiguous float32
        queries), one core call with no further conversion (``search_sq8``: search and
        re-ranking together); the same results as the general path. None otherwise (the
        general path then converts, checks and raises)."""
        if query_bits is not None and type(query_bits) is not int:
            return None
        qb = self._plain_qbits.get(query_bits)
        if (qb is None or type(queries) is not np.ndarray or queries.dtype is not _U8
                or queries.ndim != 2 or queries.shape[1] != qb[1] or not queries.flags.c_contiguous
                or type(k) is not int or k <= 0 or type(nprobe) is not int or nprobe <= 0):
            return None
        if threads is None:
            threads = _check_threads(None)
        elif type(threads) is not int or threads <= 0:
            return None
        core = self._core
        if not core.is_trained:
            return None
        if refine is None:
            return core.search(queries, k, threads, None, None, None, None, qb[0], [], [], [], [], nprobe)
        if type(refine) is not Refine or type(refine.vectors) is not SQ8:
            return None
        fq, sq, factor = refine.queries, refine.vectors, refine.factor
        if (type(fq) is not np.ndarray or fq.dtype is not _F32 or fq.ndim != 2
                or fq.shape[0] != queries.shape[0] or fq.shape[1] != sq.codes.shape[1]
                or not fq.flags.c_contiguous or type(factor) is not int or factor <= 0):
            return None
        return core.search_sq8(queries, k, nprobe, threads, qb[0], factor, sq.codes, sq.lo, sq.step, fq)

    # ------------------------------------------------------------------ persistence
    def _header(self) -> dict:
        h = dict(super()._header(), nlist=self.nlist, trained=self.is_trained)
        if self._spill is not None:
            h["spill_lambda"] = self._spill
        return h

    def save(self, path: "os.PathLike[str] | str") -> None:
        """Write the index atomically: the ``Index`` file format with kind ``IVFIndex``, the
        lists' sections concatenated in list order, and the list sizes and centroids in the
        (checksummed) header."""
        dense = _IvfDense(self._core)
        extra = {} if self._spill is None else {"spilled_sizes": dense.spilled}
        _write_index_file(path, dense, lambda: dict(
            self._header(), kind=type(self).__name__, list_sizes=dense.sizes,
            centroids=self._core.centroids().reshape(-1).tolist(), **extra))

    @classmethod
    def _from_header(cls, header: dict) -> "IVFIndex":
        if header["metric"] not in _METRICS:
            raise ValueError(f"unknown metric {header['metric']!r}")
        spill = header.get("spill_lambda")
        idx = cls(CodeSpec.from_dict(header["spec"]), int(header["nlist"]), header["metric"],
                  spill_lambda=None if spill is None else float(spill))
        idx._registry = VersionRegistry.from_list(header["versions"])
        return idx

    @classmethod
    def load(cls, path: "os.PathLike[str] | str", mmap: bool = True, verify: bool = True):
        """Load an index written by ``IVFIndex.save`` (``Index.load``'s options and errors)."""
        header, arrays, mm = _read_index_file(path, mmap=mmap, verify=verify, kind=cls.__name__)
        try:
            idx = cls._from_header(header)
            c = np.asarray(header["centroids"], dtype=np.float32)
            if header["trained"]:
                idx._core.set_centroids(np.ascontiguousarray(c.reshape(idx.nlist, idx.spec.dim)))
            elif c.size or header["n"]:
                raise ValueError("an untrained index with centroids or items")
            sizes = np.asarray(header["list_sizes"], dtype=np.int64)
            spilled = (None if idx.spill_lambda is None
                       else np.asarray(header["spilled_sizes"], dtype=np.int64))
            idx._core.assign_dense(arrays["codes"], arrays["ids"], arrays["versions"],
                                   arrays["invn"], sizes,
                                   int(header["next_id"]), mm is not None, spilled)
            items = header["n"] - (0 if spilled is None else int(spilled.sum()))
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(f"{path}: bad or inconsistent IVF index file: {e}") from None
        if len(idx) != items:
            raise CorruptFileError(f"{path}: item count does not match the header")
        idx._mmap = mm
        return idx


class _IvfDense:
    """The dense-writer side of ``bebr.index._write_index_file`` for an IVF index: the lists'
    arrays (compacted, concatenated in list order) written at 64-byte aligned offsets from
    ``data_start`` with their SHA-256, like ``SdcIndex.write_dense``."""

    def __init__(self, core) -> None:
        codes, ids, versions, invn, sizes, next_id, spilled = core.export_dense()
        self.arrays = [("codes", codes), ("ids", ids), ("versions", versions), ("invn", invn)]
        self.sizes = [int(v) for v in sizes]
        self.spilled = [int(v) for v in spilled]
        self.next_id = int(next_id)
        self.n = int(ids.size)  # stored slots: items plus their spilled copies

    def write_dense(self, fd: int, data_start: int) -> dict:
        sections, off = [], 0
        for name, arr in self.arrays:
            raw = memoryview(np.ascontiguousarray(arr)).cast("B")
            os.pwrite(fd, raw, data_start + off) if raw.nbytes else None
            pad = (-raw.nbytes) % 64
            if pad:
                os.pwrite(fd, b"\x00" * pad, data_start + off + raw.nbytes)
            sections.append({"name": name, "dtype": arr.dtype.str, "count": int(arr.size),
                             "offset": off, "nbytes": int(raw.nbytes),
                             "sha256": sha256_bytes(raw)})
            off += raw.nbytes + pad
        return {"n": self.n, "next_id": self.next_id, "sections": sections}


def _rerank(cand: np.ndarray, vectors: Any, queries: Any, k: int, cosine: bool, threads: int):
    """Best ``k`` of the candidates ``cand`` (nq, c) by the float scores of ``queries`` with
    the rows ``vectors[id]`` (SQ8 codes or float; scored in C++, GIL released, ``threads``
    over queries)."""
    q = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    if q.ndim != 2 or q.shape[0] != cand.shape[0]:
        raise ValueError(f"refine.queries must have shape ({cand.shape[0]}, d), got {q.shape}")
    if getattr(vectors, "ndim", None) != 2 or vectors.shape[1] != q.shape[1]:
        raise ValueError(f"refine.vectors must be 2-d with {q.shape[1]} columns (the queries' "
                         f"dim), got shape {getattr(vectors, 'shape', None)}")
    if isinstance(vectors, SQ8):
        return _C.rerank_sq8(cand, vectors.codes, vectors.lo, vectors.step, q, cosine, k, threads)
    rows = vectors
    if not (isinstance(rows, np.ndarray) and rows.dtype == np.float32 and rows.flags.c_contiguous):
        # other dtypes or layouts: only the candidate rows are converted
        valid = cand >= 0
        if valid.any() and cand[valid].max() >= rows.shape[0]:
            raise ValueError(f"the refine rows are {rows.shape[0]} but a candidate has id "
                             f"{int(cand[valid].max())} (rows must be indexed by id)")
        uniq, inv = np.unique(np.where(valid, cand, -1), return_inverse=True)
        keep = uniq >= 0
        sub = np.ascontiguousarray(np.asarray(rows[uniq[keep]], dtype=np.float32))
        remap = np.full(uniq.shape, -1, np.int64)
        remap[keep] = np.arange(int(keep.sum()))
        local = remap[inv.reshape(cand.shape)]
        s, i = _C.rerank_float(np.ascontiguousarray(local), sub, q, cosine, k, threads)
        src = uniq[keep]
        return s, np.where(i >= 0, src[np.maximum(i, 0)] if src.size else -1, -1)
    return _C.rerank_float(cand, rows, q, cosine, k, threads)
