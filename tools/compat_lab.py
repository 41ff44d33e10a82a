"""Ablations of versioned compatibility that measured no gain, kept for the studies.

Not part of bebr's API. BENCHMARKS.md section 3 measured, on GloVe -> MiniLM (and
``tools/eval_upgrade.py`` on MiniLM -> MPNet): new codes trained compatible with the old
ones (:func:`train_compatible`: BEBR's compat loss, and the RACT / cross-distillation /
UniBCT / neighbour terms of :class:`CompatWeights`) plus query heads score no better than an
independently trained new model plus query heads, and compatible codes alone fail the
compatibility criterion; the forward code upgrader (:func:`train_upgrader`, BiCT/DMU) scores
below leaving the old codes in place. The product path is ``bebr.train_binarizer`` for the
new version and ``bebr.Collection.upgrade`` (``bebr.train_cross_queries``) for its heads.

Import from a script in tools/ (``sys.path`` holding tools/): ``from compat_lab import
train_compatible``.
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

from bebr.codes import MAX_BITS, CodeSpec
from bebr.compat import _check_binarizer, _check_head_options, train_cross_queries
from bebr.fileio import CorruptFileError
from bebr.modelfile import CONFIG_NAME, load_state_strict, read_header, read_weights, write_model_dir
from bebr.model import Binarizer, ResidualMLP, sign_ste
from bebr.train import (_Budget, _init_model, _init_scalar_quantizer, check_training_input,
                        code_recall, mine_neighbors, train_binarizer, with_neighbors)

__all__ = ["CompatWeights", "compat_loss", "train_compatible", "CodeUpgrader", "train_upgrader",
           "UPGRADER_FORMAT_VERSION"]

UPGRADER_FORMAT_VERSION = 1


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
