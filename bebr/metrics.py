"""Retrieval and compatibility metrics (numpy only; REFERENCE.md sections 3-4).

Conventions shared by every function here:

- ``retrieved``: int array ``(nq, k)`` of gallery ids returned per query, best first; ``-1``
  marks a missing result (as ``bebr.Index`` and ``bebr.reference`` pad short results).
- ``truth``: int array ``(nq, k_true)`` of the ground-truth neighbour ids of each query (for
  example the exact float top-10); ``-1`` entries are ignored.
- Labels: ``query_labels`` ``(nq,)`` and ``gallery_labels`` ``(n,)``; a retrieved id ``i`` is
  relevant when ``gallery_labels[i] == query_labels[q]``. Ids index ``gallery_labels``.
- ``M(q, g)``: a retrieval metric with queries encoded by version ``q`` and the gallery by
  version ``g``. A version is any hashable key (an int or a string).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Hashable, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .fileio import atomic_writer

__all__ = [
    "recall_at_k", "top1_accuracy", "mean_average_precision", "top1_correct",
    "negative_flip_rate", "cross_test", "compatibility_criterion", "update_gain",
    "multi_version_compat_share", "backfill_subset", "mix_gallery", "BackfillCurve",
    "backfill_curve", "curve_area", "plot_backfill",
]

SearchFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
MetricFn = Callable[[np.ndarray], float]
CorrectFn = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------------------- validation
def _ids(a, name: str, nq: Optional[int] = None) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"{name} must be an integer id array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (nq, k), got {arr.shape}")
    if nq is not None and arr.shape[0] != nq:
        raise ValueError(f"{name} has {arr.shape[0]} rows, expected {nq} (one per query)")
    return arr.astype(np.int64, copy=False)


def _labels(a, name: str, n: Optional[int] = None) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} entries, expected {n}")
    return arr


def _check_ids_in_range(retrieved: np.ndarray, n: int) -> None:
    if retrieved.size and retrieved.max() >= n:
        raise ValueError(
            f"retrieved ids must be < {n} (len(gallery_labels)), got max {retrieved.max()}")
    if retrieved.size and retrieved.min() < -1:
        raise ValueError(f"retrieved ids must be >= -1, got min {retrieved.min()}")


def _finite(x: float, name: str) -> float:
    v = float(x)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return v


# ---------------------------------------------------------------------------- retrieval
def recall_at_k(retrieved, truth, k: Optional[int] = None) -> float:
    """Mean share of each query's true neighbours found in its first ``k`` results.

    R10@10 is ``recall_at_k(top10_ids, true_top10)``, R10@100 ``recall_at_k(top100_ids,
    true_top10)``. ``k`` defaults to all retrieved columns. Queries without any true
    neighbour are rejected (the recall is undefined for them).
    """
    truth = _ids(truth, "truth")
    retrieved = _ids(retrieved, "retrieved", truth.shape[0])
    if k is not None:
        if k < 1 or k > retrieved.shape[1]:
            raise ValueError(f"k must be in [1, {retrieved.shape[1]}], got {k}")
        retrieved = retrieved[:, :k]
    nq = truth.shape[0]
    if nq == 0:
        raise ValueError("recall_at_k needs at least one query")
    valid_t = truth >= 0
    n_true = valid_t.sum(1)
    if np.any(n_true == 0):
        raise ValueError(f"{int((n_true == 0).sum())} queries have no ground-truth id")
    # hit[q, j]: truth[q, j] appears among retrieved[q] (ignoring -1 padding)
    hit = (truth[:, :, None] == retrieved[:, None, :]) & valid_t[:, :, None] \
        & (retrieved[:, None, :] >= 0)
    found = hit.any(2).sum(1)
    return float(np.mean(found / n_true))


def top1_correct(retrieved, truth=None, *, query_labels=None, gallery_labels=None) -> np.ndarray:
    """Boolean ``(nq,)``: whether each query's top-1 result is right.

    Right means the top-1 id is in the query's ground-truth set (``truth``), or, with labels,
    that its label equals the query's. Give exactly one of ``truth`` or the two label arrays.
    A missing result (-1) is wrong.
    """
    if (truth is None) == (query_labels is None or gallery_labels is None):
        raise ValueError("give either truth or both query_labels and gallery_labels")
    if truth is not None:
        truth = _ids(truth, "truth")
        retrieved = _ids(retrieved, "retrieved", truth.shape[0])
        if retrieved.shape[1] == 0:
            raise ValueError("retrieved must have at least one column")
        top = retrieved[:, 0]
        return (top >= 0) & (truth == top[:, None]).any(1)
    ql = _labels(query_labels, "query_labels")
    gl = _labels(gallery_labels, "gallery_labels")
    retrieved = _ids(retrieved, "retrieved", ql.shape[0])
    if retrieved.shape[1] == 0:
        raise ValueError("retrieved must have at least one column")
    _check_ids_in_range(retrieved, gl.shape[0])
    top = retrieved[:, 0]
    return (top >= 0) & (gl[np.maximum(top, 0)] == ql)


def top1_accuracy(retrieved, query_labels, gallery_labels) -> float:
    """Share of queries whose top-1 result has the query's label."""
    ok = top1_correct(retrieved, query_labels=query_labels, gallery_labels=gallery_labels)
    if ok.size == 0:
        raise ValueError("top1_accuracy needs at least one query")
    return float(ok.mean())


def mean_average_precision(retrieved, query_labels, gallery_labels) -> float:
    """mAP@k over the retrieved lists (k = retrieved columns), relevance by equal label.

    AP of a query = ``sum_r P@r * rel_r / min(R, k)``, R the number of gallery items with the
    query's label (so a perfect list scores 1 even when R > k). Queries with R = 0 are rejected.
    """
    ql = _labels(query_labels, "query_labels")
    gl = _labels(gallery_labels, "gallery_labels")
    retrieved = _ids(retrieved, "retrieved", ql.shape[0])
    if ql.shape[0] == 0:
        raise ValueError("mean_average_precision needs at least one query")
    k = retrieved.shape[1]
    if k == 0:
        raise ValueError("retrieved must have at least one column")
    _check_ids_in_range(retrieved, gl.shape[0])
    uniq, inv = np.unique(np.concatenate([gl, ql]), return_inverse=True)
    counts = np.bincount(inv[:gl.shape[0]], minlength=uniq.shape[0])
    n_rel = counts[inv[gl.shape[0]:]]
    if np.any(n_rel == 0):
        raise ValueError(f"{int((n_rel == 0).sum())} queries have no relevant gallery item")
    rel = (retrieved >= 0) & (gl[np.maximum(retrieved, 0)] == ql[:, None])
    prec = np.cumsum(rel, 1) / np.arange(1, k + 1)
    ap = (prec * rel).sum(1) / np.minimum(n_rel, k)
    return float(ap.mean())


def negative_flip_rate(old_correct, new_correct) -> float:
    """Share of queries right under the old system and wrong under the new one.

    Both arguments are boolean ``(nq,)`` arrays, e.g. from :func:`top1_correct`.
    """
    a = np.asarray(old_correct)
    b = np.asarray(new_correct)
    if a.dtype != bool or b.dtype != bool:
        raise TypeError(f"old_correct and new_correct must be bool arrays, got {a.dtype}, {b.dtype}")
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"old_correct and new_correct must be equal-length 1-d arrays, "
                         f"got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("negative_flip_rate needs at least one query")
    return float(np.mean(a & ~b))


# ---------------------------------------------------------------------------- compatibility
def cross_test(queries: Mapping[Hashable, np.ndarray], galleries: Mapping[Hashable, np.ndarray],
               search: SearchFn, metric: MetricFn,
               pairs: Optional[Sequence[Tuple[Hashable, Hashable]]] = None
               ) -> Dict[Tuple[Hashable, Hashable], float]:
    """``M(q, g)`` for version pairs: ``metric(search(queries[q], galleries[g]))``.

    ``queries``/``galleries`` map a version to its codes (any array ``search`` accepts);
    ``search(q_codes, g_codes)`` returns retrieved ids ``(nq, k)``; ``metric`` scores them.
    ``pairs`` defaults to every (query version, gallery version) combination.
    """
    if not callable(search) or not callable(metric):
        raise TypeError("search and metric must be callables")
    if pairs is None:
        pairs = [(q, g) for q in queries for g in galleries]
    out: Dict[Tuple[Hashable, Hashable], float] = {}
    for qv, gv in pairs:
        if qv not in queries:
            raise KeyError(f"no query codes for version {qv!r}")
        if gv not in galleries:
            raise KeyError(f"no gallery codes for version {gv!r}")
        out[(qv, gv)] = float(metric(search(queries[qv], galleries[gv])))
    return out


def compatibility_criterion(m_new_old: float, m_old_old: float) -> bool:
    """The empirical compatibility criterion ``M(new, old) > M(old, old)``."""
    return _finite(m_new_old, "m_new_old") > _finite(m_old_old, "m_old_old")


def update_gain(m_new_old: float, m_old_old: float, m_new_new: float) -> float:
    """``(M(new,old) - M(old,old)) / (M(new,new) - M(old,old))``.

    1 means cross-version search is as good as a full backfill, 0 no better than the old
    system; undefined (ValueError) when the new model is no better than the old one.
    """
    no, oo, nn = (_finite(m_new_old, "m_new_old"), _finite(m_old_old, "m_old_old"),
                  _finite(m_new_new, "m_new_new"))
    if nn <= oo:
        raise ValueError(f"update gain is undefined when M(new,new)={nn} <= M(old,old)={oo}")
    return (no - oo) / (nn - oo)


def multi_version_compat_share(matrix: Mapping[Tuple[Hashable, Hashable], float],
                               versions: Sequence[Hashable]) -> float:
    """Share of pairs ``i > j`` (order of ``versions``, oldest first) with ``M(i,j) > M(j,j)``."""
    vs = list(versions)
    if len(vs) < 2:
        raise ValueError(f"need at least two versions, got {vs!r}")
    if len(set(vs)) != len(vs):
        raise ValueError(f"versions must be distinct, got {vs!r}")
    good = total = 0
    for i in range(len(vs)):
        for j in range(i):
            for key in ((vs[i], vs[j]), (vs[j], vs[j])):
                if key not in matrix:
                    raise KeyError(f"matrix lacks M{key!r}")
            total += 1
            good += matrix[(vs[i], vs[j])] > matrix[(vs[j], vs[j])]
    return good / total


# ---------------------------------------------------------------------------- backfill
def backfill_subset(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean mask ``(n,)`` of the items upgraded at ``fraction`` of a backfill.

    The first ``round(fraction * n)`` items of one seeded random permutation, so the subsets
    are nested as the fraction grows (a real backfill only ever adds upgraded items).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    f = _finite(fraction, "fraction")
    if not 0.0 <= f <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {f}")
    order = np.random.default_rng(seed).permutation(n)
    mask = np.zeros(n, dtype=bool)
    mask[order[:int(round(f * n))]] = True
    return mask


def mix_gallery(old_gallery: np.ndarray, new_gallery: np.ndarray, upgraded: np.ndarray
                ) -> np.ndarray:
    """Gallery with row ``i`` from ``new_gallery`` where ``upgraded[i]`` else from the old one."""
    old = np.asarray(old_gallery)
    new = np.asarray(new_gallery)
    if old.shape != new.shape or old.dtype != new.dtype:
        raise ValueError(f"old and new galleries must share shape and dtype (same code space), "
                         f"got {old.shape} {old.dtype} and {new.shape} {new.dtype}")
    m = np.asarray(upgraded)
    if m.dtype != bool or m.shape != old.shape[:1]:
        raise ValueError(f"upgraded must be a bool mask of shape {old.shape[:1]}, "
                         f"got {m.dtype} {m.shape}")
    out = old.copy()
    out[m] = new[m]
    return out


@dataclass
class BackfillCurve:
    """A metric (and optional negative flip rate) against the upgraded fraction ``r``."""

    fractions: np.ndarray
    values: np.ndarray
    flip_rates: Optional[np.ndarray] = None
    label: str = ""
    area: float = field(init=False)

    def __post_init__(self) -> None:
        self.fractions = np.asarray(self.fractions, dtype=np.float64)
        self.values = np.asarray(self.values, dtype=np.float64)
        if self.flip_rates is not None:
            self.flip_rates = np.asarray(self.flip_rates, dtype=np.float64)
        self.area = curve_area(self.fractions, self.values)


def curve_area(fractions, values) -> float:
    """Trapezoid area under ``values`` over ``fractions``, divided by the fraction span.

    With fractions spanning [0, 1] this is the plain area; a flat curve at ``m`` gives ``m``.
    """
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or x.shape[0] < 2:
        raise ValueError(f"fractions and values must be equal-length 1-d with >= 2 points, "
                         f"got {x.shape} and {y.shape}")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("fractions and values must be finite")
    if np.any(np.diff(x) <= 0):
        raise ValueError(f"fractions must be strictly increasing, got {x.tolist()}")
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / float(x[-1] - x[0])


def backfill_curve(new_queries: np.ndarray, old_gallery: np.ndarray, new_gallery: np.ndarray,
                   search: SearchFn, metric: MetricFn, *,
                   fractions: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), seed: int = 0,
                   correct: Optional[CorrectFn] = None,
                   baseline_correct: Optional[np.ndarray] = None,
                   label: str = "") -> BackfillCurve:
    """Hot-refresh curve: new-version queries against a gallery with a fraction r upgraded.

    For each r, :func:`backfill_subset` picks the upgraded items (nested subsets, fixed
    ``seed``) and ``metric(search(new_queries, mixed_gallery))`` is recorded. With ``correct``
    (ids -> bool per query, e.g. a :func:`top1_correct` closure) and ``baseline_correct`` (the
    old system's per-query correctness), the negative flip rate at each r is recorded too.
    """
    if (correct is None) != (baseline_correct is None):
        raise ValueError("give both correct and baseline_correct, or neither")
    fr = [_finite(f, "fraction") for f in fractions]
    if len(fr) < 2:
        raise ValueError("need at least two fractions")
    n = np.asarray(old_gallery).shape[0]
    values, flips = [], []
    for f in fr:
        gallery = mix_gallery(old_gallery, new_gallery, backfill_subset(n, f, seed))
        ids = search(new_queries, gallery)
        values.append(float(metric(ids)))
        if correct is not None:
            flips.append(negative_flip_rate(np.asarray(baseline_correct), np.asarray(correct(ids))))
    return BackfillCurve(np.array(fr), np.array(values),
                         np.array(flips) if correct is not None else None, label=label)


def plot_backfill(curves: Union[BackfillCurve, Sequence[BackfillCurve]],
                  path: Union[str, Path], *, title: str = "Backfill curve",
                  ylabel: str = "R10@10", references: Optional[Mapping[str, float]] = None
                  ) -> Path:
    """Draw backfill curves (and their flip rates, if any, on a second panel) to a PNG.

    ``references``: optional horizontal lines, e.g. ``{"M(old,old)": 0.31}``. Returns the path.
    """
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError("plot_backfill needs matplotlib: pip install 'bebr[plot]'") from e
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(curves, BackfillCurve):
        curves = [curves]
    curves = list(curves)
    if not curves:
        raise ValueError("need at least one curve")
    with_flips = any(c.flip_rates is not None for c in curves)
    fig, axes = plt.subplots(1, 2 if with_flips else 1, figsize=(10 if with_flips else 5.5, 4))
    axes = np.atleast_1d(axes)
    for c in curves:
        axes[0].plot(c.fractions, c.values, marker="o", label=f"{c.label} (area {c.area:.3f})")
        if c.flip_rates is not None:
            axes[1].plot(c.fractions, c.flip_rates, marker="o", label=c.label)
    for name, y in (references or {}).items():
        axes[0].axhline(y, linestyle="--", linewidth=1, color="gray")
        axes[0].annotate(name, (0.0, y), textcoords="offset points", xytext=(2, 3), fontsize=8)
    axes[0].set_xlabel("fraction r of the gallery re-encoded")
    axes[0].set_ylabel(ylabel)
    axes[0].set_title(title)
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    if with_flips:
        axes[1].set_xlabel("fraction r of the gallery re-encoded")
        axes[1].set_ylabel("negative flip rate (top-1)")
        axes[1].set_title("Negative flips against the old system")
        axes[1].legend(fontsize=8)
        axes[1].grid(alpha=0.3)
    fig.tight_layout()
    out = Path(path)
    try:
        with atomic_writer(out) as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return out
