"""Versioned compatibility: backward-compatible training and the forward code upgrader.

REFERENCE.md section 3. Two tools:

- :func:`train_compatible` trains a new ``Binarizer`` on the new upstream model's embeddings
  whose codes live in the code space of a deployed old ``Binarizer`` (same ``dim`` and
  ``bits``), so new-version queries can search old-version codes. It runs
  :func:`bebr.train.train_binarizer` (the default self loss) with an ``extra_loss`` made of
  the compatibility terms of :class:`CompatWeights`, computed on cosine similarities of
  code values over the training batch (``n_i``: new code of item i with gradient, ``o_i``:
  the frozen old model's code of the same item, a constant, ``x_i``: the new float):

  * ``compat`` (BEBR): InfoNCE, anchor n_i, positive o_i, negatives o_j;
  * ``ract`` (RACT): the same positive must also beat the new-to-new negatives n_j;
  * ``cross_distill``: row-wise KL(softmax(cos(x_i, x_j) / tau) || softmax(cos(n_i, o_j) /
    tau)): new queries rank old codes the way the new float space ranks the items;
  * ``unibct``: the positive o_i is replaced by the old codes refined over the new float
    neighbourhood graph, ``O_hat = (1-l)(I - l A)^-1 O``, ``A = column-softmax(X X^T / T)``;
  * ``neighbor``: neighbour-aware cross retrieval over the whole data, not the batch: the
    target t_i is the normalised mean old code of i's ``neighbor_k`` nearest new-float
    neighbours (mined once, exactly, in a pool of items); InfoNCE (anchor n_i, positive t_i,
    negatives t_j, temperature ``neighbor_tau``) or ``1 - cos(n_i, t_i)``. An oracle with
    the true float top-10 of a query as t would reach R10@10 0.24 against the old GloVe codes
    (M(old,old) 0.06), a linear map from x_new to t only 0.04 (BENCHMARKS.md section 3).

- :func:`train_upgrader` learns a light model ``h`` from stored old packed codes to
  new-version codes (BiCT/DMU forward compatibility) so old items can be upgraded in place
  without raw data or old floats; :class:`CodeUpgrader` saves and loads like ``Binarizer``
  (``config.json`` + ``model.safetensors``, no pickle).
"""

from __future__ import annotations

import inspect
import math
import time
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .codes import CodeSpec, max_query_bits
from .fileio import CorruptFileError
from .modelfile import CONFIG_NAME, load_state_strict, read_header, read_weights, write_model_dir
from .model import CALIBRATION_METRICS, Binarizer, ResidualMLP, sign_ste
from .train import (_Budget, _init_model, _init_scalar_quantizer, check_training_input,
                    code_recall, mine_neighbors, train_binarizer, with_neighbors)

__all__ = ["CompatWeights", "compat_loss", "train_compatible", "train_cross_queries",
           "fit_head_calibration",
           "CodeUpgrader", "train_upgrader", "UPGRADER_FORMAT_VERSION"]

UPGRADER_FORMAT_VERSION = 1
# top scores per held-out query that the head calibration fits on (fit_head_calibration)
CALIBRATION_TOP = 50


# ------------------------------------------------------------------------------ losses
@dataclass(frozen=True)
class CompatWeights:
    """Weights of the compatibility terms added to the self loss (module docstring).

    ``tau``: temperature of all terms; ``unibct_lambda``/``unibct_tau``: the refinement's l
    and T. ``neighbor_k``/``neighbor_tau``/``neighbor_loss`` ("nce" or "cos"): the
    ``neighbor`` term's neighbour count, temperature and form. A weight of 0 switches its term
    off. The default (plain BEBR compat at weight 0.5) measured best on GloVe -> MiniLM
    (BENCHMARKS.md section 3): the RACT, cross-distillation, UniBCT and neighbour terms did
    not improve cross-test recall over the aligned init there, and at lr 3e-3 the weight 0.5
    kept self-test within 3% of an independent model at 64x2 where 1.0 did not (-2.2% vs
    -3.1%, 6 epochs) while cross-test codes alone moved by 0.001.
    """

    compat: float = 0.5
    ract: float = 0.0
    cross_distill: float = 0.0
    unibct: float = 0.0
    tau: float = 0.2
    unibct_lambda: float = 0.9
    unibct_tau: float = 0.05
    neighbor: float = 0.0
    neighbor_k: int = 10
    neighbor_tau: float = 0.05
    neighbor_loss: str = "nce"

    def __post_init__(self) -> None:
        if self.neighbor_loss not in ("nce", "cos"):
            raise ValueError(f"CompatWeights.neighbor_loss must be 'nce' or 'cos', got "
                             f"{self.neighbor_loss!r}")
        if isinstance(self.neighbor_k, bool) or not isinstance(self.neighbor_k, (int, np.integer)) \
                or self.neighbor_k < 1:
            raise ValueError(f"CompatWeights.neighbor_k must be a positive int, got "
                             f"{self.neighbor_k!r}")
        for f in fields(self):
            if f.name == "neighbor_loss":
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"CompatWeights.{f.name} must be a finite number, got {v!r}")
            if v < 0:
                raise ValueError(f"CompatWeights.{f.name} must be >= 0, got {v}")
        if self.tau <= 0 or self.unibct_tau <= 0 or self.neighbor_tau <= 0:
            raise ValueError("CompatWeights.tau, unibct_tau and neighbor_tau must be > 0")
        if not 0 <= self.unibct_lambda < 1:
            raise ValueError(f"unibct_lambda must be in [0, 1), got {self.unibct_lambda}")
        if self.compat + self.ract + self.cross_distill + self.unibct + self.neighbor == 0:
            raise ValueError("all compatibility weights are 0: nothing ties the new codes "
                             "to the old code space (use train_binarizer instead)")


def _refine_old(old: torch.Tensor, x_new: torch.Tensor, lam: float, t: float) -> torch.Tensor:
    """UniBCT: O_hat = (1-l)(I - l A)^-1 O with A = column-softmax(X X^T / T)."""
    xn = F.normalize(x_new, dim=1)
    a = F.softmax(xn @ xn.T / t, dim=0)
    eye = torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    return (1 - lam) * torch.linalg.solve(eye - lam * a, old)


def compat_loss(new_codes: torch.Tensor, old_codes: torch.Tensor, x_new: torch.Tensor,
                weights: CompatWeights, targets: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The weighted compatibility terms for one batch (rows are the same items).

    ``new_codes`` (b, m) carries the gradient; ``old_codes`` (b, m) is treated as a constant;
    ``x_new`` (b, D) are the new floats (teacher of ``cross_distill`` and ``unibct``).
    """
    w = weights
    n = F.normalize(new_codes, dim=1)
    o = F.normalize(old_codes.detach(), dim=1)
    b = n.shape[0]
    target = torch.arange(b, device=n.device)
    no = n @ o.T / w.tau
    loss = new_codes.new_zeros(())
    if w.compat:
        loss = loss + w.compat * F.cross_entropy(no, target)
    if w.ract:
        eye = torch.eye(b, dtype=torch.bool, device=n.device)
        nn_ = (n @ n.T / w.tau).masked_fill(eye, -float("inf"))
        loss = loss + w.ract * F.cross_entropy(torch.cat([no, nn_], dim=1), target)
    if w.cross_distill:
        xn = F.normalize(x_new.detach(), dim=1)
        t = xn @ xn.T / w.tau
        p = F.softmax(t, dim=1)
        loss = loss + w.cross_distill * (p * (F.log_softmax(t, 1) - F.log_softmax(no, 1))).sum(1).mean()
    if w.unibct:
        with torch.no_grad():
            o_hat = F.normalize(_refine_old(o, x_new.detach(), w.unibct_lambda, w.unibct_tau),
                                dim=1)
        loss = loss + w.unibct * F.cross_entropy(n @ o_hat.T / w.tau, target)
    if w.neighbor:
        if targets is None or tuple(targets.shape) != tuple(new_codes.shape):
            raise ValueError("the neighbor term needs targets of the new codes' shape "
                             f"{tuple(new_codes.shape)}, got "
                             f"{None if targets is None else tuple(targets.shape)}")
        tn = F.normalize(targets.detach(), dim=1)
        if w.neighbor_loss == "cos":
            loss = loss + w.neighbor * (1 - (n * tn).sum(1)).mean()
        else:
            loss = loss + w.neighbor * F.cross_entropy(n @ tn.T / w.neighbor_tau, target)
    return loss


class _NeighborTargets:
    """Per-item target of the ``neighbor`` term: the normalised mean of the old code values of
    the item's ``k`` nearest new-float neighbours (exact cosine, the item itself excluded)
    among a seeded random pool of at most ``pool`` items. Computed on first use of a row
    (one pass over the pool per batch of new rows) and cached."""

    def __init__(self, xn, old_values: torch.Tensor, k: int, pool: int, seed: int):
        n = xn.shape[0]
        rng = np.random.default_rng([int(seed), 7])
        self.xn = xn
        self.pool_rows = np.sort(rng.choice(n, size=min(n, pool), replace=False))
        self.xp = F.normalize(torch.from_numpy(np.asarray(xn[self.pool_rows],
                                                          dtype=np.float32)), dim=1)
        self.op = old_values[torch.from_numpy(self.pool_rows)]
        self.k = min(int(k), len(self.pool_rows) - 1)
        if self.k < 1:
            raise ValueError("the neighbor term needs at least 2 items")
        self.cache = torch.zeros(n, old_values.shape[1])
        self.have = np.zeros(n, dtype=bool)

    def __call__(self, idx: np.ndarray) -> torch.Tensor:
        idx = np.asarray(idx, dtype=np.int64)
        missing = np.unique(idx[~self.have[idx]])
        for s in range(0, len(missing), 1024):
            rows = missing[s:s + 1024]
            q = F.normalize(torch.from_numpy(np.asarray(self.xn[rows], dtype=np.float32)), dim=1)
            sims = q @ self.xp.T
            pos = np.searchsorted(self.pool_rows, rows).clip(max=len(self.pool_rows) - 1)
            inpool = self.pool_rows[pos] == rows
            sims[torch.from_numpy(np.flatnonzero(inpool)), torch.from_numpy(pos[inpool])] = \
                -float("inf")
            nb = sims.topk(self.k, dim=1).indices
            self.cache[torch.from_numpy(rows)] = F.normalize(self.op[nb].mean(1), dim=1)
            self.have[rows] = True
        return self.cache[torch.from_numpy(idx)]


# ------------------------------------------------------------------------------ checks
def _check_pair(x_new, x_old):
    xn = check_training_input(x_new, "x_new")
    xo = check_training_input(x_old, "x_old")
    if xn.shape[0] != xo.shape[0]:
        raise ValueError(f"x_new and x_old must hold the same items (row i = item i in both), "
                         f"got {xn.shape[0]} and {xo.shape[0]} rows")
    return xn, xo


def _check_binarizer(model, name: str) -> Binarizer:
    if not isinstance(model, Binarizer):
        raise TypeError(f"{name} must be a bebr.Binarizer, got {type(model).__name__}")
    return model


# ------------------------------------------------------------------------------ training
def train_compatible(x_new, x_old, old: Binarizer, *, dim: Optional[int] = None,
                     bits: Optional[int] = None, weights: Optional[CompatWeights] = None,
                     version: Optional[str] = None, epochs: Optional[int] = None,
                     seed: int = 0, progress: bool = True, selection_cross_weight: float = 1.0,
                     neighbor_pool: int = 40_000, align: str = "neighbors",
                     cross_queries: bool = True, older_codes: Optional[Mapping] = None,
                     cross_kwargs: Optional[dict] = None,
                     **train_kwargs) -> Binarizer:
    """Train a new :class:`~bebr.Binarizer` on ``x_new`` compatible with the deployed ``old``.

    ``x_new`` (n, D_new) and ``x_old`` (n, D_old) are the new and old upstream embeddings of
    the same n items; ``old`` is frozen (never modified). The new model's codes share the
    old code space: ``dim``/``bits`` default to, and must equal, ``old.dim``/``old.bits``.
    ``weights``: the compatibility terms (:class:`CompatWeights`, default the BEBR compat
    InfoNCE). ``selection_cross_weight``: model selection (the best validation epoch)
    maximises self recall + this weight * cross recall (new queries vs old codes); the
    per-epoch (self, cross) validation recalls land in ``train_info["val_self_cross"]``.
    ``align``: what the init's Procrustes rotation aligns the new PCA basis with:
    ``"neighbors"`` (default) the neighbour targets of the ``neighbor`` term (mean old code of
    each item's ``weights.neighbor_k`` new-float neighbours), ``"old"`` the item's own old
    code. Measured (BENCHMARKS.md section 3): v3 (MiniLM CLS) against v2 codes M(v3,v2) 0.521
    with "neighbors" vs 0.516 with "old" (M(v2,v2) 0.517); GloVe -> MiniLM equal within 0.001.
    ``neighbor_pool``: the ``neighbor`` term and ``align="neighbors"`` mine each item's neighbours among a seeded
    random pool of at most this many items (cost: items x pool x D_new once).
    Other keyword arguments go to :func:`bebr.train.train_binarizer`
    (``batch_size``, ``lr``, ``loss``, ``max_time_s``, ``log``, ...); defaults differing
    from train's: ``lr=3e-3``, ``patience=epochs`` (no early stop).
    The result gets a fresh ``version`` (or the one given) and ``compatible_with ==
    old.version``; chaining (v3 against v2 against v1) keeps the chain in one code space.
    ``cross_queries`` (default on): also learn query heads (:func:`train_cross_queries`,
    options in ``cross_kwargs``) into ``old.version``'s codes (``old.encode(x_old)``) and into
    every version of ``older_codes`` (``{version id: packed codes of the same n items}``,
    e.g. read from the index), for searches with ``Index.search(..., version_queries=)``.
    ``max_time_s`` (a train option) bounds the whole call: the init's neighbour targets get
    at most 15% of it, training at most 60% of what is then left when heads follow (all of it
    otherwise), each query head an equal share of the rest; ``train_info["time_budget"]``
    lists what the deadline cut.
    """
    budget = _Budget(train_kwargs.get("max_time_s"))
    old = _check_binarizer(old, "old")
    xn, xo = _check_pair(x_new, x_old)
    if xo.shape[1] != old.in_dim:
        raise ValueError(f"x_old has {xo.shape[1]} columns but the old model expects "
                         f"in_dim={old.in_dim}")
    dim = old.dim if dim is None else dim
    bits = old.bits if bits is None else bits
    if (dim, bits) != (old.dim, old.bits):
        raise ValueError(f"compatible codes must share the old code space: dim={dim}, "
                         f"bits={bits} differ from the old model's dim={old.dim}, "
                         f"bits={old.bits}")
    weights = CompatWeights() if weights is None else weights
    if not isinstance(weights, CompatWeights):
        raise TypeError(f"weights must be CompatWeights, got {type(weights).__name__}")
    for key in ("extra_loss", "val_score", "model"):
        if key in train_kwargs:
            raise TypeError(f"train_compatible sets {key} itself")
    if older_codes is not None and not isinstance(older_codes, Mapping):
        raise TypeError("older_codes must be a mapping {version id: packed codes}")
    if cross_queries:  # the head options, checked before minutes of training, not after
        if cross_kwargs is not None and not isinstance(cross_kwargs, Mapping):
            raise TypeError("cross_kwargs must be a mapping of train_cross_queries options")
        ck = dict(seed=seed, progress=progress, threads=train_kwargs.get("threads"),
                  max_time_s=train_kwargs.get("max_time_s"))
        ck.update(cross_kwargs or {})
        try:
            opts = inspect.signature(train_cross_queries).bind(None, None, None, None, **ck)
        except TypeError as e:
            raise TypeError(f"cross_kwargs: {e}") from None
        opts.apply_defaults()
        for ver, codes in (older_codes or {}).items():
            if codes.shape[0] != xn.shape[0]:
                raise ValueError(f"older_codes[{ver!r}] has {codes.shape[0]} rows, x_new "
                                 f"{xn.shape[0]}")
        _check_head_options(bits, **{k: opts.arguments[k] for k in (
            "calibrate", "teacher", "batch_size", "negatives", "mined_k", "patience", "members",
            "query_bits")})
    version = uuid.uuid4().hex if version is None else version
    if not isinstance(version, str) or not version:
        raise ValueError("version must be a non-empty str")
    if version == old.version:
        raise ValueError(f"the new version id must differ from the old one ({version!r})")

    old_values = torch.from_numpy(old.encode_values(xo))  # frozen old codes, (n, dim)

    if isinstance(neighbor_pool, bool) or not isinstance(neighbor_pool, (int, np.integer)) \
            or neighbor_pool < 2:
        raise ValueError(f"neighbor_pool must be an int >= 2, got {neighbor_pool!r}")
    if align not in ("old", "neighbors"):
        raise ValueError(f"align must be 'old' or 'neighbors', got {align!r}")
    targets = (_NeighborTargets(xn, old_values, weights.neighbor_k, int(neighbor_pool), seed)
               if weights.neighbor or align == "neighbors" else None)

    def extra(model, out, xb, idx):
        ob = old_values[torch.from_numpy(np.asarray(idx))].to(out.codes.device)
        tg = None if targets is None else targets(idx).to(out.codes.device)
        return compat_loss(out.codes, ob, xb, weights, tg)

    val_log = []

    def val_score(model, recall, q_rows, b_rows, truth):
        # model selection counts cross-version recall too: new queries vs old codes
        q = np.asarray(xn[np.asarray(q_rows)], dtype=np.float32)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        cross = code_recall(torch.from_numpy(model.encode_values(q)),
                            old_values[torch.from_numpy(np.asarray(b_rows))], truth)
        val_log.append((float(recall), float(cross)))
        return recall + selection_cross_weight * cross

    # Start in the old code space. dim <= D_new: train's scalar-quantizer init on the top-dim
    # PCA basis of the new floats, rotated (orthogonal Procrustes) onto the old code values
    # (align="old") or onto the mean old code of each item's new-float neighbours (align=
    # "neighbors": what a new query should score high against) instead of randomly, so the init keeps the independent init's self quality and its
    # codes agree with the old ones as far as a rotation allows. dim > D_new: the first
    # step is the least-squares map onto the old codes.
    # fine-tuning from an aligned init, no early stop before the last epoch; lr 3e-3: with
    # 5e-4 the models stayed near the init and 6 epochs fell short of an independent model's
    # self-test (GloVe -> MiniLM 64x2 -6.3% vs -3.1%; 128x2 -2.0% vs -1.8%)
    train_kwargs.setdefault("lr", 3e-3)
    # mined-neighbour batches (train's default neighbors=3): at lr 3e-3 they lift self-test
    # above random batches (GloVe -> MiniLM 64x2, codes alone: +2.5% vs -4.5% against an
    # independent model at seed 1; BENCHMARKS.md section 3); at lr 5e-4 they had fallen
    # below the init within one epoch
    train_kwargs.setdefault("patience", epochs if epochs is not None else 1000)
    defaults = inspect.signature(train_binarizer).parameters
    hidden = train_kwargs.pop("hidden", defaults["hidden"].default)
    depth = train_kwargs.pop("depth", defaults["depth"].default)
    rows = np.sort(np.random.default_rng(seed).choice(
        xn.shape[0], size=min(xn.shape[0], 50_000), replace=False))
    if align == "neighbors":  # the init's targets: the most expensive step before training
        rows = _fill_targets(targets, rows, budget.share(0.15), progress, budget.cuts, seed)
    xi = F.normalize(torch.from_numpy(np.asarray(xn[rows], dtype=np.float32)), dim=1)
    oi = old_values[torch.from_numpy(rows)]
    if align == "neighbors":  # rotate onto the neighbour targets, scaled like the old codes
        oi = targets(rows) * oi.norm(dim=1, keepdim=True)

    def regress(xc):
        sol = torch.linalg.lstsq(xc.double(), oi.double()).solution  # (D, dim)
        return sol.T.float()

    def procrustes(xc):
        cov = (xc.T @ xc).double()
        _, vecs = torch.linalg.eigh(cov)
        v = vecs.flip(1)[:, :dim]  # (D, dim) top PCA directions
        z = F.normalize(xc, dim=1).double() @ v
        u, _, wt = torch.linalg.svd(z.T @ oi.double())
        return ((u @ wt).T @ v.T).float()  # (dim, D): rows orthonormal

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = Binarizer(xn.shape[1], dim, bits, hidden=hidden, depth=depth, version=version)
        gen = torch.Generator().manual_seed(int(seed))
        if dim <= xn.shape[1]:
            with torch.no_grad():
                model.in_mean.copy_(xi.mean(0))
                xc = xi - model.in_mean
                _init_scalar_quantizer(model, xc, gen, basis=procrustes(xc))
        else:
            _init_model(model, xi, gen, True, regress)
    if budget.end is not None:  # training gets its share of what is left, heads the rest
        train_kwargs["max_time_s"] = budget.share(0.6 if cross_queries else 1.0)
    model = train_binarizer(xn, dim, bits, epochs=epochs, seed=seed, progress=progress,
                            model=model, extra_loss=extra, val_score=val_score,
                            **train_kwargs)
    model.config.compatible_with = old.version
    model.train_info["compat_weights"] = asdict(weights)
    model.train_info["val_self_cross"] = val_log
    budget.cuts += model.train_info.pop("time_budget", {}).get("cuts", [])
    if cross_queries:
        targets = {old.version: old.encode(xo)}
        targets.update(older_codes or {})
        for i, (ver, codes) in enumerate(targets.items()):
            kw = dict(ck)
            if budget.end is not None:  # an equal share of what is left for each head
                share = budget.left() / (len(targets) - i)
                given = (cross_kwargs or {}).get("max_time_s")
                kw["max_time_s"] = share if given is None else min(float(given), share)
            train_cross_queries(model, xn, codes, ver, **kw)
            head_budget = model.train_info["cross_val"][ver].get("time_budget") or {}
            budget.cuts += [f"query head -> {ver}: {c}" for c in head_budget.get("cuts", [])]
    if budget.end is not None:
        model.train_info["time_budget"] = budget.info()
    return model


def _fill_targets(targets, rows: np.ndarray, limit_s: Optional[float], progress: bool,
                  cuts: list, seed: int, piece: int = 1024) -> np.ndarray:
    """Compute ``targets`` (:class:`_NeighborTargets`) of ``rows`` (sorted) in pieces with a
    progress bar; with ``limit_s``, a seeded random subset of the rows sized to fit (timed on
    the first piece), stopping at the limit. Returns the rows whose targets are computed (all
    of them when the limit is not reached: then the same values as one call)."""
    from tqdm.auto import tqdm

    t0 = time.monotonic()
    bar = tqdm(total=len(rows), disable=not progress, desc="neighbour targets", unit="row",
               unit_scale=True, dynamic_ncols=True, mininterval=0.5)
    n_all = len(rows)
    done = 0
    try:
        while done < len(rows):
            if limit_s is not None and done > 0 and time.monotonic() - t0 > limit_s:
                cuts.append(f"init neighbour targets: stopped at the time limit ({limit_s:.1f} s) "
                            f"after {done} of {n_all} rows; the init is fitted on those")
                rows = rows[:done]
                break
            before = done
            targets(rows[done:done + piece])
            done = min(done + piece, len(rows))
            bar.update(done - before)
            if limit_s is not None and before == 0 and done < len(rows):  # timed: fit the rest
                per_row = (time.monotonic() - t0) / done
                fit = int(limit_s / max(per_row, 1e-12))
                if fit < len(rows):
                    rest = rows[done:]
                    keep = np.random.default_rng([int(seed), 11]).choice(
                        len(rest), size=max(0, fit - done), replace=False)
                    rows = np.concatenate([rows[:done], rest[np.sort(keep)]])
                    bar.total = len(rows)
                    cuts.append(f"init neighbour targets: {len(rows)} of {n_all} rows (all of "
                                f"them would take about {per_row * n_all:.0f} s, the limit is "
                                f"{limit_s:.1f} s)")
    finally:
        bar.close()
    return rows


# ------------------------------------------------------------------------------ query heads
def train_cross_queries(new: Binarizer, x_new, old_codes, old_version: str, *,
                        epochs: Optional[int] = None, query_bits: int = 4,
                        batch_size: int = 256, negatives: int = 2048, mined_k: int = 10,
                        tau_teacher: float = 0.05, tau: float = 0.07, lr: float = 1e-3,
                        val_fraction: float = 0.05, patience: int = 4, seed: int = 0,
                        teacher: str = "neighbors", members: int = 3,
                        calibrate: bool = True,
                        max_time_s: Optional[float] = None, progress: bool = True,
                        threads: Optional[int] = None) -> Binarizer:
    """Learn ``new``'s query head into the code space of stored ``old_version`` codes.

    ``x_new`` (n, D_new): the new upstream embeddings of n items; ``old_codes``: those items'
    stored packed codes of version ``old_version`` (``CodeSpec(new.dim, new.bits)``, e.g.
    ``Index.get_codes``): no old floats and no old model are needed, so every version still
    in an index can get a head. The head (``new.add_cross_head``: an ensemble of residual
    MLPs on the L2-normalised, centered input, :class:`bebr.model.QueryHead`) is trained so
    that the new float space's neighbourhoods are what the query finds among old codes: per anchor, a softmax over candidates (the batch, each
    anchor's ``mined_k`` new-float neighbours and ``negatives`` random items; the anchor
    itself excluded, as a query is never its own answer) of ``cos(head(x_a), o_c) / tau``
    is fitted (KL) to the softmax of ``cos(x_a, x_c) / tau_teacher``. Start: the ridge
    least-squares map onto the old code values (float64). Validation (:func:`head_split`):
    held-out rows as queries, their ``query_bits``-bit query codes against the old codes of a
    held-out gallery (items the head never trains on), R10@10 against the new float top-10
    among that gallery; early stopping keeps the best epoch, the start included
    (``new.train_info["cross_val"][old_version]``).
    ``members``: an ensemble of that many MLPs, each trained so with its own seed (batches,
    negatives, initial branches) and all sharing the start; the head's query direction is
    the mean of their unit outputs (BENCHMARKS.md section 3: 3 members lift cross-test
    recall over one; training time grows with the members). ``max_time_s`` bounds the whole
    call: neighbour mining gets at most 30% of it, each member an equal share of what is then
    left less 15% kept for the calibration (which always runs: one encoding of the pool); what
    was cut is listed in ``new.train_info["cross_val"][old_version]["time_budget"]``.
    ``calibrate``: then fit the head's score calibration on the same held-out queries
    (:func:`fit_head_calibration`; ``new.cross_calibration(old_version)``), so that a mixed
    index ranks the head's scores against old codes and the own codes' scores on one scale.
    Modifies and returns ``new``. Deterministic for a seed (and ``threads``).
    """
    new = _check_binarizer(new, "new")
    xn = check_training_input(x_new, "x_new", min_rows=20)
    if xn.shape[1] != new.in_dim:
        raise ValueError(f"x_new has {xn.shape[1]} columns, the new model expects "
                         f"in_dim={new.in_dim}")
    oc = new.spec.check_packed(old_codes, "old_codes")
    if oc.shape[0] != xn.shape[0]:
        raise ValueError(f"old_codes must hold the items of x_new row for row: "
                         f"{oc.shape[0]} codes for {xn.shape[0]} rows")
    if not isinstance(old_version, str) or not old_version:
        raise ValueError("old_version must be a non-empty str")
    if old_version == new.version:
        raise ValueError(f"old_version {old_version!r} is the new model's own version")
    _check_head_options(new.bits, calibrate=calibrate, teacher=teacher, batch_size=batch_size,
                        negatives=negatives, mined_k=mined_k, patience=patience,
                        members=members, query_bits=query_bits)
    budget = _Budget(max_time_s)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _train_cross_queries(**locals())
    finally:
        torch.set_num_threads(old_threads)


def head_split(n: int, seed: int = 0, val_fraction: float = 0.05) -> tuple:
    """The rows of an n-row paired sample that :func:`train_cross_queries` holds out, as
    sorted int64 arrays ``(val_queries, val_gallery, fit)``: validation queries AND a
    validation gallery, so that early stopping, calibrations and anything else chosen on
    them see items whose codes the head never trained on (a gallery of training items
    rewarded memorising them: MiniLM -> MPNet, 9k pairs, 0.40 on training items against
    0.32 on unseen ones, where the old queries reach 0.355). Deterministic for a seed."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if not 0 < val_fraction < 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5), got {val_fraction!r}")
    nval = int(min(2000, max(10, round(val_fraction * n))))
    ngal = int(min(8000, max(4 * nval, round(0.1 * n))))
    if n - nval - ngal < 10:
        raise ValueError(f"a paired sample of {n} rows is too small for a query head: "
                         f"{nval} validation queries and a {ngal}-item validation gallery "
                         f"are held out and at least 10 rows must be left to fit")
    perm = np.random.default_rng(seed).permutation(int(n))
    return (np.sort(perm[:nval]), np.sort(perm[nval:nval + ngal]),
            np.sort(perm[nval + ngal:]))


def _ridge_map(a: torch.Tensor, b: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """W (a.shape[1], b.shape[1]) minimising |a W - b|^2 + ridge * n * |W|^2, in float64:
    normalised centered embeddings are often nearly rank-deficient (MPNet, 9k rows: condition
    number 1e9), where a float32 least-squares solve returns a map worse than none
    (validation R10@10 0.08 against 0.37)."""
    a64, b64 = a.double(), b.double()
    gram = a64.T @ a64
    gram += ridge * a64.shape[0] * torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram, a64.T @ b64).to(a.dtype)


def _check_head_options(bits: int, *, calibrate, teacher, batch_size, negatives, mined_k,
                        patience, members, query_bits) -> None:
    """The data-free options of :func:`train_cross_queries`, checked for ``bits``-bit codes."""
    if not isinstance(calibrate, bool):
        raise TypeError(f"calibrate must be a bool, got {type(calibrate).__name__}")
    if teacher not in ("neighbors", "softmax"):
        raise ValueError(f"teacher must be 'neighbors' or 'softmax', got {teacher!r}")
    for name, v in (("batch_size", batch_size), ("negatives", negatives),
                    ("mined_k", mined_k), ("patience", patience), ("members", members)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if isinstance(query_bits, bool) or not isinstance(query_bits, (int, np.integer)) \
            or not 1 <= query_bits <= max_query_bits(bits):
        raise ValueError(f"query_bits must be an int in [1, {max_query_bits(bits)}] over "
                         f"{bits}-bit codes, got {query_bits!r}")


def _train_cross_queries(*, new, xn, oc, old_version, epochs, query_bits, batch_size, negatives,
                         mined_k, tau_teacher, tau, lr, val_fraction, patience, seed,
                         budget, progress, teacher, members, calibrate, **_unused):
    x = F.normalize(torch.from_numpy(np.asarray(xn, dtype=np.float32)), dim=1)
    o = F.normalize(torch.from_numpy(new.spec.values(oc)), dim=1)
    n = x.shape[0]
    val_q, val_g, tr = (torch.from_numpy(a) for a in head_split(n, seed, val_fraction))
    truth = (x[val_q] @ x[val_g].T).topk(min(10, len(val_g)), dim=1).indices
    xt, ot, og = x[tr], o[tr], o[val_g]
    nbrs = mine_neighbors(xt, mined_k, time_limit_s=budget.share(0.3), progress=progress,
                          seed=seed, cuts=budget.cuts)
    if epochs is None:  # ~ 600k anchors visited; early stopping trims it
        epochs = int(min(30, max(3, round(6e5 / len(tr)))))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        head = new.add_cross_head(old_version, int(members))
    with torch.no_grad():
        head.mean.copy_(xt.mean(0))
        start = _ridge_map(xt - head.mean, ot).T
        for net in head.nets:  # every member starts from the least-squares map
            net.skip.weight.copy_(start)
    qspec = CodeSpec(new.dim, query_bits)

    def val_recall(fn):
        head.eval()
        with torch.no_grad():
            z = fn(x[val_q]).numpy()
        head.train()
        q = torch.from_numpy(qspec.level_values()[qspec.quantize_angle(z)])
        return code_recall(q, og, truth)

    from tqdm.auto import tqdm
    steps = math.ceil(len(tr) / batch_size)
    bar = tqdm(total=members * epochs * steps, disable=not progress,
               desc=f"query head -> {old_version}", dynamic_ncols=True)
    logs = []
    reserve = 0.15 * budget.left() if calibrate else 0.0  # kept for the calibration
    for k in range(members):
        gen = torch.Generator().manual_seed(int(seed) + 7919 * k)
        end = None if budget.end is None else \
            time.monotonic() + max(0.0, budget.left() - reserve) / (members - k)
        logs.append(_train_head_member(head, k, xt, ot, nbrs, gen, epochs, steps, batch_size,
                                       negatives, tau_teacher, tau, lr, patience, teacher,
                                       end, bar, lambda xs, k=k: head.member(k, xs),
                                       val_recall, budget.cuts))
    bar.close()
    head.eval()
    best = val_recall(head)
    cal = {m: (1.0, 0.0) for m in CALIBRATION_METRICS}
    if calibrate:  # never cut: one encoding of the pool, and a mixed index ranks by it
        cal = _fit_calibrations(new, old_version, x[val_q].numpy(), x[val_g].numpy(),
                                oc[val_g.numpy()], truth.numpy(), query_bits, CALIBRATION_TOP,
                                CALIBRATION_METRICS)
        head.calibration.copy_(torch.tensor([cal[m] for m in CALIBRATION_METRICS]))
    info = getattr(new, "train_info", None)
    if not isinstance(info, dict):
        info = new.train_info = {}
    info.setdefault("cross_val", {})[old_version] = {
        "best_r10@10": best, "log": logs[0], "member_logs": logs, "members": int(members),
        "member_best": [max(e["val_r10@10"] for e in lg) for lg in logs],
        "query_bits": query_bits, "calibration": cal}
    if budget.end is not None:
        info["cross_val"][old_version]["time_budget"] = budget.info()
    return new


def _train_head_member(head, k, xt, ot, nbrs, gen, epochs, steps, batch_size, negatives,
                       tau_teacher, tau, lr, patience, teacher, end, bar, fwd,
                       val_recall, cuts) -> list:
    """Fit member ``k`` of ``head`` (listwise KL, train_cross_queries); keeps its best
    validation epoch (the first of equal ones); stops at ``end`` (``time.monotonic``, None:
    no limit), noting it in ``cuts``; returns its per-epoch log."""
    net = head.nets[k]
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    # linear warm-up over the first epoch: full-rate Adam steps on the fresh MLP branches
    # wrecked the least-squares start (v3 MiniLM-CLS -> v2 codes: validation 0.50 -> 0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / steps))
    best, bad, log = val_recall(fwd), 0, []
    best_state = {kk: v.detach().clone() for kk, v in net.state_dict().items()}
    log.append({"epoch": 0, "val_r10@10": best})
    t0 = time.perf_counter()
    head.train()
    ntr = xt.shape[0]
    for ep in range(1, epochs + 1):
        order = torch.randperm(ntr, generator=gen)
        stop = False
        for st in range(steps):
            a = order[st * batch_size:(st + 1) * batch_size]
            if len(a) < 2:
                continue
            cand = torch.cat([a, nbrs[a].reshape(-1),
                              torch.randint(0, ntr, (negatives,), generator=gen)])
            own = a[:, None] == cand[None, :]
            xa = xt[a]
            tl = (xa @ xt[cand].T / tau_teacher).masked_fill(own, -1e9)
            if teacher == "neighbors":  # only the anchor's own mined neighbours are targets
                mine = torch.zeros_like(own)
                kn = nbrs.shape[1]
                rows = torch.arange(len(a))[:, None]
                mine[rows, len(a) + rows * kn + torch.arange(kn)] = True
                tl = tl.masked_fill(~mine, -1e9)
            target = F.softmax(tl, dim=1)
            logits = (F.normalize(fwd(xa), dim=1) @ ot[cand].T / tau).masked_fill(own, -1e9)
            loss = -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(1)
            if end is not None and time.monotonic() >= end:
                stop = True
                cuts.append(f"member {k}: stopped at its share of the time limit in epoch {ep} "
                            f"of {epochs}, step {st + 1} of {steps}; kept its best epoch")
                break
        rec = val_recall(fwd)
        log.append({"epoch": ep, "val_r10@10": rec, "loss": float(loss.detach()),
                    "time_s": time.perf_counter() - t0})
        bar.set_postfix(member=k, epoch=ep, val_r10=f"{rec:.4f}")
        if rec > best:
            best, bad = rec, 0
            best_state = {kk: v.detach().clone() for kk, v in net.state_dict().items()}
        else:
            bad += 1
        if stop or bad >= patience:
            break
    net.load_state_dict(best_state)
    return log


def _logistic_1d(s: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> tuple:
    """(w, c) of P(y = 1 | s) = sigmoid(w s + c), by Newton's method in float64."""
    s, y = np.asarray(s, np.float64), np.asarray(y, np.float64)
    mu, sd = s.mean(), s.std()
    sd = sd if sd > 0 else 1.0
    X = np.stack([(s - mu) / sd, np.ones_like(s)], 1)
    beta = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(X @ beta, -50, 50)))
        grad = X.T @ (p - y) + ridge * beta
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-9:
            break
    return beta[0] / sd, beta[1] - beta[0] * mu / sd


def fit_head_calibration(new: Binarizer, old_version: str, x_queries, x_pool, old_pool_codes,
                         truth, query_bits: int = 4, top: int = CALIBRATION_TOP,
                         metric: str = "cosine") -> tuple:
    """``(scale, shift)`` putting the query head's scores on the own codes' scale, for an
    index of ``metric`` ("cosine": cosine of the code values; "ip": their inner product).

    ``x_queries`` (nq, D_new): held-out new floats used as queries; ``x_pool`` (n, D_new) and
    ``old_pool_codes`` (n packed codes of ``old_version``): the same pool items under both
    versions; ``truth`` (nq, k): each query's true neighbours (rows of the pool). Per version,
    the ``top`` best cosine scores of each query (head codes against the pool's old codes;
    own query codes against the pool's own codes, ``new.encode``) are labelled by whether the
    item is a true neighbour and fitted by a logistic regression ``P = sigmoid(w s + c)``;
    a head score s then maps to ``(w_h s + c_h - c_own) / w_own``: the own-code score with
    the same probability of being a true neighbour. A ranking by these scores merges the two
    versions' candidates by that probability. (1, 0) if a fit is degenerate (w <= 0).
    """
    if metric not in CALIBRATION_METRICS:
        raise ValueError(f"metric must be one of {CALIBRATION_METRICS}, got {metric!r}")
    return _fit_calibrations(new, old_version, x_queries, x_pool, old_pool_codes, truth,
                             query_bits, top, (metric,))[metric]


def _fit_calibrations(new, old_version, x_queries, x_pool, old_pool_codes, truth, query_bits,
                      top, metrics) -> dict:
    """:func:`fit_head_calibration` for each of ``metrics``, the codes encoded once."""
    qspec = CodeSpec(new.dim, query_bits)
    xq = np.asarray(x_queries, dtype=np.float32)
    truth = torch.from_numpy(np.asarray(truth, dtype=np.int64))
    sets = ((new.encode_query_codes(xq, query_bits, target=old_version), old_pool_codes),
            (new.encode_query_codes(xq, query_bits), new.encode(np.asarray(x_pool, np.float32))))
    sets = [(torch.from_numpy(qspec.values(q)), torch.from_numpy(new.spec.values(g)))
            for q, g in sets]
    return {metric: _fit_calibration(sets, truth, top, metric) for metric in metrics}


def _fit_calibration(sets, truth, top, metric) -> tuple:
    unit = F.normalize if metric == "cosine" else (lambda t, dim: t)
    fits = []
    for q_values, g_values in sets:
        q = unit(q_values, dim=1)
        g = unit(g_values, dim=1)
        m = min(int(top), g.shape[0])
        scores, labels = [], []
        for i in range(0, q.shape[0], 256):
            sc, ix = (q[i:i + 256] @ g.T).topk(m, dim=1)
            scores.append(sc.reshape(-1))
            labels.append((ix[:, :, None] == truth[i:i + 256, None, :]).any(2).reshape(-1))
        y = torch.cat(labels).numpy()
        if y.all() or not y.any():
            return 1.0, 0.0
        fits.append(_logistic_1d(torch.cat(scores).numpy(), y))
    (wh, ch), (ws, cs) = fits
    if not (wh > 0 and ws > 0):
        return 1.0, 0.0
    return float(wh / ws), float((ch - cs) / ws)


# ------------------------------------------------------------------------------ upgrader
def _quantize_ste(y: torch.Tensor, bits: int):
    """Recurrent sign quantization of y to the level grid: c_t = c_{t-1} + 2^-t sign(y -
    c_{t-1}), c_0 = sign(y); equals the nearest level. Returns (codes, sign steps)."""
    b = sign_ste(y)
    c, steps = b, [b]
    for t in range(1, bits):
        b = sign_ste((y - c) * (2.0 ** t))
        c = c + (2.0 ** -t) * b
        steps.append(b)
    return c, steps


class CodeUpgrader(nn.Module):
    """Maps stored codes of version ``from_version`` to codes of version ``to_version``.

    ``h(o) = quantize(skip(o) + MLP blocks(o))`` on code values; the skip starts at the
    identity when the specs agree, so an untrained upgrader leaves codes unchanged.
    """

    model_name = "code_upgrader"
    _CONFIG_KEYS = ("in_spec", "out_spec", "hidden", "depth", "from_version", "to_version")

    def __init__(self, in_spec: CodeSpec, out_spec: CodeSpec, *, hidden: int = 512,
                 depth: int = 2, from_version: str = "", to_version: str = ""):
        super().__init__()
        if not isinstance(in_spec, CodeSpec) or not isinstance(out_spec, CodeSpec):
            raise TypeError("in_spec and out_spec must be CodeSpec")
        for name, v in (("hidden", hidden), ("depth", depth)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if hidden < 1 or depth < 0:
            raise ValueError(f"need hidden >= 1 and depth >= 0, got {hidden}, {depth}")
        if not isinstance(from_version, str) or not isinstance(to_version, str):
            raise TypeError("from_version and to_version must be str")
        self.in_spec, self.out_spec = in_spec, out_spec
        self.hidden, self.depth = int(hidden), int(depth)
        self.from_version, self.to_version = from_version, to_version
        self.net = ResidualMLP(in_spec.dim, out_spec.dim, self.hidden, self.depth)
        if in_spec.dim == out_spec.dim:
            with torch.no_grad():
                self.net.skip.weight.copy_(torch.eye(in_spec.dim))

    def __repr__(self) -> str:
        return (f"CodeUpgrader({self.in_spec} -> {self.out_spec}, hidden={self.hidden}, "
                f"depth={self.depth}, {self.from_version!r} -> {self.to_version!r})")

    def forward(self, old_values: torch.Tensor) -> torch.Tensor:
        """Straight-through upgraded code values (n, out dim) from old code values."""
        return _quantize_ste(self.net(old_values), self.out_spec.bits)[0]

    @torch.no_grad()
    def upgrade(self, old_packed: np.ndarray, batch_size: int = 8192) -> np.ndarray:
        """Packed old codes (n, in_spec.code_bytes) -> packed new-version codes."""
        arr = self.in_spec.check_packed(old_packed, "old_packed")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        out = np.empty((arr.shape[0], self.out_spec.code_bytes), dtype=np.uint8)
        was = self.training
        self.eval()
        try:
            for s in range(0, arr.shape[0], batch_size):
                v = torch.from_numpy(self.in_spec.values(arr[s:s + batch_size]))
                _, steps = _quantize_ste(self.net(v), self.out_spec.bits)
                lv = torch.zeros(v.shape[0], self.out_spec.dim, dtype=torch.uint8)
                for t, b in enumerate(steps):
                    lv |= (b > 0).to(torch.uint8) << (self.out_spec.bits - 1 - t)
                out[s:s + batch_size] = self.out_spec.pack(lv.numpy())
        finally:
            self.train(was)
        return out

    # -------------------------------------------------------------- save / load
    def _header_config(self) -> dict:
        return {"in_spec": self.in_spec.to_dict(), "out_spec": self.out_spec.to_dict(),
                "hidden": self.hidden, "depth": self.depth,
                "from_version": self.from_version, "to_version": self.to_version}

    def save(self, path) -> Path:
        """Write ``path/config.json`` + ``path/model.safetensors`` atomically (no pickle)."""
        header = {"format": "bebr.upgrader", "format_version": UPGRADER_FORMAT_VERSION,
                  "model": self.model_name, "config": self._header_config()}
        return write_model_dir(path, self, self.model_name, header)

    @classmethod
    def load(cls, path) -> "CodeUpgrader":
        """Load a saved upgrader; corrupted, truncated or foreign files raise
        :class:`bebr.fileio.CorruptFileError`. Never unpickles."""
        from .codes import MAX_BITS

        p = Path(path)
        header = read_header(p, "bebr.upgrader", UPGRADER_FORMAT_VERSION, "CodeUpgrader")
        cfg_path = p / CONFIG_NAME
        if header.get("model") != cls.model_name:
            raise CorruptFileError(f"{cfg_path}: not a bebr CodeUpgrader header")
        try:
            c = header["config"]
            if not isinstance(c, dict) or set(c) != set(cls._CONFIG_KEYS):
                raise ValueError(f"config keys {sorted(c) if isinstance(c, dict) else c!r} "
                                 f"are not {sorted(cls._CONFIG_KEYS)}")
            specs = CodeSpec.from_dict(c["in_spec"]), CodeSpec.from_dict(c["out_spec"])
            for what, sp in zip(("in_spec", "out_spec"), specs):
                if sp.bits > MAX_BITS:
                    raise ValueError(f"{what} {sp}: stored codes have at most {MAX_BITS} bits")
            with torch.device("meta"):  # check the fields without allocating the weights
                cls(*specs, hidden=c["hidden"], depth=c["depth"],
                    from_version=c["from_version"], to_version=c["to_version"])
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(f"{cfg_path}: bad header field ({e})") from e
        model = load_state_strict(
            lambda: cls(*specs, hidden=c["hidden"], depth=c["depth"],
                        from_version=c["from_version"], to_version=c["to_version"]),
            read_weights(p, header), p, cls.model_name)
        model.eval()
        return model


def train_upgrader(old: Union[np.ndarray, Binarizer], new: Binarizer, x_new, *,
                   x_old=None, old_spec: Optional[CodeSpec] = None,
                   old_version: Optional[str] = None, hidden: int = 512, depth: int = 2,
                   epochs: int = 10, batch_size: int = 1024, lr: float = 1e-3,
                   neighbors: int = 3, tau: float = 0.05, nce_weight: float = 1.0,
                   seed: int = 0, progress: bool = True,
                   max_time_s: Optional[float] = None,
                   threads: Optional[int] = None) -> CodeUpgrader:
    """Learn ``h``: stored old codes -> ``new``-version codes, from a paired sample.

    ``old``: the old packed codes of n items (uint8 ``(n, old_spec.code_bytes)``; ``old_spec``
    defaults to ``new.spec``), or the old ``Binarizer`` together with ``x_old`` (its floats of
    the same items, encoded here). ``x_new`` (n, new.in_dim): the new floats of those items,
    used only to train. Loss, over batches of random items plus mined new-float neighbours:
    row-wise KL(softmax(cos(x_i, x_j)/tau) || softmax(cos(n_i, h(o_j))/tau)) (new queries
    rank upgraded codes like the new float space) + ``nce_weight`` * InfoNCE(h(o_i) vs n_i,
    negatives n_j). At serving time ``upgrade`` needs only the old codes.
    ``threads``: torch CPU threads while training (1 is fastest on a loaded machine).
    """
    if threads is not None and (isinstance(threads, bool) or not isinstance(
            threads, (int, np.integer)) or threads < 1):
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        return _train_upgrader(old, new, x_new, x_old, old_spec, old_version, hidden, depth,
                               epochs, batch_size, lr, neighbors, tau, nce_weight, seed,
                               progress, max_time_s)
    finally:
        torch.set_num_threads(old_threads)


def _train_upgrader(old, new, x_new, x_old, old_spec, old_version, hidden, depth, epochs,
                    batch_size, lr, neighbors, tau, nce_weight, seed, progress, max_time_s):
    new = _check_binarizer(new, "new")
    if isinstance(old, Binarizer):
        if x_old is None:
            raise ValueError("with an old Binarizer, pass x_old (its floats of the items)")
        xo = check_training_input(x_old, "x_old")
        if xo.shape[1] != old.in_dim:
            raise ValueError(f"x_old has {xo.shape[1]} columns but the old model expects "
                             f"in_dim={old.in_dim}")
        old_spec, old_version = old.spec, old.version if old_version is None else old_version
        old_packed = old.encode(xo)
    elif isinstance(old, np.ndarray):
        if x_old is not None:
            raise ValueError("x_old is only used with an old Binarizer, not with old codes")
        old_spec = new.spec if old_spec is None else old_spec
        if not isinstance(old_spec, CodeSpec):
            raise TypeError(f"old_spec must be a CodeSpec, got {type(old_spec).__name__}")
        old_packed = old_spec.check_packed(old, "old codes")
    else:
        raise TypeError(f"old must be packed uint8 codes (numpy array) or a bebr.Binarizer, "
                        f"got {type(old).__name__}")
    xn = check_training_input(x_new, "x_new")
    if xn.shape[0] != old_packed.shape[0]:
        raise ValueError(f"old codes and x_new must hold the same items, got "
                         f"{old_packed.shape[0]} and {xn.shape[0]} rows")
    if xn.shape[1] != new.in_dim:
        raise ValueError(f"x_new has {xn.shape[1]} columns but the new model expects "
                         f"in_dim={new.in_dim}")
    if old_version is None:
        old_version = new.compatible_with
    for name, v in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if batch_size < 2 * (1 + neighbors):
        raise ValueError(f"batch_size must be >= {2 * (1 + neighbors)}, got {batch_size}")

    gen = torch.Generator().manual_seed(int(seed))
    o_all = torch.from_numpy(old_spec.values(old_packed))
    x_all = F.normalize(torch.from_numpy(np.asarray(xn, dtype=np.float32)), dim=1)
    n_all = torch.from_numpy(new.encode_values(xn))
    nbrs = mine_neighbors(x_all, 10) if neighbors > 0 else None
    n = x_all.shape[0]
    anchors = max(1, batch_size // (1 + neighbors))
    steps = max(1, math.ceil(n / anchors))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = CodeUpgrader(old_spec, new.spec, hidden=hidden, depth=depth,
                             from_version=old_version, to_version=new.version)
    scale = nn.Parameter(torch.tensor(1.0 / tau))
    opt = torch.optim.AdamW(list(model.parameters()) + [scale], lr=lr, weight_decay=1e-4)
    total = epochs * steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    from tqdm.auto import tqdm
    bar = tqdm(total=total, disable=not progress, desc="bebr upgrader", dynamic_ncols=True)
    t0 = time.perf_counter()
    model.train()
    stop = False
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for st in range(steps):
            a = order[st * anchors:(st + 1) * anchors]
            if len(a) < 2:
                continue
            idx = with_neighbors(a, nbrs, neighbors, gen)
            h = model(o_all[idx])
            nb = n_all[idx]
            # cross_distill with the new codes as queries against the upgraded gallery
            xb = x_all[idx]
            hn, nn_ = F.normalize(h, dim=1), F.normalize(nb, dim=1)
            t = xb @ xb.T / tau
            p = F.softmax(t, dim=1)
            lv = (p * (F.log_softmax(t, 1) - F.log_softmax(nn_ @ hn.T * scale, 1))).sum(1).mean()
            if nce_weight:
                lv = lv + nce_weight * F.cross_entropy(hn @ nn_.T / tau,
                                                       torch.arange(len(idx)))
            opt.zero_grad(set_to_none=True)
            lv.backward()
            opt.step()
            sched.step()
            bar.update(1)
            if st % 20 == 0:
                bar.set_postfix(loss=f"{float(lv.detach()):.4f}")
            if max_time_s is not None and time.perf_counter() - t0 > max_time_s:
                stop = True
                break
        if stop:
            break
    bar.close()
    model.eval()
    model.train_info = {"time_s": time.perf_counter() - t0}
    return model
