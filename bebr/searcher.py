"""Float queries in, results out: ``Searcher`` and :func:`search_args`.

All per-query work happens once, in one place, batched over the queries of a call: the
model (a torch-free :class:`bebr.Encoder`, or a ``Binarizer`` exported to one) encodes the
float queries into query codes (compiled, float64; ``Encoder.encode_query_codes``), into the
code spaces of the older versions the index holds and the model has query heads for (with
their score calibrations for the index's metric), and ``Index.search`` then builds each
query's lookup tables and scans once over every version.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, Union

from .codes import max_query_bits
from .encoder import Encoder
from .index import Index, _check_k, _check_prune, _check_threads, _filter_args, _query_spec
from .versions import version_tag

__all__ = ["Searcher", "search_args"]


def _as_encoder(model) -> Encoder:
    if isinstance(model, Encoder):
        return model
    if hasattr(model, "to_encoder"):
        return model.to_encoder()
    raise TypeError(f"model must be a bebr.Encoder or a bebr.Binarizer, got "
                    f"{type(model).__name__}")


def _index_key(held, version: str):
    """The key of model version ``version`` among an index's version keys ``held``
    (``Index.versions()``: the version string if registered, else its int tag), or None."""
    if version in held:
        return version
    tag = version_tag(version)
    return tag if tag in held else None


def search_args(encoder, versions: Union[Mapping[Any, int], Callable[[], Mapping[Any, int]]], x,
                *, query_bits: Optional[int] = None,
                heads: bool = True, metric: str = "cosine",
                threads: Optional[int] = None) -> dict:
    """The keyword arguments of ``Index.search`` (``queries``, ``query_bits`` and, when
    heads apply, ``version_queries`` / ``version_calibration``) for float queries ``x``
    (n, in_dim) against an index holding ``versions`` (``Index.versions()``: {version: live
    count}) of items; a callable (``index.versions``) is called only if the model has query
    heads (counting the items per version scans the index).

    ``query_bits``: bits per dimension of the query codes (default: the finest the kernel
    scores exactly over the stored codes, ``max_query_bits(encoder.bits)``). ``heads``:
    items of an older version the model has a query head for are scored with that head's
    codes and calibration (``Encoder.encode_query_codes(x, target=...)``,
    ``Encoder.cross_calibration``); every other item with the model's own query codes.
    """
    enc = _as_encoder(encoder)
    qb = max_query_bits(enc.bits) if query_bits is None else query_bits
    out = {"queries": enc.encode_query_codes(x, qb, threads=threads), "query_bits": qb}
    if heads and enc.config.cross_versions:
        held = {v for v, c in dict(versions() if callable(versions) else versions).items() if c}
        vq, cal = {}, {}
        for ver in enc.config.cross_versions:
            tag = _index_key(held, ver)
            if tag is not None and ver != enc.version:
                vq[tag] = enc.encode_query_codes(x, qb, target=ver, threads=threads)
                cal[tag] = enc.cross_calibration(ver, metric)
        if vq:
            out["version_queries"] = vq
            out["version_calibration"] = cal
    return out


class Searcher:
    """A model and an :class:`bebr.Index` of its codes (and of older versions' codes), searched
    with float queries: ``Searcher(model, index).search(x, k)``.

    ``model``: a :class:`bebr.Encoder` (torch-free) or a ``Binarizer`` (its current weights
    are exported once, at construction). ``query_bits`` / ``heads``: defaults of
    :meth:`search` (see :func:`search_args`).
    """

    def __init__(self, model, index, *, query_bits: Optional[int] = None,
                 heads: bool = True) -> None:
        self.encoder = _as_encoder(model)
        if getattr(index, "spec", None) != self.encoder.spec:
            raise ValueError(f"the model makes {self.encoder.spec} codes, the index holds "
                             f"{getattr(index, 'spec', None)}")
        self.index = index
        self.query_bits = query_bits
        self.heads = bool(heads)
        self._query_bits_ok: set = set()

    def __repr__(self) -> str:
        return f"Searcher({self.encoder!r}, {self.index!r})"

    def _checked_query_bits(self, qb) -> int:
        """``qb`` checked against the index's spec as ``Index.search`` checks it (cached)."""
        ok = self._query_bits_ok
        if not (type(qb) is int and qb in ok):
            qb = _query_spec(self.index.spec, qb).bits
            ok.add(qb)
        return qb

    def search_args(self, x, *, query_bits: Optional[int] = None, heads: Optional[bool] = None,
                    threads: Optional[int] = None) -> dict:
        """:func:`search_args` for this index (its current versions and metric)."""
        return search_args(self.encoder, self.index.versions, x,
                           query_bits=self.query_bits if query_bits is None else query_bits,
                           heads=self.heads if heads is None else heads,
                           metric=self.index.metric, threads=threads)

    def search(self, x, k: int, *, query_bits: Optional[int] = None, filter: Any = None,
               exclude: Any = None, threads: Optional[int] = None,
               heads: Optional[bool] = None, prune: Optional[float] = None):
        """Top-``k`` ``(scores, ids)`` of float queries ``x`` (n, in_dim), as
        ``Index.search`` (``filter``/``exclude``/``threads``/``prune`` as there; ``threads``
        also encodes the queries)."""
        enc, index = self.encoder, self.index
        use_heads = self.heads if heads is None else bool(heads)
        if type(index) is Index and not (use_heads and enc.config.cross_versions):
            # one code space, no version queries: the encoder's codes go straight to the
            # compiled search (they have the query spec's shape, dtype and zero padding; the
            # core checks shape and dtype again), every other argument checked as
            # Index.search checks it
            qb = self.query_bits if query_bits is None else query_bits
            qb = max_query_bits(enc.bits) if qb is None else qb
            codes = enc.encode_query_codes(x, qb, threads=threads)
            qbits = self._checked_query_bits(qb)
            return index._core.search(codes, _check_k(k), _check_threads(threads),
                                      *_filter_args(filter, "filter"),
                                      *_filter_args(exclude, "exclude"), qbits, [], [],
                                      prune=0.0 if prune is None else _check_prune(prune))
        kw = self.search_args(x, query_bits=query_bits, heads=heads, threads=threads)
        queries = kw.pop("queries")
        if prune is not None:
            kw["prune"] = prune
        return self.index.search(queries, k, threads=threads, filter=filter, exclude=exclude,
                                 **kw)
