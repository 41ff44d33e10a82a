"""Plain numpy reference search over packed codes: the oracle the kernels are tested against.

Slow and simple on purpose. Scores follow the contract of ``bebr.Index``:
metric "ip" is the exact inner product of code values, "cosine" divides it by both code
norms; results are best first with ties broken by smaller id; missing results are
id -1, score -inf.
"""

from __future__ import annotations

import numpy as np

from .codes import CodeSpec

__all__ = ["int_values", "search_codes", "search_versions", "hamming_search", "topk_rows"]


def int_values(spec: CodeSpec, packed: np.ndarray) -> np.ndarray:
    """Code values scaled by ``2**(bits-1)``: odd integers as int64 ``(n, dim)``."""
    levels = spec.unpack(packed).astype(np.int64)
    return 2 * levels - (spec.n_levels - 1)


def topk_rows(scores: np.ndarray, ids: np.ndarray, k: int, descending: bool):
    """Top-k of each row of ``scores`` (nq, n) with ties to smaller id; pads with -1 / worst."""
    nq, n = scores.shape
    fill = -np.inf if descending else np.inf
    out_s = np.full((nq, k), fill, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    if n == 0:
        return out_s, out_i
    for q in range(nq):
        key = -scores[q] if descending else scores[q]
        order = np.lexsort((ids, key))[:k]
        valid = np.isfinite(scores[q, order])
        order = order[valid]
        out_s[q, :len(order)] = scores[q, order]
        out_i[q, :len(order)] = ids[order]
    return out_s, out_i


def _scores(spec, qs, queries, codes, metric, calibration=(1.0, 0.0)):
    """float32 (nq, n) scores of queries (spec ``qs``) against codes (spec ``spec``), mapped
    to ``scale * score + shift`` by ``calibration`` (in float64, before the cast)."""
    q = int_values(qs, queries)
    d = int_values(spec, codes)
    ip = (q @ d.T).astype(np.float64) / float(qs.scale * spec.scale)
    if metric == "cosine":
        qn = np.sqrt((q * q).sum(1)) / qs.scale
        dn = np.sqrt((d * d).sum(1)) / spec.scale
        ip = ip / (qn[:, None] * dn[None, :])
    elif metric != "ip":
        raise ValueError(f"metric must be 'ip' or 'cosine', got {metric!r}")
    a, b = calibration
    return (ip * float(a) + float(b)).astype(np.float32)


def search_codes(spec: CodeSpec, queries: np.ndarray, codes: np.ndarray, ids: np.ndarray,
                 k: int, metric: str = "ip", allowed: np.ndarray | None = None,
                 query_spec: CodeSpec | None = None):
    """Exhaustive search of packed ``queries`` against packed ``codes`` with ``ids``.

    ``allowed``: optional boolean mask over the rows of ``codes``; rows where it is False
    are skipped. ``query_spec``: the queries' spec (same dim, any bits; default ``spec``).
    Returns float32 scores and int64 ids, both ``(nq, k)``.
    """
    qs = spec if query_spec is None else query_spec
    ip = _scores(spec, qs, queries, codes, metric)
    if allowed is not None:
        ip[:, ~np.asarray(allowed, dtype=bool)] = -np.inf
    return topk_rows(ip, np.asarray(ids, dtype=np.int64), k, descending=True)


def search_versions(spec: CodeSpec, queries: np.ndarray, codes: np.ndarray, ids: np.ndarray,
                    versions: np.ndarray, k: int, metric: str = "ip",
                    version_queries: dict | None = None, query_spec: CodeSpec | None = None,
                    version_calibration: dict | None = None):
    """Like :func:`search_codes`, but items whose version is a key of ``version_queries``
    are scored with that entry's query codes (one row per query) instead of ``queries``,
    and mapped to ``scale * score + shift`` by ``version_calibration[version]`` if given."""
    qs = spec if query_spec is None else query_spec
    vers = np.asarray(versions)
    sc = _scores(spec, qs, queries, codes, metric)
    for v, vqc in (version_queries or {}).items():
        cols = vers == v
        if cols.any():
            sc[:, cols] = _scores(spec, qs, vqc, codes[cols], metric,
                                  (version_calibration or {}).get(v, (1.0, 0.0)))
    return topk_rows(sc, np.asarray(ids, dtype=np.int64), k, descending=True)


def hamming_search(queries: np.ndarray, codes: np.ndarray, ids: np.ndarray, k: int,
                   allowed: np.ndarray | None = None):
    """Exhaustive Hamming search over uint8 bit codes; ascending distance, ties to smaller id."""
    qb = np.unpackbits(queries, axis=1).astype(np.int64)
    db = np.unpackbits(codes, axis=1).astype(np.int64)
    dist = (qb[:, None, :] != db[None, :, :]).sum(2).astype(np.float32) if len(db) else \
        np.zeros((len(qb), 0), np.float32)
    if allowed is not None:
        dist[:, ~np.asarray(allowed, dtype=bool)] = np.inf
    return topk_rows(dist, np.asarray(ids, dtype=np.int64), k, descending=False)
