"""``Collection``: the one object a search backend holds across embedding-model upgrades.

A collection is one directory::

    collection.json          manifest (format version, metric, query bits, the current
                             version, every version's model directory and config digest,
                             calibrations, the index file and its size; for an IVF
                             collection "ivf": nlist, default nprobe, spill_lambda)
    index-<generation>.bebr  the bebr.Index (or bebr.IVFIndex, create(nlist=)) holding
                             every item's code, tagged by version
    models/<name>/           one saved model per version still in the collection
    memory-<gen>-<tag>.npz   per older version, the query memory of the current model's
                             queries into its codes (bebr.query_memory), when fitted

A version is the model's version string (``bebr.versions``). New items are encoded by the
*current* model; after :meth:`Collection.upgrade` to a new model, items of older versions
stay searchable (query heads of the new model into their code spaces, or their own model's
query codes when the backend also gives the old model's floats of the queries) while they
are re-encoded gradually (:meth:`backfill_order`, :meth:`upsert`). Every search scores each
version's items with the best query codes given for it, on one calibrated scale, in one
kernel pass; a version nothing given can search is refused, never mixed in silently.

Changes live in memory until :meth:`save`, which commits atomically: the new index file and
model directories are written under fresh names first, then the manifest is replaced in one
rename (the commit point), then files no longer referenced are removed. A crash at any point
leaves the previous or the new collection, never a mix. ``Collection.open`` checks the
manifest, each model's config digest and the index file (sizes and SHA-256 checksums of its
sections), raising :class:`bebr.fileio.CorruptFileError` for anything off.

Thread safety: searches may run concurrently with each other and with add/upsert/remove
(the index's readers-writer lock); ``upgrade``, ``retire`` and ``save`` take the
collection's own lock and must not be called while another thread mutates it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np

from .codes import CodeSpec, max_query_bits
from .fileio import CorruptFileError, atomic_write_bytes, sha256_file
from .index import Index
from .ivf import IVFIndex, _check_positive
from .query_memory import QueryMemory
from .searcher import _as_encoder
from .versions import version_tag

__all__ = ["Collection", "COLLECTION_FORMAT_VERSION", "MANIFEST_NAME"]

COLLECTION_FORMAT_VERSION = 1
MANIFEST_NAME = "collection.json"
_FORMAT = "bebr.collection"
#: Fewest paired-sample items of a version that a query head is fitted from.
MIN_HEAD_ROWS = 200
_METRICS = ("cosine", "ip")


def _model_dir_name(version: str) -> str:
    """A file-system-safe, collision-free directory name for a version string."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", version)[:48].strip("._") or "v"
    return f"{safe}-{version_tag(version):08x}"


def _load_model(path: Path):
    """Load a saved model for serving: the torch-free ``bebr.Encoder`` (same codes as the
    torch ``Binarizer``), so opening and searching a collection needs no torch."""
    from .jobs import load_model

    return load_model(path, "encoder")


def _model_version(model) -> str:
    v = getattr(model, "version", None)
    if not isinstance(v, str) or not v:
        raise TypeError(f"model must be a bebr Binarizer (with a version string), got "
                        f"{type(model).__name__}")
    return v


def _float_rows(x: Any, name: str, in_dim: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"{name} must be a real numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != in_dim:
        raise ValueError(f"{name} must have shape (n, {in_dim}) (the model's input dim), got "
                         f"{arr.shape}")
    return arr


class Collection:
    """Items of several model versions in one index, one directory on disk.

    Create with :meth:`create`, reopen with :meth:`open`. ``add``/``upsert`` take float rows
    of the current model (``add_codes``/``upsert_codes`` take codes encoded elsewhere);
    ``search`` takes float queries of the current model and optionally the same queries'
    floats from older models (``older={version: floats}``).
    """

    def __init__(self, path: Path, manifest: dict, index: Index, models: Dict[str, Any]):
        self.path = path
        self._manifest = manifest
        self._index = index
        self._models = models  # version -> loaded model (lazily filled)
        self._new_models: Dict[str, Any] = {}  # version -> model to write at the next save
        self._memories: Dict[str, QueryMemory] = {}  # version -> loaded query memory
        self._new_memories: Dict[str, QueryMemory] = {}  # version -> memory to write at save
        self._counts: Optional[Dict[str, int]] = None  # live counts, None after a change
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ create / open
    @classmethod
    def create(cls, path: "os.PathLike[str] | str", model, metric: str = "cosine", *,
               query_bits: Optional[int] = None, nlist: Optional[int] = None,
               nprobe: Optional[int] = None,
               spill_lambda: Optional[float] = None) -> "Collection":
        """A new, empty collection at ``path`` (which must not exist or be an empty
        directory) serving ``model`` (a trained ``bebr.Binarizer``). ``metric``: "cosine"
        or "ip". ``query_bits``: bits of the query codes every search uses (default: the
        finest the kernel scores exactly over the model's codes, ``max_query_bits``); the
        calibrations are fitted for exactly this setting.

        ``nlist``: hold the items in a ``bebr.IVFIndex`` of that many lists instead of a
        flat ``bebr.Index`` (``spill_lambda``: its SOAR spilled assignment); its coarse
        centroids are trained on the codes of the first add (which must then hold at least
        ``nlist`` rows); ``nprobe``: the lists a search probes unless it says otherwise
        (default ``max(1, nlist // 16)``). Every version's items are assigned by their own
        codes and probed with that version's query codes. Saved at once."""
        p = Path(path)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise ValueError(f"{p} exists and is not an empty directory")
        version = _model_version(model)
        if metric not in _METRICS:
            raise ValueError(f"metric must be 'cosine' or 'ip', got {metric!r}")
        spec = model.spec
        top = max_query_bits(spec.bits)
        qb = top if query_bits is None else query_bits
        if isinstance(qb, bool) or not isinstance(qb, (int, np.integer)) or not 1 <= qb <= top:
            raise ValueError(f"query_bits must be an int in [1, {top}] over {spec.bits}-bit "
                             f"codes, got {query_bits!r}")
        ivf = None
        if nlist is not None or nprobe is not None or spill_lambda is not None:
            if nlist is None:
                raise ValueError("nprobe and spill_lambda apply to an IVF collection: pass nlist")
            nl = _check_positive(nlist, "nlist")
            npb = max(1, nl // 16) if nprobe is None else _check_positive(nprobe, "nprobe")
            ivf = {"nlist": nl, "nprobe": npb, "spill_lambda": None}
            index = IVFIndex(spec, nl, metric, spill_lambda=spill_lambda)  # checks spill_lambda
            ivf["spill_lambda"] = index.spill_lambda
        else:
            index = Index(spec, metric)
        manifest = {
            "format": _FORMAT, "format_version": COLLECTION_FORMAT_VERSION,
            "metric": metric, "spec": spec.to_dict(), "query_bits": int(qb),
            "current": version, "generation": 0, "index": None,
            "versions": [{"version": version, "model": f"models/{_model_dir_name(version)}",
                          "config_sha256": None, "lineage": []}],
            "own_calibration": {}, "joint_weight": {}, "merge_calibration": {},
            "query_memory": {},
        }
        if ivf is not None:
            manifest["ivf"] = ivf
        index.register_version(version)
        p.mkdir(parents=True, exist_ok=True)
        coll = cls(p, manifest, index, {version: model})
        coll._new_models[version] = model
        coll.save()
        return coll

    @classmethod
    def open(cls, path: "os.PathLike[str] | str", *, mmap: bool = True,
             verify: bool = True) -> "Collection":
        """Open a collection saved by :meth:`save`. ``mmap``: the index codes are searched
        in place from the file (copied on the first change); ``verify``: check the index
        sections' checksums. CorruptFileError for a damaged or inconsistent directory."""
        p = Path(path)
        mpath = p / MANIFEST_NAME
        if not mpath.is_file():
            raise FileNotFoundError(f"{p} is not a bebr collection (no {MANIFEST_NAME})")
        manifest = _read_manifest(mpath)
        for entry in manifest["versions"]:
            cfg = p / entry["model"] / "config.json"
            if not cfg.is_file():
                raise CorruptFileError(f"{mpath}: model of version {entry['version']!r} is "
                                       f"missing ({cfg})")
            if sha256_file(cfg) != entry["config_sha256"]:
                raise CorruptFileError(f"{cfg}: config digest does not match the manifest")
        ipath = p / manifest["index"]["file"]
        if not ipath.is_file() or ipath.stat().st_size != manifest["index"]["bytes"]:
            raise CorruptFileError(f"{mpath}: index file {ipath.name} is missing or has the "
                                   f"wrong size")
        ivf = manifest.get("ivf")
        index = (IVFIndex if ivf else Index).load(ipath, mmap=mmap, verify=verify)
        if ivf and (not isinstance(index, IVFIndex) or index.nlist != ivf["nlist"]):
            raise CorruptFileError(f"{ipath}: the manifest says an IVF index of {ivf['nlist']} "
                                   f"lists, the file holds {index!r}")
        if not ivf and type(index) is not Index:
            raise CorruptFileError(f"{ipath}: the manifest says a flat index, the file holds "
                                   f"{type(index).__name__}")
        spec = CodeSpec.from_dict(manifest["spec"])
        if index.spec != spec or index.metric != manifest["metric"]:
            raise CorruptFileError(f"{ipath}: index holds {index.spec} / {index.metric}, the "
                                   f"manifest says {spec} / {manifest['metric']}")
        known = {e["version"] for e in manifest["versions"]}
        stray = [v for v in index.versions() if v not in known]
        if stray:
            raise CorruptFileError(f"{ipath}: items of versions {stray} the manifest does "
                                   f"not list")
        for v, e in manifest["query_memory"].items():
            f = p / e["file"]
            if not f.is_file() or f.stat().st_size != e["bytes"]:
                raise CorruptFileError(f"{mpath}: query memory {f.name} of version {v!r} is "
                                       f"missing or has the wrong size")
            if verify and sha256_file(f) != e["sha256"]:
                raise CorruptFileError(f"{f}: checksum does not match the manifest")
        coll = cls(p, manifest, index, {})
        model = coll._model(manifest["current"])
        if model.spec != spec or model.version != manifest["current"]:
            raise CorruptFileError(f"{p}: the current model is {model.version!r} making "
                                   f"{model.spec} codes, the manifest says "
                                   f"{manifest['current']!r} / {spec}")
        return coll

    # ------------------------------------------------------------------ properties
    @property
    def current(self) -> str:
        """Version string of the current model (the one new items and queries use)."""
        return self._manifest["current"]

    @property
    def model(self):
        """The current model."""
        return self._model(self.current)

    @property
    def spec(self) -> CodeSpec:
        return self._index.spec

    @property
    def metric(self) -> str:
        return self._manifest["metric"]

    @property
    def query_bits(self) -> int:
        return self._manifest["query_bits"]

    @property
    def nlist(self) -> Optional[int]:
        """Lists of the collection's IVF index; None for a flat index."""
        ivf = self._manifest.get("ivf")
        return ivf["nlist"] if ivf else None

    @property
    def nprobe(self) -> Optional[int]:
        """Lists a search probes by default (IVF collections); None for a flat index."""
        ivf = self._manifest.get("ivf")
        return ivf["nprobe"] if ivf else None

    @property
    def index(self) -> Index:
        """The underlying index (read it; change items through the collection)."""
        return self._index

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return (f"Collection({str(self.path)!r}, current={self.current!r}, n={len(self)}, "
                f"versions={self.versions()})")

    def versions(self) -> Dict[str, int]:
        """Live items per version string (every version of the collection, 0 if none)."""
        live = self._index.versions()
        return {e["version"]: int(live.get(e["version"], 0)) for e in self._manifest["versions"]}

    def lineage(self, version: Optional[str] = None) -> Tuple[str, ...]:
        """Version ids ``version`` (default: current) was upgraded from, nearest first."""
        return tuple(self._entry(version or self.current)["lineage"])

    def _entry(self, version: str) -> dict:
        for e in self._manifest["versions"]:
            if e["version"] == version:
                return e
        raise ValueError(f"version {version!r} is not in the collection; it has "
                         f"{[e['version'] for e in self._manifest['versions']]}")

    def _model(self, version: str):
        if version not in self._models:
            self._models[version] = _load_model(self.path / self._entry(version)["model"])
        return self._models[version]

    def _memory(self, version: str) -> Optional[QueryMemory]:
        """The current model's query memory into ``version``'s codes (None if not fitted)."""
        e = self._manifest.get("query_memory", {}).get(version)
        if e is None:
            return None
        if version not in self._memories:
            f = self.path / e["file"]
            data = f.read_bytes()
            if hashlib.sha256(data).hexdigest() != e["sha256"]:
                raise CorruptFileError(f"{f}: checksum does not match the manifest")
            self._memories[version] = QueryMemory.from_bytes(
                data, self.spec, k=e["k"], tau=e["tau"], weight=e["weight"],
                calibration=tuple(e["calibration"]), where=str(f))
        return self._memories[version]

    # ------------------------------------------------------------------ items
    def _train_on(self, codes: Any) -> None:
        """IVF collections: train the coarse centroids on the first codes that arrive
        (ValueError, nothing changed, if they are fewer than nlist)."""
        idx = self._index
        if not isinstance(idx, IVFIndex) or idx.is_trained:
            return
        arr = np.asarray(codes)
        if arr.ndim != 2 or arr.shape[0] < idx.nlist:
            n = arr.shape[0] if arr.ndim == 2 else 0
            raise ValueError(f"the first add of an IVF collection trains its {idx.nlist} coarse "
                             f"centroids and must hold at least {idx.nlist} rows, got {n}")
        idx.train(arr)

    def add(self, x: Any, ids: Any = None) -> np.ndarray:
        """Encode float rows of the current model and add them (ids default: continuing;
        ValueError if an id is present: use :meth:`upsert`). Returns the ids."""
        m = self.model
        codes = m.encode(_float_rows(x, "x", m.in_dim))
        self._counts = None
        self._train_on(codes)
        out = self._index.add(codes, ids, version=self.current)
        self._counts = None
        return out

    def upsert(self, x: Any, ids: Any) -> None:
        """Encode float rows of the current model and replace (or add) these ids: the hot
        refresh of items of older versions."""
        m = self.model
        self._counts = None
        codes = m.encode(_float_rows(x, "x", m.in_dim))
        self._train_on(codes)
        self._index.upsert(codes, ids, version=self.current)
        self._counts = None

    def add_codes(self, codes: Any, ids: Any = None, *, version: str) -> np.ndarray:
        """Add packed codes made elsewhere (an offline ``bebr encode`` job) by the model of
        ``version``, which must be a version of the collection."""
        self._entry(version)
        self._counts = None
        self._train_on(codes)
        out = self._index.add(codes, ids, version=version)
        self._counts = None
        return out

    def upsert_codes(self, codes: Any, ids: Any, *, version: str) -> None:
        """Replace (or add) ids with packed codes made by the model of ``version``."""
        self._entry(version)
        self._counts = None
        self._train_on(codes)
        self._index.upsert(codes, ids, version=version)
        self._counts = None

    def remove(self, ids: Any) -> None:
        """Remove ids (ValueError, nothing removed, if one is absent)."""
        self._counts = None
        self._index.remove(ids)
        self._counts = None

    # ------------------------------------------------------------------ search
    def search(self, x: Any, k: int, *, older: Optional[Mapping[str, Any]] = None,
               filter: Any = None, exclude: Any = None, threads: Optional[int] = None,
               nprobe: Optional[int] = None):
        """Top-k of float queries ``x`` of the current model over every version's items:
        ``(scores float32 (nq, k), ids int64 (nq, k))``, best first (Index.search's order,
        ties and padding).

        Items of the current version are scored with the current model's query codes of
        ``x``. Items of an older version ``v`` are scored, when ``older[v]`` (the same
        queries embedded by ``v``'s model, row for row) is given, with the joint query of
        both floats fitted at :meth:`upgrade` (:func:`joint_query_codes`; the old model's
        own query codes where that measured best), else with the current model's query head
        into ``v``'s codes, joined by its query memory where one was fitted
        (:mod:`bebr.query_memory`); each with the calibration fitted for that setting at
        :meth:`upgrade` / :meth:`calibrate`, so one top-k merges them.
        ValueError if a version with items has neither (nothing is mixed in silently).
        ``nprobe`` (IVF collections only; default :attr:`nprobe`): the lists each version's
        query codes probe (``nlist``: every list, the flat index's results).
        """
        m = self.model
        x = _float_rows(x, "x", m.in_dim)
        older = dict(older or {})
        for v in older:
            if v == self.current:
                raise ValueError(f"older[{v!r}]: that is the current version; pass its "
                                 f"queries as x")
            self._entry(v)
        qb = self.query_bits
        q = m.encode_query_codes(x, qb)
        own_cal = self._manifest["own_calibration"]
        heads = set(m.config.cross_versions)
        vq, cal = {}, {}
        # the manifest's versions, not the index's live counts: counting scans every item
        # (hundreds of us per query at 100k items); counts are read only to refuse a version
        for v in [e["version"] for e in self._manifest["versions"]]:
            if v == self.current:
                continue
            if v in older:
                if v not in own_cal:
                    raise ValueError(f"no calibration for version {v!r}'s own queries: pass "
                                     f"that model's floats of the paired sample to upgrade("
                                     f"older={{{v!r}: ...}}), or search without older[{v!r}] "
                                     f"(the current model's query head)")
                ov = self._model(v)
                xo = _float_rows(older[v], f"older[{v!r}]", ov.in_dim)
                if xo.shape[0] != x.shape[0]:
                    raise ValueError(f"older[{v!r}] must hold the same {x.shape[0]} queries, "
                                     f"got {xo.shape[0]} rows")
                w = self._manifest.get("joint_weight", {}).get(v, 0.0)
                vq[v] = joint_query_codes(ov, xo, m if w else None, x, v, w, qb)
                cal[v] = self._merge_calibration(v)
            elif v in heads:
                mem = self._memory(v)
                if mem is None:
                    vq[v] = m.encode_query_codes(x, qb, target=v)
                    cal[v] = m.cross_calibration(v, self.metric)
                else:
                    vq[v] = mem.query_codes(_as_encoder(m).encode_query(x, target=v), q, qb,
                                            threads=threads)
                    cal[v] = mem.calibration
            else:
                count = self._index.versions().get(v, 0)
                if not count:
                    continue
                raise ValueError(f"{count} items of version {v!r} cannot be searched: the "
                                 f"current model {self.current!r} has no query head for it "
                                 f"and older={{{v!r}: ...}} was not given; upgrade() fits "
                                 f"heads, upsert() re-encodes items")
        kw = {}
        if isinstance(self._index, IVFIndex):
            kw["nprobe"] = self.nprobe if nprobe is None else nprobe
            if not self._index.is_trained:  # nothing added yet: the empty result
                return Index(self.spec, self.metric).search(q, k, threads=threads,
                                                            query_bits=qb)
        elif nprobe is not None:
            raise ValueError("nprobe applies to IVF collections (Collection.create(nlist=...)); "
                             "this collection holds a flat index")
        return self._index.search(q, k, threads=threads, filter=filter, exclude=exclude,
                                  query_bits=qb, version_queries=vq or None,
                                  version_calibration=cal or None, **kw)

    def _live_counts(self) -> Dict[str, int]:
        counts = self._counts
        if counts is None:  # one scan after each change, not one per search
            counts = self._counts = dict(self._index.versions())
        return counts

    def _merge_calibration(self, version: str) -> tuple:
        """(scale, shift) of ``version``'s own-query scores for the collection's present
        state: the entry of its merge table (fitted at upgrade / calibrate) nearest to the
        share of the current version's items among the two versions' items; the single
        own-query calibration where no table was fitted (collections of earlier bebr) or
        where items of another older version are live too (a table is fitted for one older
        version merged with the current one; GloVe -> MiniLM -> MPNet with both older
        versions live scored lower with the tables at r = 0.5 / 0.7, BENCHMARKS.md 3b)."""
        table = self._manifest.get("merge_calibration", {}).get(version)
        if not table:
            return tuple(self._manifest["own_calibration"][version])
        live = self._live_counts()
        if any(c and v not in (version, self.current) for v, c in live.items()):
            return tuple(self._manifest["own_calibration"][version])
        n_cur, n_v = live.get(self.current, 0), live.get(version, 0)
        r = n_cur / (n_cur + n_v) if n_cur + n_v else 0.0
        _, a, b = min(table, key=lambda e: (abs(e[0] - r), e[0]))
        return (float(a), float(b))

    # ------------------------------------------------------------------ upgrade
    def upgrade(self, new_model, x_new: Any, ids: Any, *,
                older: Optional[Mapping[str, Any]] = None, max_time_s: Optional[float] = None,
                members: int = 3, seed: int = 0, progress: bool = True,
                joint_query: bool = False,
                head_options: Optional[Mapping[str, Any]] = None) -> dict:
        """Make ``new_model`` (a trained ``bebr.Binarizer`` with the collection's code spec)
        the current model, and fit what it needs to search every version still present.

        ``x_new`` (n, D_new): the new model's floats of a paired sample of stored items
        ``ids`` (n,). From those floats and the items' *stored codes* alone, a query head of
        the new model into each older version's codes is fitted (``train_cross_queries``
        with ``members`` ensemble members, calibrated for the collection's query bits and
        metric; at least MIN_HEAD_ROWS sample items of that version are needed).
        ``older``: optionally ``{version: floats}`` of the same sample rows from older
        models (rows of items of other versions are ignored); then the *joint query* of
        that version is fitted too, so ``search(older=...)`` can use both floats of a query:
        by default (``joint_query=False``) the old model's own query codes with their
        calibration onto the new scale, which leave the old items' ranking as the old system
        had it; with ``joint_query=True`` the direction ``unit(old model's query) + w *
        unit(new model's head)``, ``w`` of :data:`JOINT_WEIGHTS` (0: the old query alone)
        chosen on the rows held out of the head's training. The joint query is opt-in
        because it measured both ways (BENCHMARKS.md section 3b, R10@10 before any item is
        re-encoded): MiniLM -> MPNet 0.380 / 0.425 against 0.359 / 0.382 for the old queries
        alone (128x2 / 256x2), but GloVe -> MiniLM 0.038 against 0.064, where the held-out
        rows (rarer words than the gallery's) chose a weight that hurt.
        For the searches that give the new floats alone, each older version also gets a
        *query memory* (:mod:`bebr.query_memory`): the sample rows' new and stored codes,
        whose nearest rows' old codes join the head's direction, its setting chosen on the
        held-out rows against the head alone (none is kept where it does not beat it).
        ``max_time_s`` bounds the whole call (TimeoutError, nothing changed, if it cannot
        fit a head in time). ``head_options``: further keyword arguments of
        ``train_cross_queries`` (epochs, negatives, teacher, threads, ...). Saves the
        collection. Returns a report (per version: rows, head validation recall,
        calibrations, query memory; seconds).
        """
        from .compat import train_cross_queries

        t0 = time.monotonic()
        with self._lock:
            version = _model_version(new_model)
            if any(e["version"] == version for e in self._manifest["versions"]):
                raise ValueError(f"version {version!r} is already in the collection")
            if new_model.spec != self.spec:
                raise ValueError(f"the new model makes {new_model.spec} codes, the "
                                 f"collection holds {self.spec}")
            xn = _float_rows(x_new, "x_new", new_model.in_dim)
            ids = np.asarray(ids)
            if ids.ndim != 1 or ids.shape[0] != xn.shape[0] or ids.dtype.kind not in "iu":
                raise ValueError(f"ids must be 1-d ints, one per row of x_new "
                                 f"({xn.shape[0]}), got shape {ids.shape} dtype {ids.dtype}")
            ids = ids.astype(np.int64)
            if len(np.unique(ids)) != len(ids):
                raise ValueError("ids of the paired sample must be distinct")
            try:
                codes = self._index.get_codes(ids)  # one lookup pass; refuses absent ids
            except ValueError:
                missing = ids[~np.isin(ids, self._index.ids())][:5].tolist()
                if not missing:
                    raise
                raise ValueError(f"the paired sample names ids not in the collection, e.g. "
                                 f"{missing}") from None
            if max_time_s is not None and not max_time_s > 0:
                raise ValueError(f"max_time_s must be > 0 or None, got {max_time_s!r}")
            if not isinstance(joint_query, bool):
                raise TypeError(f"joint_query must be a bool, got {type(joint_query).__name__}")
            head_options = dict(head_options or {})
            fixed = {"query_bits", "members", "seed", "max_time_s", "progress", "calibrate"}
            if fixed & set(head_options):
                raise ValueError(f"head_options may not set {sorted(fixed & set(head_options))}"
                                 f": they are upgrade()'s own settings")
            older = dict(older or {})
            for v, xo in older.items():
                ov = self._model(self._entry(v)["version"])
                xo = _float_rows(xo, f"older[{v!r}]", ov.in_dim)
                if xo.shape[0] != xn.shape[0]:
                    raise ValueError(f"older[{v!r}] must hold the sample's {xn.shape[0]} "
                                     f"rows, got {xo.shape[0]}")
            of = np.asarray(self._index.versions_of(ids), dtype=object)
            present = [v for v, c in self._index.versions().items() if c]
            rows = {v: np.flatnonzero(of == v) for v in present}
            short = {v: len(r) for v, r in rows.items() if len(r) < MIN_HEAD_ROWS}
            if short:
                raise ValueError(f"the paired sample has too few items of versions {short} "
                                 f"to fit query heads (need >= {MIN_HEAD_ROWS} each)")
            report = {"version": version, "heads": {}, "own_calibration": {},
                      "joint_query": {}, "merge_calibration": {}, "query_memory": {}}
            for i, v in enumerate(present):
                r = rows[v]
                share = None  # this version's head: an equal share of the time left
                if max_time_s is not None:
                    left = max_time_s - (time.monotonic() - t0)
                    if left <= 1.0:
                        raise TimeoutError(f"upgrade ran out of its {max_time_s} s before "
                                           f"fitting the head into {v!r}; nothing changed")
                    share = left / (len(present) - i) * (0.8 if v in older else 0.9)
                train_cross_queries(new_model, xn[r], codes[r], v, query_bits=self.query_bits,
                                    members=members, seed=seed, max_time_s=share,
                                    progress=progress, **head_options)
                info = new_model.train_info["cross_val"][v]
                report["heads"][v] = {"rows": int(len(r)), "val_r10@10": info["best_r10@10"],
                                      "calibration": list(new_model.cross_calibration(
                                          v, self.metric))}
            val_fraction = head_options.get("val_fraction", 0.05)
            new_own_cal, new_joint, new_merge = self._fit_own(
                new_model, xn, codes, rows, older, joint_query, seed, val_fraction, report)
            memories = self._fit_memories(new_model, xn, codes, rows, seed, val_fraction,
                                          report)
            prev = self.current
            self._manifest["versions"].append({
                "version": version, "model": f"models/{_model_dir_name(version)}",
                "config_sha256": None, "lineage": [prev] + list(self._entry(prev)["lineage"])})
            self._manifest["current"] = version
            self._manifest["own_calibration"] = new_own_cal
            self._manifest["joint_weight"] = new_joint
            self._manifest["merge_calibration"] = new_merge
            self._manifest["query_memory"] = {}  # the previous model's, for its own heads
            self._memories.clear()
            self._new_memories.clear()
            self._set_memories(memories)
            self._index.register_version(version, lineage=self.lineage(version))
            self._models[version] = new_model
            self._new_models[version] = new_model
            self.save()
            report["seconds"] = time.monotonic() - t0
            return report

    def _fit_own(self, new_model, xn, codes, rows, older, joint_query, seed, val_fraction,
                 report) -> tuple:
        """Per older version of ``older`` with sample rows: the joint query's weight, the
        calibration of its scores (:func:`_fit_joint_query`) and the merge table
        (:func:`_fit_merge_table`), filled into ``report``."""
        own_cal, joint, merge = {}, {}, {}
        for v, r in rows.items():
            if v not in older or v == _model_version(new_model):
                continue
            old = self._model(v)
            xo = np.asarray(older[v])[r]
            w, cal, scores = _fit_joint_query(
                new_model, old, v, xn[r], xo, codes[r], self.query_bits, self.metric, seed,
                val_fraction, JOINT_WEIGHTS if joint_query else (0.0,))
            table, curves = _fit_merge_table(new_model, old, v, xn[r], xo, codes[r], w, cal,
                                             self.query_bits, self.metric, seed, val_fraction)
            own_cal[v], joint[v], merge[v] = list(cal), w, table
            report["own_calibration"][v] = list(cal)
            report["joint_query"][v] = {"weight": w, "val_r10@10": scores}
            report["merge_calibration"][v] = {"table": table, "val": curves}
        return own_cal, joint, merge

    def _fit_memories(self, new_model, xn, codes, rows, seed, val_fraction, report) -> dict:
        """Per older version with sample rows and a head of ``new_model``: its query memory
        (:func:`_fit_query_memory`; None where it measured no gain), filled into
        ``report["query_memory"]``."""
        heads = set(new_model.config.cross_versions)
        out = {}
        for v, r in rows.items():
            if v == _model_version(new_model) or v not in heads:
                continue
            mem, rep = _fit_query_memory(new_model, v, xn[r], codes[r], self.query_bits,
                                         self.metric, seed, val_fraction)
            out[v] = mem
            report["query_memory"][v] = rep
        return out

    def _set_memories(self, memories: Mapping[str, Optional[QueryMemory]]) -> None:
        """Install fitted memories (None: drop that version's), written at the next save."""
        table = self._manifest.setdefault("query_memory", {})
        for v, mem in memories.items():
            self._memories.pop(v, None)
            self._new_memories.pop(v, None)
            table.pop(v, None)
            if mem is not None:
                table[v] = {"file": None, "bytes": 0, "sha256": None, "rows": len(mem),
                            "k": mem.k, "tau": mem.tau, "weight": mem.weight,
                            "calibration": list(mem.calibration)}
                self._memories[v] = self._new_memories[v] = mem

    def calibrate(self, x_new: Any, ids: Any, *, older: Optional[Mapping[str, Any]] = None,
                  joint_query: bool = False, seed: int = 0,
                  val_fraction: float = 0.05) -> dict:
        """Refit, from a paired sample, how searches score the items of older versions,
        without touching the query heads: for each version of ``older``, the joint-query
        weight (``joint_query``, as in :meth:`upgrade`) and the calibration of its scores
        onto the current model's scale (``search(older=...)``); for each version with a head
        and at least MIN_HEAD_ROWS items in the sample, its query memory (searches without
        its floats); each replacing what :meth:`upgrade` fitted.

        ``x_new`` (n, D): the current model's floats of stored items ``ids``; ``older``:
        ``{version: floats}`` of the same rows from that version's model (rows of items of
        other versions are ignored; at least MIN_HEAD_ROWS items of each version given are
        needed). ``seed`` / ``val_fraction``: the held-out split
        (:func:`bebr.compat.head_split`), as the upgrade's heads used. Saves the collection.
        Returns the report's ``own_calibration``, ``joint_query``, ``merge_calibration``
        and ``query_memory`` entries."""
        with self._lock:
            m = self.model
            xn = _float_rows(x_new, "x_new", m.in_dim)
            ids = np.asarray(ids)
            if ids.ndim != 1 or ids.shape[0] != xn.shape[0] or ids.dtype.kind not in "iu":
                raise ValueError(f"ids must be 1-d ints, one per row of x_new "
                                 f"({xn.shape[0]}), got shape {ids.shape} dtype {ids.dtype}")
            if not isinstance(joint_query, bool):
                raise TypeError(f"joint_query must be a bool, got {type(joint_query).__name__}")
            older = dict(older or {})
            for v, xo in older.items():
                if v == self.current:
                    raise ValueError(f"older[{v!r}]: that is the current version")
                xo = _float_rows(xo, f"older[{v!r}]", self._model(self._entry(v)["version"]).in_dim)
                if xo.shape[0] != xn.shape[0]:
                    raise ValueError(f"older[{v!r}] must hold the sample's {xn.shape[0]} "
                                     f"rows, got {xo.shape[0]}")
            ids = ids.astype(np.int64)
            codes = self._index.get_codes(ids)
            of = np.asarray(self._index.versions_of(ids), dtype=object)
            rows = {v: np.flatnonzero(of == v) for v in older}
            short = {v: len(r) for v, r in rows.items() if len(r) < MIN_HEAD_ROWS}
            if short:
                raise ValueError(f"the paired sample has too few items of versions {short} "
                                 f"(need >= {MIN_HEAD_ROWS} each)")
            headed = {v: np.flatnonzero(of == v) for v in m.config.cross_versions}
            headed = {v: r for v, r in headed.items() if len(r) >= MIN_HEAD_ROWS}
            if not older and not headed:
                raise ValueError(f"nothing to refit: older names no version and the sample "
                                 f"has fewer than {MIN_HEAD_ROWS} items of every version the "
                                 f"current model has a head for")
            report = {"own_calibration": {}, "joint_query": {}, "merge_calibration": {},
                      "query_memory": {}}
            own_cal, joint, merge = self._fit_own(m, xn, codes, rows, older, joint_query, seed,
                                                  val_fraction, report)
            memories = self._fit_memories(m, xn, codes, headed, seed, val_fraction, report)
            self._manifest["own_calibration"].update(own_cal)
            self._manifest.setdefault("joint_weight", {}).update(joint)
            self._manifest.setdefault("merge_calibration", {}).update(merge)
            self._set_memories(memories)
            self.save()
            return report

    # ------------------------------------------------------------------ backfill
    def backfill_order(self, n: int, strategy: str = "random", *, seed: int = 0) -> np.ndarray:
        """Up to ``n`` ids of items not of the current version, in the order to re-encode
        them (``upsert`` with the current model's floats). ``"random"``: a seeded uniform
        order. ``"uncertainty"`` (RACT's order): items whose stored codes are least certain
        first; a code's uncertainty is the share of its dimensions at the inner levels
        (values of magnitude below 1: the projection fell near a sign boundary), so it
        needs multi-bit codes; ties in seeded random order."""
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ValueError(f"n must be an int >= 0, got {n!r}")
        if strategy not in ("random", "uncertainty"):
            raise ValueError(f"strategy must be 'random' or 'uncertainty', got {strategy!r}")
        stale = [self._index.ids_of_version(v) for v, c in self._index.versions().items()
                 if c and v != self.current]
        cand = np.sort(np.concatenate(stale)) if stale else np.zeros(0, np.int64)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(cand))
        if strategy == "uncertainty":
            if self.spec.bits < 2:
                raise ValueError("strategy='uncertainty' needs multi-bit codes; 1-bit codes "
                                 "carry no certainty")
            inner = np.empty(len(cand), np.float32)
            for s in range(0, len(cand), 65536):
                vals = self.spec.values(self._index.get_codes(cand[s:s + 65536]))
                inner[s:s + 65536] = (np.abs(vals) < 1).mean(1)
            order = order[np.argsort(-inner[order], kind="stable")]
        return cand[order[:int(n)]]

    def retire(self, version: str) -> None:
        """Drop an older version once no item of it is left (its model is deleted at the
        next save). ValueError for the current version or one that still has items."""
        with self._lock:
            entry = self._entry(version)
            if version == self.current:
                raise ValueError(f"{version!r} is the current version")
            self._index.retire_version(version)
            self._manifest["versions"].remove(entry)
            self._manifest["own_calibration"].pop(version, None)
            self._manifest.get("joint_weight", {}).pop(version, None)
            self._manifest.get("merge_calibration", {}).pop(version, None)
            self._set_memories({version: None})
            self._models.pop(version, None)
            self.save()

    # ------------------------------------------------------------------ persistence
    def save(self) -> None:
        """Commit the collection atomically (module docstring): new files first, then the
        manifest in one rename, then unreferenced files removed."""
        with self._lock:
            man = json.loads(json.dumps(self._manifest))
            gen = int(man["generation"]) + 1
            for v, model in list(self._new_models.items()):
                entry = next(e for e in man["versions"] if e["version"] == v)
                final = self.path / entry["model"]
                tmp = self.path / "models" / f".tmp-{gen}-{_model_dir_name(v)}"
                if tmp.exists():
                    shutil.rmtree(tmp)
                _save_model(model, tmp)
                if final.exists():
                    shutil.rmtree(final)
                os.replace(tmp, final)
            for e in man["versions"]:
                e["config_sha256"] = sha256_file(self.path / e["model"] / "config.json")
            for v, mem in list(self._new_memories.items()):
                data = mem.to_bytes()
                fname = f"memory-{gen:06d}-{version_tag(v):08x}.npz"
                atomic_write_bytes(self.path / fname, data)
                man["query_memory"][v].update(file=fname, bytes=len(data),
                                              sha256=hashlib.sha256(data).hexdigest())
            name = f"index-{gen:06d}.bebr"
            self._index.save(self.path / name)
            man["generation"] = gen
            man["index"] = {"file": name, "bytes": (self.path / name).stat().st_size}
            atomic_write_bytes(self.path / MANIFEST_NAME,
                               (json.dumps(man, indent=2, sort_keys=True) + "\n").encode())
            self._manifest = man
            self._new_models.clear()
            self._new_memories.clear()
            self._collect_garbage()

    def _collect_garbage(self) -> None:
        keep_models = {Path(e["model"]).name for e in self._manifest["versions"]}
        for f in self.path.glob("index-*.bebr"):
            if f.name != self._manifest["index"]["file"]:
                f.unlink(missing_ok=True)
        keep_memories = {e["file"] for e in self._manifest.get("query_memory", {}).values()}
        for f in self.path.glob("memory-*.npz"):
            if f.name not in keep_memories:
                f.unlink(missing_ok=True)
        mdir = self.path / "models"
        if mdir.is_dir():
            for d in mdir.iterdir():
                if d.name not in keep_models:
                    shutil.rmtree(d, ignore_errors=True)


def _save_model(model, path: Path) -> None:
    """Save ``model`` (anything with ``save(dir)``, or a saved model directory) to ``path``."""
    if isinstance(model, (str, os.PathLike)):
        shutil.copytree(model, path)
    else:
        model.save(path)


#: Weights w tried for the joint query unit(own old query) + w * unit(head direction); 0 is
#: the old model's own query alone.
JOINT_WEIGHTS = (0.0, 0.5, 1.0, 2.0)


def joint_query_codes(old, x_old, new, x_new, version: str, weight: float,
                      query_bits: int) -> np.ndarray:
    """Packed ``query_bits``-bit query codes into ``version``'s code space from both models'
    floats of the same queries: the direction ``unit(old query projection) + weight *
    unit(new model's head into version)``, quantized like any query (closest code in
    angle). ``weight`` 0 (``new`` may then be None): the old model's own query codes."""
    if not weight:
        return old.encode_query_codes(x_old, query_bits)
    z = _unit(np.asarray(_as_encoder(old).encode_query(x_old), np.float64))
    z += weight * _unit(np.asarray(_as_encoder(new).encode_query(x_new, target=version),
                                   np.float64))
    qspec = CodeSpec(old.dim, query_bits)
    return qspec.pack(qspec.quantize_angle(z.astype(np.float32)))


def _unit(z: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.where(n > 0, n, 1.0)


def _fit_joint_query(new, old, version, x_new, x_old, old_codes, query_bits, metric, seed,
                     val_fraction, weights=JOINT_WEIGHTS):
    """The joint query's weight (of ``weights``, best validation R10@10, ties to the
    smaller) and ``(scale, shift)`` mapping its scores against the stored codes onto
    the new model's own scale (the per-version logistic fit of P(true neighbour | score) of
    the query heads' calibration, truth = the new floats' top-10). Chosen and fitted on the
    rows :func:`bebr.compat.head_split` holds out of the head's training (queries against
    a gallery of items the head never saw), so neither favours what the head memorised."""
    import torch
    import torch.nn.functional as F

    from .compat import CALIBRATION_TOP, _fit_calibration, head_split
    from .train import code_recall

    qi, gi, _ = head_split(x_new.shape[0], seed, val_fraction)
    xn = np.asarray(x_new, np.float32)
    xo = np.asarray(x_old, np.float32)
    t = F.normalize(torch.from_numpy(xn), dim=1)
    truth = (t[qi] @ t[gi].T).topk(min(10, len(gi)), dim=1).indices
    qspec = CodeSpec(new.dim, query_bits)
    g_old = torch.from_numpy(new.spec.values(old_codes[gi]))
    scores, codes = {}, {}
    for w in weights:
        codes[w] = joint_query_codes(old, xo[qi], new, xn[qi], version, w, query_bits)
        scores[w] = code_recall(torch.from_numpy(qspec.values(codes[w])), g_old, truth)
    best = max(weights, key=lambda w: (scores[w], -w))
    sets = ((torch.from_numpy(qspec.values(codes[best])), g_old),
            (torch.from_numpy(qspec.values(new.encode_query_codes(xn[qi], query_bits))),
             torch.from_numpy(new.spec.values(new.encode(xn[gi])))))
    cal = _fit_calibration(sets, truth, CALIBRATION_TOP, metric)
    return float(best), cal, {str(w): float(v) for w, v in scores.items()}


#: Query-memory settings tried on the held-out rows (bebr.query_memory): neighbours,
#: softmax temperature over their cosine scores, weight of the memory direction against the
#: head's unit direction.
MEMORY_K = (10, 20, 40)
MEMORY_TAU = (0.05, 0.1)
MEMORY_WEIGHTS = (0.5, 1.0, 2.0)


def _fit_query_memory(new, version, x_new, old_codes, query_bits, metric, seed,
                      val_fraction) -> tuple:
    """The query memory of ``new``'s queries into ``version``'s codes from a paired sample
    (``x_new``: the new model's floats of items whose stored codes are ``old_codes``), or
    None where no setting beats the head alone. Chosen on the rows
    :func:`bebr.compat.head_split` holds out of the head's training: validation queries
    over the validation gallery's old codes, the memory built from the other rows (so no
    gallery item is in it), each setting of :data:`MEMORY_K` x :data:`MEMORY_TAU` x
    :data:`MEMORY_WEIGHTS` against the head alone by R10@10 (truth: the new floats'
    top-10); the chosen setting's scores calibrated onto the new model's own scale
    (logistic fits, as a head's). The memory served holds every sample row. Returns
    ``(memory or None, report)``."""
    import torch

    from .compat import CALIBRATION_TOP, _fit_calibration, head_split

    qi, gi, tr = head_split(x_new.shape[0], seed, val_fraction)
    xn = np.asarray(x_new, np.float32)
    t = _unit(xn.astype(np.float64))
    truth = np.argsort(-(t[qi] @ t[gi].T), axis=1, kind="stable")[:, :min(10, len(gi))]
    new_codes = new.encode(xn)
    z_head = _unit(np.asarray(_as_encoder(new).encode_query(xn[qi], target=version),
                              np.float64))
    q_new = new.encode_query_codes(xn[qi], query_bits)
    qspec = CodeSpec(new.dim, query_bits)
    g_old = new.spec.values(old_codes[gi])

    def recall(z):
        codes = qspec.pack(qspec.quantize_angle(z.astype(np.float32)))
        ids = _topk_scores(qspec.values(codes), g_old, truth.shape[1], metric == "cosine")[1]
        return float((ids[:, :, None] == truth[:, None, :]).any(2).mean()), codes

    scores = {"head": recall(z_head)[0]}
    best, chosen = scores["head"], None
    val_mem = QueryMemory(new.spec, new_codes[tr], old_codes[tr], k=max(MEMORY_K), tau=1.0,
                          weight=1.0)
    found = val_mem.neighbours(q_new, query_bits, max(MEMORY_K))
    for k in MEMORY_K:
        for tau in MEMORY_TAU:
            d = val_mem.direction(q_new, query_bits, k=k, tau=tau, found=found)
            for w in MEMORY_WEIGHTS:
                r, codes = recall(z_head + w * d)
                scores[f"k={k} tau={tau:g} w={w:g}"] = r
                if r > best:
                    best, chosen = r, (k, tau, w, codes)
    report = {"rows": int(len(xn)), "val_r10@10": scores, "chosen": None}
    if chosen is None:
        return None, report
    k, tau, w, codes = chosen
    sets = ((torch.from_numpy(qspec.values(codes)), torch.from_numpy(g_old)),
            (torch.from_numpy(qspec.values(q_new)),
             torch.from_numpy(new.spec.values(new_codes[gi]))))
    cal = _fit_calibration(sets, torch.from_numpy(truth.astype(np.int64)), CALIBRATION_TOP,
                           metric)
    report["chosen"] = {"k": k, "tau": tau, "weight": w, "calibration": [float(c) for c in cal]}
    return QueryMemory(new.spec, new_codes, old_codes, k=k, tau=tau, weight=w,
                       calibration=cal), report


#: Re-encoded shares r (of the two versions' items) a merge table holds an entry for.
MERGE_STATES = tuple(round(0.1 * i, 1) for i in range(1, 10))
#: Scales and shifts of the old scores tried per state, besides the logistic fit and (1, 0).
MERGE_SCALES = (0.7, 0.8, 0.9, 1.0, 1.1, 1.25)
MERGE_SHIFTS = tuple(round(-0.2 + 0.025 * i, 3) for i in range(17))
#: Weight of negative flips against R10@10 in the merge table's objective.
MERGE_FLIP_WEIGHT = 2.0
#: States on either side pooled with each state's own in the objective (noise of a few
#: thousand held-out queries: flip rates near 0.02 are ~40 queries).
MERGE_WINDOW = 2
#: A state's entry must cut the pooled held-out negative flips of the naive merge (1, 0) by
#: at least this share, without its R10@10 falling below the all-old search's, whenever any
#: candidate can; when none can, it must flip no more than (1, 0) (which qualifies).
MERGE_FLIP_MARGIN = 0.15
#: Depth of each version's candidate list in the merge simulation.
_MERGE_DEPTH = 400


def _fit_merge_table(new, old, version, x_new, x_old, old_codes, weight, cal, query_bits,
                     metric, seed, val_fraction) -> tuple:
    """The merge table of ``version``'s own-query scores: per state r of
    :data:`MERGE_STATES`, the ``(scale, shift)`` of the old scores that scores best in a
    simulated merge on the held-out rows (:func:`bebr.compat.head_split`: validation
    queries over the validation gallery, a seeded nested random share r of it carrying the
    new model's codes, the rest the old ones); the objective is R10@10 minus
    :data:`MERGE_FLIP_WEIGHT` x the negative-flip rate (top-1 right when every item is
    old, wrong merged), averaged over the state and :data:`MERGE_WINDOW` states on either
    side; candidates: (1, 0) (the naive merge), the logistic ``cal`` and the grid
    :data:`MERGE_SCALES` x :data:`MERGE_SHIFTS`; ties to (1, 0). The choice is constrained
    to the candidates whose pooled flips are at most ``1 - MERGE_FLIP_MARGIN`` of the naive
    merge's and whose R10@10 at the state is at least the all-old search's, when there are
    any, else to those whose pooled flips are at most the naive merge's: on these rows the
    merge never flips more results than the naive one, whatever it gains in recall.

    Why per r: one logistic fit of P(true neighbour | score) over the top-50 of each
    version lowers the old model's top scores against the new one's, which lets new items
    take the top-1 while few are re-encoded: MiniLM -> MPNet 128x2, held-out and reported
    queries alike, flipped more than the naive merge and scored below it at r <= 0.3,
    better above (tools/probe_merge_calibration.py); a state's own best map alone was
    noisy (the pooled, flip-weighted choice: BENCHMARKS.md section 3b). Returns
    ``(table, curves)``:
    ``[[r, scale, shift], ...]`` and the held-out R10@10 / flips of the naive, logistic and
    chosen maps."""
    from .compat import head_split

    qi, gi, _ = head_split(x_new.shape[0], seed, val_fraction)
    xn = np.asarray(x_new, np.float32)
    t = _unit(xn.astype(np.float64))
    truth = np.argsort(-(t[qi] @ t[gi].T), axis=1, kind="stable")[:, :min(10, len(gi))]
    qspec = CodeSpec(new.dim, query_bits)
    q_old = joint_query_codes(old, np.asarray(x_old, np.float32)[qi], new, xn[qi], version,
                              weight, query_bits)
    unit = metric == "cosine"
    old_tk = _topk_scores(qspec.values(q_old), new.spec.values(old_codes[gi]), _MERGE_DEPTH,
                          unit)
    new_tk = _topk_scores(qspec.values(new.encode_query_codes(xn[qi], query_bits)),
                          new.spec.values(new.encode(xn[gi])), _MERGE_DEPTH, unit)
    order = np.random.default_rng(seed).permutation(len(gi))
    masks = []
    for r in MERGE_STATES:
        m = np.zeros(len(gi), dtype=bool)
        m[order[:int(round(r * len(gi)))]] = True
        masks.append(m)
    return _choose_merge_table(old_tk, new_tk, masks, truth, cal)


def _choose_merge_table(old_tk, new_tk, masks, truth, cal) -> tuple:
    """:func:`_fit_merge_table`'s choice from the held-out top-k lists and one mask per
    state of :data:`MERGE_STATES`."""
    naive, logistic = (1.0, 0.0), (float(cal[0]), float(cal[1]))
    cands = [naive, logistic] + [(a, b) for a in MERGE_SCALES for b in MERGE_SHIFTS
                                 if (a, b) != naive]
    res = [_merge_curves(old_tk, new_tk, masks, truth, c) for c in cands]
    rec = np.array([v[0] for v in res])
    fl = np.array([v[1] for v in res])
    obj = rec - MERGE_FLIP_WEIGHT * fl
    all_old = _merge_curves(old_tk, new_tk, [np.zeros_like(masks[0])], truth, naive)[0][0]
    table, chosen = [], ([], [])
    for i, r in enumerate(MERGE_STATES):
        lo, hi = max(0, i - MERGE_WINDOW), min(len(MERGE_STATES), i + MERGE_WINDOW + 1)
        pooled = obj[:, lo:hi].mean(1)
        pf, naive_pf = fl[:, lo:hi].mean(1), fl[0, lo:hi].mean()
        ok = (pf <= (1 - MERGE_FLIP_MARGIN) * naive_pf) & (rec[:, i] >= all_old)
        pooled = np.where(ok if ok.any() else pf <= naive_pf, pooled, -np.inf)
        best = int(np.flatnonzero(pooled == pooled.max())[0])  # ties: the first, (1, 0)
        table.append([r, float(cands[best][0]), float(cands[best][1])])
        chosen[0].append(float(rec[best, i]))
        chosen[1].append(float(fl[best, i]))
    curves = {"states": list(MERGE_STATES),
              "naive": {"r10@10": res[0][0], "flips": res[0][1]},
              "logistic": {"r10@10": res[1][0], "flips": res[1][1]},
              "chosen": {"r10@10": chosen[0], "flips": chosen[1]}, "all_old": all_old}
    return table, curves


def _read_manifest(mpath: Path) -> dict:
    """Parse and check ``collection.json``; CorruptFileError names the problem."""
    try:
        man = json.loads(mpath.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{mpath}: not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("format") != _FORMAT:
        raise CorruptFileError(f"{mpath}: not a bebr collection manifest")
    if man.get("format_version") != COLLECTION_FORMAT_VERSION:
        raise CorruptFileError(f"{mpath}: collection format_version "
                               f"{man.get('format_version')!r} is not supported (this bebr "
                               f"reads {COLLECTION_FORMAT_VERSION})")
    try:
        if man["metric"] not in _METRICS:
            raise ValueError(f"metric {man['metric']!r}")
        spec = CodeSpec.from_dict(man["spec"])
        qb = man["query_bits"]
        if isinstance(qb, bool) or not isinstance(qb, int) \
                or not 1 <= qb <= max_query_bits(spec.bits):
            raise ValueError(f"query_bits {qb!r}")
        gen = man["generation"]
        if isinstance(gen, bool) or not isinstance(gen, int) or gen < 1:
            raise ValueError(f"generation {gen!r}")
        idx = man["index"]
        if not isinstance(idx, dict) or set(idx) != {"file", "bytes"} \
                or not isinstance(idx["file"], str) \
                or not re.fullmatch(r"index-\d{6}\.bebr", idx["file"]) \
                or isinstance(idx["bytes"], bool) or not isinstance(idx["bytes"], int):
            raise ValueError(f"index entry {idx!r}")
        names = []
        for e in man["versions"]:
            if not isinstance(e, dict) or set(e) != {"version", "model", "config_sha256",
                                                     "lineage"}:
                raise ValueError(f"version entry {e!r}")
            v = e["version"]
            if not isinstance(v, str) or not v or e["model"] != f"models/{_model_dir_name(v)}":
                raise ValueError(f"version entry {e!r} (model directory must be "
                                 f"models/{_model_dir_name(v) if isinstance(v, str) else '?'})")
            if not isinstance(e["config_sha256"], str) or not isinstance(e["lineage"], list) \
                    or not all(isinstance(p, str) for p in e["lineage"]):
                raise ValueError(f"version entry {e!r}")
            names.append(v)
        if not names or len(set(names)) != len(names) or man["current"] not in names:
            raise ValueError(f"versions {names} / current {man['current']!r}")
        cal = man["own_calibration"]
        if not isinstance(cal, dict) or not all(
                k in names and isinstance(c, list) and len(c) == 2
                and all(isinstance(t, (int, float)) and not isinstance(t, bool)
                        and np.isfinite(t) for t in c) and c[0] > 0
                for k, c in cal.items()):
            raise ValueError(f"own_calibration {cal!r}")
        jw = man.setdefault("joint_weight", {})  # absent in collections of 0.x: own queries
        if not isinstance(jw, dict) or not all(
                k in cal and isinstance(w, (int, float)) and not isinstance(w, bool)
                and np.isfinite(w) and w >= 0 for k, w in jw.items()):
            raise ValueError(f"joint_weight {jw!r}")
        mc = man.setdefault("merge_calibration", {})  # absent before: own_calibration alone
        if not isinstance(mc, dict) or not all(
                k in cal and isinstance(t, list) and t and all(
                    isinstance(e, list) and len(e) == 3
                    and all(isinstance(u, (int, float)) and not isinstance(u, bool)
                            and np.isfinite(u) for u in e)
                    and 0 <= e[0] <= 1 and e[1] > 0 for e in t)
                for k, t in mc.items()):
            raise ValueError(f"merge_calibration {mc!r}")
        ivf = man.get("ivf")  # absent: a flat index
        if ivf is not None and (
                not isinstance(ivf, dict) or set(ivf) != {"nlist", "nprobe", "spill_lambda"}
                or any(isinstance(ivf[f], bool) or not isinstance(ivf[f], int) or ivf[f] < 1
                       for f in ("nlist", "nprobe"))
                or not (ivf["spill_lambda"] is None or (
                    isinstance(ivf["spill_lambda"], (int, float))
                    and not isinstance(ivf["spill_lambda"], bool)
                    and np.isfinite(ivf["spill_lambda"]) and ivf["spill_lambda"] >= 0))):
            raise ValueError(f"ivf {ivf!r}")
        qm = man.setdefault("query_memory", {})  # absent before: heads alone
        if not isinstance(qm, dict):
            raise ValueError(f"query_memory {qm!r}")
        for v, e in qm.items():
            if v not in names or v == man["current"] or not isinstance(e, dict) or set(e) != {
                    "file", "bytes", "sha256", "rows", "k", "tau", "weight", "calibration"} \
                    or not isinstance(e["file"], str) \
                    or not re.fullmatch(r"memory-\d{6}-[0-9a-f]{8}\.npz", e["file"]) \
                    or not isinstance(e["sha256"], str) \
                    or any(isinstance(e[f], bool) or not isinstance(e[f], int) or e[f] < 1
                           for f in ("bytes", "rows", "k")) \
                    or any(isinstance(e[f], bool) or not isinstance(e[f], (int, float))
                           or not np.isfinite(e[f]) or e[f] <= 0 for f in ("tau", "weight")) \
                    or not isinstance(e["calibration"], list) or len(e["calibration"]) != 2 \
                    or not all(isinstance(c, (int, float)) and not isinstance(c, bool)
                               and np.isfinite(c) for c in e["calibration"]) \
                    or e["calibration"][0] <= 0:
                raise ValueError(f"query_memory entry {v!r}: {e!r}")
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptFileError(f"{mpath}: bad manifest field ({e})") from None
    return man


def _topk_scores(q_values: np.ndarray, g_values: np.ndarray, k: int, unit: bool = True,
                 chunk: int = 256) -> Tuple[np.ndarray, np.ndarray]:
    """Top-``k`` scores and row ids (best first) of decoded query values over decoded code
    values, cosine (``unit``) or inner product: ``(scores float32 (nq, k), ids int64)``."""
    q = np.asarray(q_values, np.float32)
    g = np.asarray(g_values, np.float32)
    if unit:
        q, g = _unit(q).astype(np.float32), _unit(g).astype(np.float32)
    k = min(int(k), g.shape[0])
    scores = np.empty((q.shape[0], k), np.float32)
    ids = np.empty((q.shape[0], k), np.int64)
    for s in range(0, q.shape[0], chunk):
        sc = q[s:s + chunk] @ g.T
        part = np.argpartition(-sc, k - 1, axis=1)[:, :k]
        ps = np.take_along_axis(sc, part, 1)
        o = np.argsort(-ps, axis=1, kind="stable")
        ids[s:s + chunk] = np.take_along_axis(part, o, 1)
        scores[s:s + chunk] = np.take_along_axis(ps, o, 1)
    return scores, ids


def _merge_curves(old_topk, new_topk, masks, truth, calibration, k: int = 10):
    """R10@10 and negative flips of the merged search at each re-encoding state.

    ``old_topk`` / ``new_topk``: ``(scores, ids)`` of :func:`_topk_scores`, the old
    version's queries over every item's old code and the new model's queries over every
    item's new code (deep enough that the top-``k`` of any state is among them);
    ``masks``: boolean ``(n,)`` per state, True where the item carries its new code;
    ``truth`` (nq, >= k): true neighbours; ``calibration``: ``(scale, shift)`` applied to
    the old scores. Flips are counted against the old system (every item old). Returns two
    lists of floats, one value per mask."""
    so, io = old_topk
    sn, inn = new_topk
    a, b = calibration
    truth = np.asarray(truth)
    old_ok = (truth == io[:, :1]).any(1)
    recalls, flips = [], []
    for mask in masks:
        s = np.concatenate([np.where(mask[io], -np.inf, a * so + b),
                            np.where(mask[inn], sn, -np.inf)], 1)
        ids = np.concatenate([io, inn], 1)
        top = np.argpartition(-s, k - 1, axis=1)[:, :k]
        ts = np.take_along_axis(s, top, 1)
        top = np.take_along_axis(top, np.argsort(-ts, axis=1, kind="stable"), 1)
        got = np.take_along_axis(ids, top, 1)
        got = np.where(np.isfinite(np.take_along_axis(s, top, 1)), got, -1)
        hit = (got[:, :, None] == truth[:, None, :k]).any(2)
        recalls.append(float(hit.mean()))
        flips.append(float(np.mean(old_ok & ~hit[:, 0])))
    return recalls, flips
