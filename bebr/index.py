"""Search indexes over packed codes: ``Index`` (SDC inner product / cosine) and ``HammingIndex``.

Both wrap the private compiled ``bebr._C.SdcIndex``: this module normalises and validates
inputs (raising TypeError / ValueError that name the argument and what was expected), the C++
core re-checks, stores codes in 64-item transposed blocks and scans them with the SIMD level
reported by ``bebr.simd_level()`` with the GIL released.

Contract of ``search`` (both classes):

* results are best first; ties are broken by the smaller id, so results are deterministic;
* a query with fewer than k eligible items gets id -1 and the pad score (``-inf`` for
  ``Index``, ``+inf`` for ``HammingIndex``) in the tail;
* ``filter`` restricts the candidates to an allow-list, ``exclude`` removes candidates. Each is
  either a sequence/array of int ids, or a boolean numpy mask indexed by id (``mask[id]``; ids
  at or past ``len(mask)`` read as False). Ids in an allow/exclude list that are not in the
  index are ignored. Both may be given: an item must be allowed and not excluded.

Ids are int64 in [0, 2**63 - 2] (``MAX_ID``; -1 is the "no result" id and 2**63 - 1 the
heaps' empty slot). ``add`` without ids continues from one past the largest id ever added
(0, 1, 2, ... for a fresh index); the C++ core assigns them under its lock, so concurrent adds
get distinct ids.

Concurrency: an index may be searched (and saved) from several threads while another thread
adds, upserts or removes; a readers-writer lock in the C++ core serialises changes against
searches and saves, so a search or a saved file sees the index either before or after a
change, never in between.

Threads: a search starts one more thread per ``min_parallel_work()`` block-queries (64-item
blocks scanned times queries; default 4096, env ``BEBR_MIN_PARALLEL_WORK`` at import,
``set_min_parallel_work``), up to its ``threads``; ``last_search_stats()`` tells how the
calling thread's last search was split.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import struct
from typing import Any, Mapping, Optional

import numpy as np

from . import _C
from .codes import MAX_BITS, CodeSpec, max_query_bits
from .fileio import CorruptFileError, atomic_writer, sha256_bytes
from .versions import Version, VersionInfo, VersionRegistry, version_tag

__all__ = ["Index", "HammingIndex", "simd_level", "simd_levels", "set_simd_level",
           "min_parallel_work", "set_min_parallel_work", "last_search_stats", "MAX_ID",
           "INDEX_FORMAT_VERSION"]

#: Largest item id (2**63 - 1 is the search heaps' empty-slot sentinel).
MAX_ID = 2**63 - 2

#: Version of the ``.bebr`` index file layout written by ``Index.save`` (docs/FORMAT.md).
#: 2 added the version registry to the header; files of version 1 still load.
INDEX_FORMAT_VERSION = 2
_READABLE_FORMATS = (1, 2)
_MAGIC = b"BEBRIDX\x00"
_METRICS = ("ip", "cosine")


def simd_level() -> str:
    """Name of the active SIMD level ("scalar", "avx2", "avx512" or "amx")."""
    return _C.simd_level()


def simd_levels() -> list:
    """SIMD levels available on this CPU and build, lowest first."""
    return list(_C.simd_levels())


def set_simd_level(level: str) -> None:
    """Force a SIMD level for every index (ValueError if unavailable). Also: env BEBR_SIMD."""
    if not isinstance(level, str):
        raise TypeError(f"level must be a str, got {type(level).__name__}")
    _C.set_simd_level(level)


def min_parallel_work() -> int:
    """Search work (block-queries: 64-item blocks scanned x queries) per thread started."""
    return int(_C.min_parallel_work())


def set_min_parallel_work(work: int) -> None:
    """Set the search work per thread started (>= 1; default 4096, below which a thread costs
    more than it saves). Process-wide; also env ``BEBR_MIN_PARALLEL_WORK`` at import."""
    if isinstance(work, bool) or not isinstance(work, (int, np.integer)):
        raise TypeError(f"work must be an int, got {type(work).__name__}")
    if work < 1:
        raise ValueError(f"min_parallel_work must be >= 1, got {work}")
    _C.set_min_parallel_work(int(work))


def last_search_stats() -> dict:
    """How the calling thread's last search ran: ``{"workers"`` (threads planned),
    ``"active_workers"`` (threads that scanned part of it), ``"items"`` (work items),
    ``"split"`` (``"none"``, ``"queries"``: query groups over the whole database, or
    ``"database"``: chunks of blocks for all queries)``}``."""
    return dict(_C.last_search_stats())


# ---------------------------------------------------------------------------- input checks
def _check_codes(spec: CodeSpec, codes: Any, name: str) -> np.ndarray:
    if (type(codes) is np.ndarray and codes.dtype == np.uint8 and codes.ndim == 2
            and codes.shape[1] == spec.code_bytes and codes.flags.c_contiguous
            and spec.dim % 8 == 0):
        return codes  # the common call, cheaply (whole bytes per plane: no padding bits)
    arr = codes if isinstance(codes, np.ndarray) else np.asarray(codes)
    if arr.dtype != np.uint8:
        raise TypeError(f"{name} must be uint8 packed codes (CodeSpec.pack), got dtype {arr.dtype}")
    if arr.ndim == 1 and arr.shape[0] == spec.code_bytes:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != spec.code_bytes:
        raise ValueError(f"{name} must have shape (n, {spec.code_bytes}) (code width of "
                         f"CodeSpec(dim={spec.dim}, bits={spec.bits})), got {arr.shape}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; pass numpy.ascontiguousarray({name})")
    return spec.check_packed(arr, name)


@functools.lru_cache(maxsize=256)
def _query_spec_of(spec: CodeSpec, query_bits: int) -> CodeSpec:
    top = max_query_bits(spec.bits)
    if not 1 <= query_bits <= top:
        raise ValueError(f"query_bits must be in [1, {top}] over {spec.bits}-bit codes, got "
                         f"{query_bits}")
    return CodeSpec(spec.dim, query_bits)


def _query_spec(spec: CodeSpec, query_bits: Any) -> CodeSpec:
    if type(query_bits) is not int:
        if isinstance(query_bits, bool) or not isinstance(query_bits, (int, np.integer)):
            raise TypeError(f"query_bits must be an int or None, got {type(query_bits).__name__}")
        query_bits = int(query_bits)
    return _query_spec_of(spec, query_bits)  # one spec per (spec, bits), cached


def _check_ids(ids: Any, name: str, n: Optional[int] = None) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.size == 0:
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be integers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} must have one id per code ({n}), got {arr.shape[0]}")
    if arr.size and arr.max() > MAX_ID:
        raise ValueError(f"{name} must be <= 2**63 - 2 (2**63 - 1 is the search's empty-slot "
                         f"id), got {arr.max()}")
    if arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be >= 0 (-1 is the 'no result' id), got {arr.min()}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _check_version(version: Any) -> int:
    """The int tag of a version string or int (``bebr.versions.version_tag``)."""
    return version_tag(version)


def _calibration_args(calibration: Any, tags: list) -> tuple:
    """(scales, shifts) per version of ``tags`` from ``{version: (scale, shift)}`` (missing
    versions: (1, 0)); ([], []) for None."""
    if calibration is None:
        return [], []
    if not isinstance(calibration, Mapping):
        raise TypeError("version_calibration must be a mapping {version: (scale, shift)}, got "
                        f"{type(calibration).__name__}")
    cal = {}
    for v, pair in calibration.items():
        tag = _check_version(v)
        if tag not in tags:
            raise ValueError(f"version_calibration[{v!r}]: calibration applies to the items a "
                             f"version query scores, and version_queries has no version {v!r}")
        try:
            a, b = (float(x) for x in pair)
        except (TypeError, ValueError):
            raise TypeError(f"version_calibration[{tag}] must be a pair of numbers (scale, "
                            f"shift), got {pair!r}") from None
        if not (np.isfinite(a) and np.isfinite(b) and a > 0):
            raise ValueError(f"version_calibration[{tag}] must have a finite scale > 0 and a "
                             f"finite shift, got ({a}, {b})")
        cal[tag] = (a, b)
    return [cal.get(t, (1.0, 0.0))[0] for t in tags], [cal.get(t, (1.0, 0.0))[1] for t in tags]


def _check_k(k: Any) -> int:
    if type(k) is int and k > 0:  # the common call, cheaply
        return k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if k <= 0:
        raise ValueError(f"k must be >= 1, got {k}")
    return int(k)


def _check_threads(threads: Any) -> int:
    if threads is None:
        return os.cpu_count() or 1
    if type(threads) is int and threads > 0:
        return threads
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise TypeError(f"threads must be an int or None, got {type(threads).__name__}")
    if threads <= 0:
        raise ValueError(f"threads must be >= 1 (or None for all cores), got {threads}")
    return int(threads)


def _check_prune(prune: Any) -> float:
    """``Index.search(prune=)`` checked: a finite number > 0 (standard deviations)."""
    if type(prune) is float and 0.0 < prune < math.inf:
        return prune
    if isinstance(prune, bool) or not isinstance(prune, (int, float, np.integer, np.floating)):
        raise TypeError(f"prune must be a number of standard deviations (or None: exact), got "
                        f"{type(prune).__name__}")
    if not (np.isfinite(prune) and prune > 0):
        raise ValueError(f"prune must be a finite number > 0 (or None: exact), got {prune!r}")
    return float(prune)


def _filter_args(value: Any, name: str):
    """(ids, mask) for one filter argument: a bool mask indexed by id, or a collection of ids."""
    if value is None:
        return None, None
    if isinstance(value, (set, frozenset)):
        value = sorted(value)
    arr = np.asarray(value)
    if arr.dtype == np.bool_:
        if arr.ndim != 1:
            raise ValueError(f"{name} mask must be 1-d (indexed by id), got shape {arr.shape}")
        return None, np.ascontiguousarray(arr)
    if arr.size == 0:
        return np.zeros(0, np.int64), None
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be a boolean mask indexed by id or a collection of int "
                        f"ids, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} ids must be 1-d, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.int64), None


class _Base:
    _core: Any
    spec: CodeSpec

    def __len__(self) -> int:
        return len(self._core)

    def __contains__(self, id_: int) -> bool:
        return int(id_) in self._core

    @property
    def ntotal(self) -> int:
        """Number of live items (same as ``len(index)``)."""
        return len(self._core)

    def ids(self) -> np.ndarray:
        """Live ids (int64), in storage order."""
        return self._core.ids()

    def remove(self, ids: Any) -> None:
        """Remove ids. ValueError (and nothing removed) if any id is not in the index."""
        arr = _check_ids(ids, "ids")
        self._core.remove(arr)

    def compact(self) -> None:
        """Drop removed slots now (also done automatically when over half are removed)."""
        self._core.compact()

    def get_codes(self, ids: Any) -> np.ndarray:
        """Packed codes (n, code_bytes) of ids; ValueError if one is absent."""
        return self._core.get_codes(_check_ids(ids, "ids"))[0]

    def _search(self, queries: Any, k: Any, threads: Any, filter: Any, exclude: Any,
                query_bits: Any = None, version_queries: Any = None,
                version_calibration: Any = None):
        return self._core.search(*self._search_args(queries, k, threads, filter, exclude,
                                                     query_bits, version_queries,
                                                     version_calibration))

    def _search_args(self, queries: Any, k: Any, threads: Any, filter: Any, exclude: Any,
                     query_bits: Any = None, version_queries: Any = None,
                     version_calibration: Any = None) -> tuple:
        """The checked positional arguments of the core's ``search``."""
        qspec = self.spec if query_bits is None else _query_spec(self.spec, query_bits)
        q = _check_codes(qspec, queries, "queries")
        k = _check_k(k)
        threads = _check_threads(threads)
        ai, am = _filter_args(filter, "filter")
        ei, em = _filter_args(exclude, "exclude")
        tags, codes = [], []
        if version_queries is not None:
            if not isinstance(version_queries, Mapping):
                raise TypeError("version_queries must be a mapping {version: packed query "
                                f"codes}}, got {type(version_queries).__name__}")
            for v, c in version_queries.items():
                tag = _check_version(v)
                if tag in tags:
                    raise ValueError(f"version_queries names version {v!r} twice (as a str "
                                     f"and as its int tag {tag})")
                tags.append(tag)
                name = f"version_queries[{v!r}]"
                codes.append(_check_codes(qspec, c, name))
                if codes[-1].shape[0] != q.shape[0]:
                    raise ValueError(f"{name} must have one row per query ({q.shape[0]}), got "
                                     f"{codes[-1].shape[0]}")
        scale, shift = _calibration_args(version_calibration, tags)
        return q, k, threads, ai, am, ei, em, qspec.bits, tags, codes, scale, shift

    # ------------------------------------------------------------------ persistence
    def _header(self) -> dict:  # pragma: no cover - overridden
        raise NotImplementedError

    def save(self, path: "os.PathLike[str] | str") -> None:
        """Write the index to ``path`` atomically (docs/FORMAT.md, section "Index file").

        Compacts first. A crash mid-save leaves any previous file at ``path`` intact. Safe
        while other threads change the index: the C++ core streams the file from its buffers
        under its shared lock (a concurrent add or remove waits for it; searches do not), so
        the file holds the index as it was at one moment, without a copy in memory.
        """
        _write_index_file(path, self._core, lambda: dict(self._header(), kind=type(self).__name__))

    def memory_bytes(self) -> int:
        """Bytes of memory the index holds: codes (unless memory-mapped), ids, versions,
        alive masks, inverse norms and the id map (docs/FORMAT.md, "Resident memory")."""
        return int(self._core.memory_bytes())

    @classmethod
    def load(cls, path: "os.PathLike[str] | str", mmap: bool = True, verify: bool = True):
        """Load an index written by ``save`` of the same class.

        ``mmap=True``: the codes are memory-mapped read-only and searched in place (not read
        into RAM); the first change that rewrites codes (``add``, ``upsert``, ``compact`` after
        removals) copies them into memory first (copy-on-write; the file is never modified,
        and ``save`` over it replaces the file while the old one stays mapped). ``remove``
        alone does not copy. ``verify``: check every section's SHA-256 (streams the file once
        through the page cache; the codes are still not loaded into the process).
        Raises ``bebr.fileio.CorruptFileError`` for truncated, corrupted or wrong-version files.
        """
        header, arrays, mm = _read_index_file(path, mmap=mmap, verify=verify, kind=cls.__name__)
        try:
            idx = cls._from_header(header)
        except CorruptFileError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:
            raise CorruptFileError(f"{path}: bad index header: {e}") from None
        _assign(idx, header, arrays, mm, path)
        return idx

    @property
    def is_mmapped(self) -> bool:
        """True while the codes are read in place from a memory-mapped file."""
        return bool(self._core.codes_external)


class Index(_Base):
    """Exact SDC search over multi-bit codes of one ``CodeSpec``, with item versions.

    ``metric="ip"``: score = inner product of the code values, exact (an integer divided by
    ``4**(bits-1)``). ``metric="cosine"``: that inner product divided by both codes' norms
    (float32, within a few ulp of the float64 value; ties at that precision may order either
    way). Larger is better.

    Every item carries a version: the model version string that made its code (``add(...,
    version=model.version)``; ``bebr.versions``), or a plain int tag (default 0). Codes of
    every version share the ``CodeSpec`` and are searched together in one pass. The index
    keeps a registry of its version strings (with lineage) and saves it in its file.
    """

    def __init__(self, spec: CodeSpec, metric: str = "ip") -> None:
        if not isinstance(spec, CodeSpec):
            raise TypeError(f"spec must be a bebr.CodeSpec, got {type(spec).__name__}")
        if metric not in _METRICS:
            raise ValueError(f"metric must be 'ip' or 'cosine', got {metric!r}")
        self.spec = spec
        self.metric = metric
        self._core = self._new_core()
        self._mmap: Optional[np.memmap] = None
        self._registry = VersionRegistry()

    def _new_core(self):
        """The compiled store of ``self.spec`` / ``self.metric`` (``IVFIndex`` overrides it)."""
        return _C.SdcIndex(self.spec.dim, self.spec.bits, self.metric)

    def __repr__(self) -> str:
        return (f"Index(CodeSpec(dim={self.spec.dim}, bits={self.spec.bits}), "
                f"metric={self.metric!r}, n={len(self)})")

    def _tag_for_write(self, version: Version) -> int:
        """The tag of ``version``, registering a version string on first use."""
        if isinstance(version, str):
            return self._registry.register(version, spec=self.spec).tag
        return _check_version(version)

    def add(self, packed: Any, ids: Any = None, version: Version = 0) -> np.ndarray:
        """Add packed codes ``(n, code_bytes)`` uint8 with int64 ids (default: continuing).

        ``version``: the model version string that made the codes (registered on first use)
        or an int tag. ValueError (and nothing added) if an id is negative, repeated, or
        already present (use ``upsert`` to replace). Returns the ids added.
        """
        codes = _check_codes(self.spec, packed, "packed")
        v = self._tag_for_write(version)
        arr = None if ids is None else _check_ids(ids, "ids", codes.shape[0])
        return self._core.add(codes, arr, v)  # without ids: assigned under the core's lock

    def upsert(self, packed: Any, ids: Any, version: Version = 0) -> None:
        """Replace the codes and version of present ids and add the absent ones."""
        codes = _check_codes(self.spec, packed, "packed")
        arr = _check_ids(ids, "ids", codes.shape[0])
        self._core.upsert(codes, arr, self._tag_for_write(version))

    def register_version(self, version: str, *, lineage: "tuple[str, ...] | list" = ()) \
            -> VersionInfo:
        """Record a version string with its lineage (parents' version ids, nearest first)
        before or after its items are added; saved with the index. Idempotent."""
        return self._registry.register(version, lineage=lineage, spec=self.spec)

    def version_info(self) -> "dict[str, VersionInfo]":
        """The registered versions: ``{version string: VersionInfo(tag, lineage, spec)}``
        (also versions whose items are all gone, until :meth:`retire_version`)."""
        return {i.version: i for i in self._registry.by_tag.values()}

    def retire_version(self, version: Version) -> None:
        """Forget a registered version once no item of it is left (ValueError otherwise)."""
        tag = _check_version(version)
        left = dict(self._core.versions()).get(tag, 0)
        if left:
            raise ValueError(f"version {version!r} still has {left} items; re-encode or "
                             f"remove them before retiring it")
        self._registry.drop(version)

    def versions(self) -> dict:
        """Number of live items per version: ``{version: count}``, keyed by the version
        string for registered versions and by the int tag otherwise."""
        return {self._registry.name_of(t): c for t, c in dict(self._core.versions()).items()}

    def ids_of_version(self, version: Version) -> np.ndarray:
        """Live ids (int64) whose version is ``version`` (e.g. to drive a backfill)."""
        return self._core.ids_of_version(_check_version(version))

    def versions_of(self, ids: Any) -> list:
        """The version of each id (version string if registered, else the int tag);
        ValueError if an id is absent."""
        tags = self._core.get_codes(_check_ids(ids, "ids"))[1]
        return [self._registry.name_of(t) for t in tags.tolist()]

    def search(self, queries: Any, k: int, threads: Optional[int] = None, filter: Any = None,
               exclude: Any = None, query_bits: Optional[int] = None,
               version_queries: Optional[Mapping[int, Any]] = None,
               version_calibration: Optional[Mapping[int, tuple]] = None, *,
               prune: Optional[float] = None):
        """Top-k of each packed query: ``(scores float32 (nq, k), ids int64 (nq, k))``.

        Best first, ties to the smaller id, tail padded with id -1 / score -inf.
        ``threads``: worker threads (None: all cores). ``filter`` / ``exclude``: see module doc.
        ``query_bits``: bits per dimension of the query codes (1..4 over 1-2-bit codes,
        1..7 over 3-4-bit codes: ``bebr.codes.max_query_bits``; default ``spec.bits``);
        queries are then packed with ``CodeSpec(spec.dim, query_bits)``. Queries are never
        stored, so they may be finer than the items (``Binarizer.encode_query_codes``);
        scores stay exact (``ip``: the inner product of the query's and the item's code
        values). Over 1-2-bit items finer queries scan slower (tools/bench_query_bits.py).
        ``version_queries``: ``{version: packed codes (nq, ...)}``: items of that version are
        scored with these codes of each query instead of ``queries`` (a new model version's
        query codes into an older version's code space, ``Binarizer.encode_query_codes(x,
        bits, target=...)``); one pass, one top-k per query over every version. With
        ``"cosine"`` each score is divided by the norm of the query code that made it.
        ``version_calibration``: ``{version: (scale, shift)}`` for versions of
        ``version_queries``: their items score ``scale * score + shift`` (scale > 0), ranked
        and returned so, putting one query's scores under different codes on one scale (a
        query head's fitted calibration, ``Binarizer.cross_calibration``); others unchanged.
        ``prune``: plane pruning over 2-bit codes (approximate; None: exact). The scan reads a
        block's high bit plane first and skips its low plane where no item of the block could
        enter a query's top-k even with its low-plane sum ``prune`` standard deviations above
        its mean under random bits (a single query scores the 8 blocks of the largest
        high-plane partial first: kernels.h SeedPicker). Returned scores stay exact; an item
        whose low plane lies further out is missed, and results may then depend on
        ``threads``. It pays where the low plane is a large share of the scan (MiniLM 192x2,
        prune 3: R10@10 0.814 vs 0.820 exact, the one-query scan about 0.7x the exact
        one's; GloVe 48x2 / 50x2: no gain, tools/bench_query_path.py). Ignored (exact) over
        1-bit or 3-4-bit codes.
        """
        args = self._search_args(queries, k, threads, filter, exclude, query_bits,
                                 version_queries, version_calibration)
        if prune is None:
            return self._core.search(*args)
        return self._core.search(*args, prune=_check_prune(prune))

    def _header(self) -> dict:
        return {"spec": self.spec.to_dict(), "metric": self.metric,
                "versions": self._registry.to_list()}

    @classmethod
    def _from_header(cls, header: dict) -> "Index":
        if header["metric"] not in _METRICS:
            raise ValueError(f"unknown metric {header['metric']!r}")
        idx = cls(CodeSpec.from_dict(header["spec"]), header["metric"])
        if header["format_version"] >= 2:
            idx._registry = VersionRegistry.from_list(header["versions"])
        return idx


class HammingIndex(_Base):
    """Hamming search over 1-bit codes of ``nbits`` bits (``CodeSpec(nbits, 1).pack``).

    Scores are Hamming distances (float32, ascending); ties go to the smaller id; the tail of
    a short result is id -1 / score +inf. Same add/remove/search shape as ``Index``.
    """

    def __init__(self, nbits: int) -> None:
        if isinstance(nbits, bool) or not isinstance(nbits, (int, np.integer)):
            raise TypeError(f"nbits must be an int, got {type(nbits).__name__}")
        self.spec = CodeSpec(int(nbits), 1)
        self.nbits = int(nbits)
        self._core = _C.SdcIndex(self.spec.dim, 1, "hamming")
        self._mmap: Optional[np.memmap] = None

    def __repr__(self) -> str:
        return f"HammingIndex(nbits={self.nbits}, n={len(self)})"

    def add(self, packed: Any, ids: Any = None) -> np.ndarray:
        """Add bit codes ``(n, ceil(nbits/8))`` uint8 (zero padding bits). Returns the ids."""
        codes = _check_codes(self.spec, packed, "packed")
        arr = None if ids is None else _check_ids(ids, "ids", codes.shape[0])
        return self._core.add(codes, arr, 0)  # without ids: assigned under the core's lock

    def search(self, queries: Any, k: int, threads: Optional[int] = None, filter: Any = None,
               exclude: Any = None):
        """Top-k smallest Hamming distances: ``(float32 (nq, k), int64 (nq, k))``."""
        return self._search(queries, k, threads, filter, exclude)

    def _header(self) -> dict:
        return {"nbits": self.nbits, "metric": "hamming"}

    @classmethod
    def _from_header(cls, header: dict) -> "HammingIndex":
        return cls(header["nbits"])


# ---------------------------------------------------------------------------- file format
_FIXED = struct.Struct("<8sII")  # magic, format version, header length


_ALIGN = 64
#: The sections of an index file, in file order, with their dtypes (docs/FORMAT.md).
_SECTIONS = {"codes": "|u1", "ids": "<i8", "versions": "<i4", "invn": "<f4"}
_WIDE = 10**19  # wider than any value an int64 field of the header takes: reserves its room


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _write_index_file(path, core, make_header) -> None:
    """Write an index file: the C++ core streams the data area (write_dense, under its shared
    lock, checksums on the way) at a data offset fixed beforehand; the header, written last
    at offset 0, is padded with spaces to the length reserved for it (n, next_id and the
    section fields reserved at 20 digits, the widest int64). make_header() gives the header's
    other keys; it is called again after the data is written (a version registered
    meanwhile is in the header; if the header then outgrows its room the file is redone)."""
    with atomic_writer(path) as f:
        for _ in range(8):
            wide = [{"name": name, "dtype": dt, "count": _WIDE, "offset": _WIDE,
                     "nbytes": _WIDE, "sha256": "0" * 64} for name, dt in _SECTIONS.items()]
            reserve = len(_header_json(make_header(), _WIDE, _WIDE, wide))
            data_start = _align(_FIXED.size + 64 + reserve)
            f.flush()
            info = core.write_dense(f.fileno(), data_start)
            hbytes = _header_json(make_header(), info["n"], info["next_id"], info["sections"])
            if len(hbytes) <= reserve:
                hbytes += b" " * (reserve - len(hbytes))
                f.seek(0)
                f.write(_FIXED.pack(_MAGIC, INDEX_FORMAT_VERSION, len(hbytes)))
                f.write(sha256_bytes(hbytes).encode())  # 64 hex chars
                f.write(hbytes)
                f.write(b"\x00" * (data_start - _FIXED.size - 64 - len(hbytes)))
                return
            f.truncate(0)  # the header outgrew its room: write the file again
        raise RuntimeError(f"{path}: the index header kept growing while saving (versions "
                           f"registered concurrently); save again")


def _header_json(base: dict, n: int, next_id: int, sections: list) -> bytes:
    header = dict(base, n=n, next_id=next_id, block=_ALIGN, format_version=INDEX_FORMAT_VERSION,
                  sections=sections)
    return json.dumps(header, sort_keys=True).encode()


def _map_section(f, dtype: np.dtype, offset: int, count: int) -> np.memmap:
    """Read-only map of ``count`` items at byte ``offset`` of the open file ``f``: the
    descriptor whose bytes were just verified, never the path again (a file atomically
    replaced in between would pair this header with another file's data)."""
    return np.memmap(f, dtype=dtype, mode="r", offset=offset, shape=(count,))


def _int_field(d: dict, key: str, where: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    if key not in d:
        raise CorruptFileError(f"{where}: missing key {key!r}")
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int):
        raise CorruptFileError(f"{where}: {key!r} must be an int, got {type(v).__name__}")
    if not lo <= v <= hi:
        raise CorruptFileError(f"{where}: {key!r} must be in [{lo}, {hi}], got {v}")
    return v


def _check_header(header: Any, path: str, kind: str, version: int) -> dict:
    """The header's structure and types (values the index checks on assign are left to it);
    CorruptFileError naming the key for anything missing or ill-typed. Returns the sections
    by name."""
    if not isinstance(header, dict) or header.get("kind") != kind \
            or header.get("format_version") != version:
        raise CorruptFileError(f"{path}: not a {kind} file of format version {version}")
    where = f"{path}: index header"
    n = _int_field(header, "n", where, 0, MAX_ID + 1)
    _int_field(header, "next_id", where, 0, MAX_ID + 1)
    if _int_field(header, "block", where) != _ALIGN:
        raise CorruptFileError(f"{where}: 'block' must be {_ALIGN}, got {header['block']}")
    if not isinstance(header.get("metric"), str):
        raise CorruptFileError(f"{where}: 'metric' must be a str, got "
                               f"{type(header.get('metric')).__name__}")
    sections = header.get("sections")
    if not isinstance(sections, list) or len(sections) != len(_SECTIONS):
        raise CorruptFileError(f"{where}: 'sections' must be a list of {len(_SECTIONS)} "
                               f"entries ({', '.join(_SECTIONS)})")
    by_name = {}
    for i, e in enumerate(sections):
        w = f"{where}: sections[{i}]"
        if not isinstance(e, dict) or set(e) != {"name", "dtype", "count", "offset", "nbytes",
                                                 "sha256"}:
            raise CorruptFileError(f"{w} must be an object with keys name, dtype, count, "
                                   f"offset, nbytes, sha256")
        name = e["name"]
        if not isinstance(name, str) or name not in _SECTIONS or name in by_name:
            raise CorruptFileError(f"{w}: unknown or repeated section name {name!r}")
        if not isinstance(e["dtype"], str) or e["dtype"] != _SECTIONS[name]:
            raise CorruptFileError(f"{w}: section {name!r} must have dtype "
                                   f"{_SECTIONS[name]!r}, got {e['dtype']!r}")
        count = _int_field(e, "count", w)
        offset = _int_field(e, "offset", w)
        nbytes = _int_field(e, "nbytes", w)
        if offset % _ALIGN or nbytes != count * np.dtype(e["dtype"]).itemsize:
            raise CorruptFileError(f"{w}: section {name!r} offset or size is inconsistent")
        sha = e["sha256"]
        if not isinstance(sha, str) or len(sha) != 64 or set(sha) - set("0123456789abcdef"):
            raise CorruptFileError(f"{w}: 'sha256' must be 64 lowercase hex digits")
        by_name[name] = e
    if by_name["ids"]["count"] != n or by_name["versions"]["count"] != n:
        raise CorruptFileError(f"{where}: ids and versions must have n = {n} entries, got "
                               f"{by_name['ids']['count']} and {by_name['versions']['count']}")
    return by_name


def _read_index_file(path, mmap: bool, verify: bool, kind: str):
    path = os.fspath(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        fixed = f.read(_FIXED.size)
        if len(fixed) < _FIXED.size:
            raise CorruptFileError(f"{path}: truncated (no header)")
        magic, version, hlen = _FIXED.unpack(fixed)
        if magic != _MAGIC:
            raise CorruptFileError(f"{path}: not a bebr index file (bad magic {magic!r})")
        if version not in _READABLE_FORMATS:
            raise CorruptFileError(f"{path}: index format version {version} is not supported "
                                   f"(this bebr reads versions {list(_READABLE_FORMATS)})")
        if _FIXED.size + 64 + hlen > size:
            raise CorruptFileError(f"{path}: truncated header")
        hsum = f.read(64)
        hbytes = f.read(hlen)
        if len(hbytes) != hlen or len(hsum) != 64:
            raise CorruptFileError(f"{path}: truncated header")
        if sha256_bytes(hbytes).encode() != hsum:
            raise CorruptFileError(f"{path}: header checksum mismatch (corrupted)")
        try:
            header = json.loads(hbytes)
        except (ValueError, RecursionError) as e:
            raise CorruptFileError(f"{path}: unreadable header: {e}") from None
        sections = _check_header(header, path, kind, version)
        data_start = _align(_FIXED.size + 64 + hlen)
        arrays = {}
        mm = None
        for name, e in sections.items():
            begin = data_start + e["offset"]
            if begin + e["nbytes"] > size:
                raise CorruptFileError(f"{path}: truncated: section {name!r} needs bytes "
                                       f"[{begin}, {begin + e['nbytes']}) but the file has {size}")
            dt = np.dtype(e["dtype"])
            use_mmap = mmap and name == "codes" and e["nbytes"] > 0
            buf = None
            if verify:
                f.seek(begin)
                h = hashlib.sha256()
                if not use_mmap:
                    buf = bytearray(e["nbytes"])
                    view = memoryview(buf)
                    if f.readinto(view) != e["nbytes"]:
                        raise CorruptFileError(f"{path}: truncated section {name!r}")
                    h.update(view)
                else:
                    left = e["nbytes"]
                    while left:
                        chunk = f.read(min(left, 1 << 22))
                        if not chunk:
                            raise CorruptFileError(f"{path}: truncated section {name!r}")
                        h.update(chunk)
                        left -= len(chunk)
                if h.hexdigest() != e["sha256"]:
                    raise CorruptFileError(f"{path}: checksum mismatch in section "
                                           f"{name!r} (corrupted)")
            if use_mmap:
                mm = _map_section(f, dt, begin, e["count"])
                arrays[name] = mm
            else:
                if not verify:
                    f.seek(begin)
                    buf = f.read(e["nbytes"])
                    if len(buf) != e["nbytes"]:
                        raise CorruptFileError(f"{path}: truncated section {name!r}")
                arrays[name] = np.frombuffer(buf, dtype=dt)  # assign_dense copies
    return header, arrays, mm


def _assign(idx, header: dict, arrays: dict, mm, path="index file") -> None:
    try:
        idx._core.assign_dense(arrays["codes"], arrays["ids"], arrays["versions"],
                               arrays["invn"], header["next_id"], mm is not None)
    except (ValueError, TypeError) as e:
        raise CorruptFileError(f"{path}: content is inconsistent: {e}") from None
    if len(idx) != header["n"]:
        raise CorruptFileError(f"{path}: item count does not match the header")
    idx._mmap = mm
