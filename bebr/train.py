"""Embedding-to-embedding training of a ``Binarizer`` (REFERENCE.md section 2): no labels.

The training signal is the float space itself. Each batch is random anchors plus
``neighbors`` (default 3) of their mined float nearest neighbours (hard negatives and true
neighbours in every batch; from the ITQ init the only setting measured to raise validation
recall on GloVe 50x2, see BENCHMARKS.md; mining costs an n x n scan), or random rows
(``neighbors=0``), and the loss is one of
- ``"distill"``: neighbour-ranking distillation, row-wise KL(softmax(float cos / tau_t) ||
  softmax(s * code cos)) over the batch, s a learned scale;
- ``"nce"``: symmetric InfoNCE code-vs-float of the same item (float projected to the code
  space by a train-only linear head), positive + the ``hard_negatives`` hardest negatives;
- ``"both"``: their sum;
plus any ``extra_loss(model, out, xb, idx)`` a caller adds (compatible training builds on it).
Init (``init="pca"``): the recurrence starts as a per-dimension uniform scalar quantizer of a
rotated PCA projection (the largest single gain measured), the rotation learned ITQ-style for
the multi-level quantizer (``itq_iters``, a random one with 0); training then refines it.

x may be a memory-mapped .npy larger than RAM: training reads a random sample of at most
``max_train_rows`` rows (sorted row indices, one pass), never the whole array.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from .codes import CodeSpec, max_query_bits
from .model import Binarizer, _as_float_rows

__all__ = ["train_binarizer", "check_training_input", "mine_neighbors", "init_projection",
           "itq_rotation", "distill_loss", "nce_loss", "code_recall"]


# ---------------------------------------------------------------------- input checks
def check_training_input(x, name: str = "x", min_rows: int = 2):
    """Validate a training array: real numeric, 2-d, non-empty, finite (checked in chunks)."""
    arr = _as_float_rows(x, None, name)
    if arr.shape[0] < min_rows or arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least {min_rows} rows and 1 column, "
                         f"got shape {arr.shape}")
    for s in range(0, arr.shape[0], 1 << 16):
        if not np.isfinite(arr[s:s + (1 << 16)]).all():
            raise ValueError(f"{name} has NaN or inf values (rows [{s}, {s + (1 << 16)}))")
    return arr


def _check_pos_int(v, name):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return int(v)


# ---------------------------------------------------------------------- helpers
def _normalize_np(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


class _Budget:
    """A wall-clock deadline (``time.monotonic``) shared by the steps of one call; ``None``
    seconds: unbounded. ``cuts`` collects one line per step the deadline shortened."""

    def __init__(self, seconds: Optional[float]):
        if seconds is not None and (isinstance(seconds, bool)
                                    or not isinstance(seconds, (int, float, np.integer,
                                                                np.floating))
                                    or not math.isfinite(seconds) or seconds < 0):
            raise ValueError(f"max_time_s must be None or a finite number >= 0, got "
                             f"{seconds!r}")
        self.seconds = None if seconds is None else float(seconds)
        self.start = time.monotonic()
        self.end = None if seconds is None else self.start + float(seconds)
        self.cuts: list = []

    def left(self) -> float:
        """Seconds left (inf when unbounded, never below 0)."""
        return math.inf if self.end is None else max(0.0, self.end - time.monotonic())

    def share(self, fraction: float) -> Optional[float]:
        """``fraction`` of the seconds left, or None when unbounded."""
        return None if self.end is None else fraction * self.left()

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end

    def info(self) -> dict:
        return {"max_time_s": self.seconds, "used_s": time.monotonic() - self.start,
                "cuts": list(self.cuts)}


def mine_neighbors(x: torch.Tensor, k: int, chunk: int = 512, max_dim: int = 64, *,
                   time_limit_s: Optional[float] = None, progress: bool = False,
                   seed: int = 0, cuts: Optional[list] = None) -> torch.Tensor:
    """Top-k cosine neighbours (excluding self) of every row of x (n, D): int64 (n, k).

    Rows above ``max_dim`` dims are first reduced by PCA to ``max_dim`` (approximate mining).
    ``time_limit_s``: spend about that long at most. After the first chunk of ``chunk`` rows
    the time of the whole n x n scan is projected; if it does not fit, the remaining rows'
    neighbours are mined among a seeded random subset of the rows sized to fit (approximate
    neighbours), and rows still left when the time is up get random rows (never themselves)
    as neighbours. Each such cut appends a line to ``cuts``. ``progress``: a tqdm bar.
    Without a limit (or when it is not reached) the result does not depend on it.
    """
    t0 = time.monotonic()
    xn = F.normalize(x, dim=1)
    if xn.shape[1] > max_dim:
        xc = xn - xn.mean(0)
        cov = xc.T @ xc
        _, vecs = torch.linalg.eigh(cov.double())
        xn = F.normalize(xn @ vecs[:, -max_dim:].float(), dim=1)
    n = xn.shape[0]
    k = min(k, n - 1)
    out = torch.empty((n, k), dtype=torch.int64)
    from tqdm.auto import tqdm

    bar = tqdm(total=n, disable=not progress, desc="mining neighbours", unit="row",
               unit_scale=True, dynamic_ncols=True, mininterval=0.5)
    cand = None  # None: every row is a candidate; else sorted candidate rows (a subset)
    pool = xn.T
    gen = torch.Generator().manual_seed(int(seed) + 1)
    done = n
    for s in range(0, n, chunk):
        if time_limit_s is not None and s > 0 and time.monotonic() - t0 > time_limit_s:
            done = s
            break
        rows = torch.arange(s, min(s + chunk, n))
        sims = xn[s:s + chunk] @ pool
        if cand is None:
            sims[torch.arange(len(rows)), rows] = -float("inf")
            out[s:s + chunk] = sims.topk(k, dim=1).indices
        else:
            pos = torch.searchsorted(cand, rows).clamp(max=len(cand) - 1)
            hit = cand[pos] == rows
            sims[torch.arange(len(rows))[hit], pos[hit]] = -float("inf")
            out[s:s + chunk] = cand[sims.topk(k, dim=1).indices]
        bar.update(len(rows))
        if s == 0 and time_limit_s is not None and n > chunk:
            spent = time.monotonic() - t0
            per_cell = spent / (len(rows) * n)  # seconds per (row, candidate) pair
            rest = n - len(rows)
            fit = int((time_limit_s - spent) / max(per_cell * rest, 1e-12))
            if fit < n:
                m = max(k + 1, min(n, fit))
                cand = torch.sort(torch.randperm(n, generator=gen)[:m]).values
                pool = xn[cand].T
                if cuts is not None:
                    cuts.append(f"neighbour mining: rows {len(rows)}-{n} mined among a random "
                                f"{m} of the {n} rows (the full scan would take about "
                                f"{per_cell * n * n:.0f} s, the limit is {time_limit_s:.1f} s)")
    bar.close()
    if done < n:
        off = torch.randint(1, n, (n - done, k), generator=gen)
        out[done:] = (torch.arange(done, n)[:, None] + off) % n
        if cuts is not None:
            cuts.append(f"neighbour mining: stopped at the time limit ({time_limit_s:.1f} s) "
                        f"after {done} of {n} rows; the other rows get random batch partners")
    return out


def init_projection(x: torch.Tensor, dim: int, gen: torch.Generator) -> torch.Tensor:
    """(dim, D) projection: PCA directions (top-dim, or all D then more random orthonormal
    ones when dim > D) mixed by a random rotation so variance spreads evenly over the dims,
    scaled so projections have unit standard deviation."""
    xc = x - x.mean(0)
    D = x.shape[1]
    cov = (xc.T @ xc).double() / max(1, x.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)
    vecs = vecs.flip(1).float()  # (D, D), columns by decreasing variance
    if dim <= D:
        basis = vecs[:, :dim].T  # (dim, D)
        rot = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0]
        P = rot @ basis
    else:
        q = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0]  # (dim, dim)
        P = q[:, :D] @ vecs.T  # (dim, D): rows a tight frame over the PCA basis
    std = (xc @ P.T).std(0).mean().clamp_min(1e-8)
    return P / std


# MSE-optimal uniform quantizer step (in units of sigma) of a Gaussian, by bits per dimension.
_GAUSS_STEP = {1: 1.596, 2: 0.996, 3: 0.586, 4: 0.335}


def _orthonormal_basis(xc: torch.Tensor, dim: int, gen: torch.Generator) -> torch.Tensor:
    """(dim, D) rows: top-dim PCA directions mixed by a random rotation (orthonormal rows) when
    dim <= D; a random tight frame over the PCA basis (Q^T Q = I) when dim > D."""
    D = xc.shape[1]
    cov = (xc.T @ xc).double() / max(1, xc.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov)
    vecs = vecs.flip(1).float()
    if dim <= D:
        rot = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0]
        return rot @ vecs[:, :dim].T
    q = torch.linalg.qr(torch.randn(dim, dim, generator=gen))[0]
    return q[:, :D] @ vecs.T


def _self_quantize(z: torch.Tensor, bits: int) -> torch.Tensor:
    """Code values of the scalar-quantizer init's recurrence on z = Q xn (n, dim): c_0 =
    sign(z), c_t = c_{t-1} + 2^-t sign(z - c_{t-1} / ||c_{t-1}||) (sign(0) = +1). This is what
    the initialised Binarizer computes (its reconstruction is normalised, so the quantizer's
    scale is the code's own norm, per vector)."""
    c = torch.where(z >= 0, 1.0, -1.0)
    for t in range(1, bits):
        ch = c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)
        c = c + (2.0 ** -t) * torch.where(z - ch >= 0, 1.0, -1.0)
    return c


def itq_rotation(z: torch.Tensor, bits: int, iters: int = 30) -> torch.Tensor:
    """Learned rotation (dim, dim) for the multi-level quantizer of the init (ITQ, Gong and
    Lazebnik 2011, extended to ``bits`` levels): alternate codes c = quantize(z R) (the init's
    own recurrence, :func:`_self_quantize`) and R = the orthogonal Procrustes solution of
    z R ~ c ||z|| / ||c||, starting from R = I. Returns an orthogonal R (use z @ R); each step
    does not increase the angular quantization error on z's rows."""
    z = z.double()
    zn = z.norm(dim=1, keepdim=True)
    R = torch.eye(z.shape[1], dtype=z.dtype)
    for _ in range(int(iters)):
        c = _self_quantize(z @ R, bits)
        target = c * (zn / c.norm(dim=1, keepdim=True).clamp_min(1e-12))
        u, _, vt = torch.linalg.svd(z.T @ target)
        R = u @ vt
    return R.float()


def _init_scalar_quantizer(model: Binarizer, xc: torch.Tensor, gen: torch.Generator,
                           basis: Optional[torch.Tensor] = None, itq_iters: int = 0,
                           itq_rows: int = 20_000) -> None:
    """Init the recurrence as a per-dimension uniform scalar quantizer of z = Q normalize(xc):
    W = s Q, B_t = s Q^T (decoder), R_t = 2^t s Q: b_t = sign(z - c_{t-1} / ||c_{t-1}||) for
    orthonormal Q, a uniform quantizer whose scale is the code's own norm (x_hat_t is
    normalised, so s and any positive scale of B_t cancel in the codes; exactly
    :func:`_self_quantize` when dim <= D). s puts the pre-activations at the MSE-optimal Gaussian quantizer
    step: it sets the straight-through window and ``encode_query``'s scale. B_t is at W's
    scale, not Q^T / s as before: the codes are the same, but AdamW's per-step change is
    then small against B's entries (Q^T / s, ~s^2 times smaller, collapsed training at 4 bits:
    MiniLM 384x4 validation 0.936 -> 0.82 in one epoch). Residual MLP branches start near
    zero.
    ``basis``: a given (dim, D) Q instead of the rotated PCA one (compatible training passes
    the PCA basis rotated onto the old codes). ``itq_iters`` > 0 (and dim <= D): Q is then
    rotated by :func:`itq_rotation` fitted on at most ``itq_rows`` rows of xc (every k-th)."""
    Q = _orthonormal_basis(xc, model.dim, gen) if basis is None else basis
    xn = F.normalize(xc, dim=1)
    if itq_iters > 0 and model.dim <= xc.shape[1]:
        stride = max(1, math.ceil(len(xn) / itq_rows))  # spread over the rows, no RNG draw
        R = itq_rotation(xn[::stride] @ Q.T, model.bits, itq_iters)  # (dim, dim)
        Q = R.T @ Q
    sigma = (xn @ Q.T).std(0).mean().clamp_min(1e-8)
    u = model.bits
    s = float(2.0 ** (2 - u) / (_GAUSS_STEP[u] * sigma))  # level step 2^(2-u) code units
    model.W.skip.weight.copy_(s * Q)
    for t in range(1, u):
        model.B[t - 1].skip.weight.copy_(s * Q.T)
        model.R[t - 1].skip.weight.copy_((2.0 ** t) * s * Q)


def _init_model(model: Binarizer, x: torch.Tensor, gen: torch.Generator, center: bool,
                projection: Optional[Callable] = None, itq_iters: int = 0) -> None:
    """PCA-style init; ``projection(xc) -> (dim, D)`` replaces the first-step projection
    (compatible training regresses it onto the old codes). ``itq_iters``: see
    :func:`_init_scalar_quantizer` (used without ``projection``)."""
    with torch.no_grad():
        if center:
            model.in_mean.copy_(x.mean(0))
        xc = x - model.in_mean
        if projection is None:
            _init_scalar_quantizer(model, xc, gen, itq_iters=itq_iters)
            return
        P = projection(xc)
        model.W.skip.weight.copy_(P)
        xn = F.normalize(xc, dim=1)
        c = torch.sign(xc @ P.T)
        c[c == 0] = 1
        for t in range(1, model.bits):
            # B_t: least-squares decoder from the code so far to x; R_t: projection of the
            # residual, scaled to unit std (a learned recurrent scalar quantizer at init).
            sol = torch.linalg.lstsq(c, xn).solution  # (dim, D)
            model.B[t - 1].skip.weight.copy_(sol.T)
            x_hat = F.normalize(c @ sol, dim=1)
            r = xn - x_hat
            Pr = P * (xc @ P.T).std(0).mean() / (r @ P.T).std(0).mean().clamp_min(1e-8)
            Pr = Pr / (r @ Pr.T).std(0).mean().clamp_min(1e-8)
            model.R[t - 1].skip.weight.copy_(Pr)
            b = torch.sign(r @ Pr.T)
            b[b == 0] = 1
            c = c + (2.0 ** -t) * b


def with_neighbors(anchors: torch.Tensor, nbrs: Optional[torch.Tensor], neighbors: int,
                   gen: torch.Generator) -> torch.Tensor:
    """Batch rows: ``anchors``, then ``neighbors`` random mined neighbours of each anchor
    (rows of ``nbrs``), or the anchors alone when ``nbrs`` is None."""
    if nbrs is None:
        return anchors
    pick = torch.randint(0, nbrs.shape[1], (len(anchors), neighbors), generator=gen)
    return torch.cat([anchors, nbrs[anchors][torch.arange(len(anchors))[:, None], pick].reshape(-1)])


# ---------------------------------------------------------------------- losses
def distill_loss(codes: torch.Tensor, x: torch.Tensor, scale: torch.Tensor,
                 tau: float = 0.05) -> torch.Tensor:
    """Row-wise KL(softmax(cos(x)/tau) || softmax(scale * cos(codes))), diagonal excluded."""
    xn = F.normalize(x, dim=1)
    cn = F.normalize(codes, dim=1)
    n = x.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=x.device)
    t = (xn @ xn.T / tau).masked_fill(eye, -1e4)
    s = (cn @ cn.T * scale).masked_fill(eye, -1e4)
    p = F.softmax(t, dim=1)
    return (p * (F.log_softmax(t, dim=1) - F.log_softmax(s, dim=1))).sum(1).mean()


def nce_loss(codes: torch.Tensor, proj_x: torch.Tensor, tau: float = 0.05,
             hard_negatives: int = 5) -> torch.Tensor:
    """Symmetric InfoNCE, code of item i vs projected float of item i, keeping the positive
    and the ``hard_negatives`` hardest in-batch negatives per row."""
    cn = F.normalize(codes, dim=1)
    pn = F.normalize(proj_x, dim=1)
    logits = cn @ pn.T / tau
    n = logits.shape[0]
    eye = torch.eye(n, dtype=torch.bool, device=codes.device)

    def one_side(lg):
        pos = lg.diagonal()
        neg = lg.masked_fill(eye, -float("inf"))
        k = min(hard_negatives, n - 1)
        hard = neg.topk(k, dim=1).values
        full = torch.cat([pos[:, None], hard], dim=1)
        return -F.log_softmax(full, dim=1)[:, 0].mean()

    return 0.5 * (one_side(logits) + one_side(logits.T))


# ---------------------------------------------------------------------- validation
@torch.no_grad()
def _code_values(model: Binarizer, x: torch.Tensor, bs: int = 8192) -> torch.Tensor:
    was = model.training
    model.eval()
    out = torch.cat([model(x[s:s + bs]).codes for s in range(0, len(x), bs)])
    model.train(was)
    return out


@torch.no_grad()
def _query_code_values(model: Binarizer, x: torch.Tensor, bits: int) -> torch.Tensor:
    """Values of ``model.encode_query_codes(x, bits)`` as a float tensor (validation only)."""
    qspec = CodeSpec(model.dim, bits)
    was = model.training
    model.eval()
    lv = qspec.quantize_angle(model.W(x - model.in_mean).cpu().numpy())
    model.train(was)
    return torch.from_numpy(qspec.level_values()[lv]).to(x.device)


@torch.no_grad()
def code_recall(cq: torch.Tensor, cb: torch.Tensor, truth: torch.Tensor, r: int = 10) -> float:
    """R10@r of cosine search of codes ``cq`` against ``cb`` (ties: smaller index first)."""
    s = F.normalize(cq.float(), dim=1) @ F.normalize(cb.float(), dim=1).T
    top = s.topk(r, dim=1).indices
    hits = (top[:, :, None] == truth[:, None, :]).any(1).float().sum()
    return float(hits / truth.numel())


# ---------------------------------------------------------------------- training
def train_binarizer(x, dim: int, bits: int, *, epochs: Optional[int] = None,
                    batch_size: Optional[int] = None, lr: Optional[float] = None,
                    device: str = "cpu", seed: int = 0, progress: bool = True,
                    val_fraction: float = 0.02, loss: str = "distill", hidden: int = 128,
                    depth: int = 0, tau: float = 0.05, neighbors: int = 3,
                    mined_k: int = 10, patience: int = 3, center: bool = False,
                    init: str = "pca", itq_iters: int = 30, max_train_rows: int = 200_000,
                    max_time_s: Optional[float] = None, version: Optional[str] = None,
                    model: Optional[Binarizer] = None,
                    extra_loss: Optional[Callable] = None,
                    val_score: Optional[Callable] = None,
                    nce_weight: float = 1.0, hard_negatives: int = 5,
                    threads: Optional[int] = None, query_bits: Optional[int] = None,
                    log: Optional[list] = None) -> Binarizer:
    """Train a :class:`Binarizer` from float embeddings ``x`` (n, D); returns it in eval mode.

    Batches: ``batch_size`` rows = anchors + ``neighbors`` of each anchor's ``mined_k`` float
    nearest neighbours. Loss: ``loss`` in {"distill", "nce", "both"} (module docstring) plus
    ``extra_loss(model, out, xb, idx)`` if given (``idx``: the batch's row indices into x).
    Validation: ``val_fraction`` of the rows (at most 2000) are held out as queries against
    the rest (at most 20000); R10@10 of code search against the float top-10 is tracked each
    epoch; early stopping after ``patience`` epochs without gain, the best epoch is kept.
    ``val_score(model, recall, q_rows, b_rows, truth) -> float``: optional selection score
    replacing the validation recall (``q_rows``/``b_rows``: row indices into x of the
    validation queries and base, ``truth``: their float top-10 as indices into ``b_rows``);
    compatible training uses it to also count cross-version recall.
    ``model``: continue from a given Binarizer (its dim/bits/in_dim must match).
    Init (``init="pca"``): the scalar-quantizer init on the PCA basis, rotated by a learned
    ITQ rotation (``itq_iters`` alternations, :func:`itq_rotation`; 0: a random rotation).
    ``center``: subtract the training mean first. Off by default: the codes' cosine then
    approximates the raw cosine the neighbours are defined by; centering cost ~0.03 R10@10 on
    anisotropic MiniLM 384x4 and was neutral on GloVe (BENCHMARKS.md section 2).
    (The ``train_compatible`` ablation of tools/compat_lab.py centers its new model itself.)
    ``max_time_s``: a deadline for the whole call, from its start: neighbour mining gets
    at most a third of it (:func:`mine_neighbors` shrinks its candidate pool, then stops, when
    it would not fit), training stops at the deadline (checked per step) keeping the best
    validation state so far. What the deadline cut is listed in
    ``train_info["time_budget"]["cuts"]`` (empty when nothing was cut; results are then
    the same as without a limit).
    ``threads``: torch CPU threads while training (default: torch's current setting; use 1
    on a loaded machine, where several spinning threads per core slow training down).
    ``query_bits``: the deployment searches with query codes of this many bits
    (:meth:`Binarizer.encode_query_codes`, ``Index.search(..., query_bits=)``); validation,
    early stopping and ``train_info["val_r10@10"]`` then use such queries. Default: symmetric.
    ``log``: a list that receives one dict per epoch (epoch, val_r10@10, loss, time_s).
    Deterministic for a given ``seed`` on CPU (and a given ``threads``) when no time limit
    cuts it.
    """
    budget = _Budget(max_time_s)
    arr = check_training_input(x)
    dim = _check_pos_int(dim, "dim")
    bits = _check_pos_int(bits, "bits")
    if loss not in ("distill", "nce", "both"):
        raise ValueError(f"loss must be 'distill', 'nce' or 'both', got {loss!r}")
    if init not in ("pca", "random"):
        raise ValueError(f"init must be 'pca' or 'random', got {init!r}")
    if not 0.0 < float(val_fraction) < 0.5:
        raise ValueError(f"val_fraction must be in (0, 0.5), got {val_fraction}")
    if extra_loss is not None and not callable(extra_loss):
        raise TypeError("extra_loss must be callable(model, out, xb, idx) -> tensor")
    if val_score is not None and not callable(val_score):
        raise TypeError("val_score must be callable(model, recall, q_rows, b_rows, truth)")
    if query_bits is not None and (isinstance(query_bits, bool)
                                   or not isinstance(query_bits, (int, np.integer))
                                   or not 1 <= query_bits <= max_query_bits(bits)):
        raise ValueError(f"query_bits must be None or an int in [1, {max_query_bits(bits)}] "
                         f"over {bits}-bit codes, got "
                         f"{query_bits!r}")
    n_all, D = arr.shape
    if n_all < 20:
        raise ValueError(f"x needs at least 20 rows to train and validate, got {n_all}")
    batch_size = _check_pos_int(batch_size if batch_size is not None else 512, "batch_size")
    neighbors = int(neighbors)
    if neighbors < 0:
        raise ValueError(f"neighbors must be >= 0, got {neighbors}")
    lr = float(lr) if lr is not None else 1e-3
    dev = torch.device(device)

    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(int(seed))
    # ---- training pool: at most max_train_rows rows read from x (memmap friendly)
    if n_all > max_train_rows:
        rows = np.sort(rng.choice(n_all, size=max_train_rows, replace=False))
    else:
        rows = np.arange(n_all)
    pool = torch.from_numpy(_normalize_np(np.asarray(arr[rows], dtype=np.float32)))
    n = len(rows)
    nval = int(min(2000, max(10, round(val_fraction * n))))
    perm = rng.permutation(n)
    val_q, train_ids = perm[:nval], np.sort(perm[nval:])
    val_b = np.sort(rng.choice(train_ids, size=min(20000, len(train_ids)), replace=False))
    xq, xb_val = pool[val_q], pool[val_b]
    kt = min(10, len(val_b))
    truth = (xq @ xb_val.T).topk(kt, dim=1).indices
    # ---- mined neighbours among the training rows
    xtr = pool[train_ids]
    nbrs = mine_neighbors(xtr, mined_k, time_limit_s=budget.share(1 / 3), progress=progress,
                          seed=seed, cuts=budget.cuts) if neighbors > 0 else None
    anchors_per_batch = max(1, batch_size // (1 + neighbors))
    steps_per_epoch = max(1, math.ceil(len(train_ids) / anchors_per_batch))
    if epochs is None:
        # ~ 2M batch rows (anchors + neighbours), between 2 and 20 epochs; early stopping
        # trims it (98k rows, 3 neighbours: 5 epochs of 750 steps)
        epochs = int(min(20, max(2, round(2e6 / (len(train_ids) * (1 + neighbors))))))
    epochs = _check_pos_int(epochs, "epochs")

    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(_check_pos_int(threads, "threads"))
    try:
        return _train(**locals())
    finally:
        torch.set_num_threads(old_threads)


def _train(*, arr, rows, pool, n, nval, val_q, train_ids, val_b, xq, xb_val, truth, xtr, nbrs,
           anchors_per_batch, steps_per_epoch, epochs, seed, gen, model, D, dim, bits, hidden,
           depth, version, init, center, itq_iters, dev, tau, loss, lr, progress, log,
           neighbors, extra_loss, val_score, nce_weight, hard_negatives, patience, budget,
           query_bits, **_unused):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        if model is None:
            model = Binarizer(D, dim, bits, hidden=hidden, depth=depth, version=version)
            if init == "pca":
                _init_model(model, xtr, gen, center, itq_iters=itq_iters)
            elif center:
                model.in_mean.copy_(xtr.mean(0))
        else:
            if (model.in_dim, model.dim, model.bits) != (D, dim, bits):
                raise ValueError(f"model is {model}, incompatible with in_dim={D}, dim={dim}, "
                                 f"bits={bits}")
        model = model.to(dev)
        scale = torch.nn.Parameter(torch.tensor(1.0 / tau, device=dev))
        head = None
        params = list(model.parameters()) + [scale]
        if loss in ("nce", "both"):
            head = torch.nn.Linear(D, dim, bias=False).to(dev)
            with torch.no_grad():
                head.weight.copy_(model.W.skip.weight)
            params += list(head.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
        total = epochs * steps_per_epoch
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))

        def val_recall():
            cq = _code_values(model, xq.to(dev)) if query_bits is None else \
                _query_code_values(model, xq.to(dev), query_bits)
            r = code_recall(cq,
                            _code_values(model, xb_val.to(dev)), truth.to(dev))
            if val_score is None:
                return r
            return float(val_score(model, r, rows[val_q], rows[val_b], truth))

        best = val_recall()
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if log is not None:
            log.append({"epoch": 0, "val_r10@10": best, "loss": float("nan"), "time_s": 0.0})
        from tqdm.auto import tqdm
        bar = tqdm(total=total, disable=not progress, desc=f"bebr {dim}x{bits}",
                   dynamic_ncols=True)
        t0 = time.perf_counter()
        bad = 0
        stop = False
        for ep in range(1, epochs + 1):
            model.train()
            order = torch.randperm(len(train_ids), generator=gen)
            ema = None
            for st in range(steps_per_epoch):
                a = order[st * anchors_per_batch:(st + 1) * anchors_per_batch]
                if len(a) < 2:
                    continue
                bidx = with_neighbors(a, nbrs, neighbors, gen)
                xb = xtr[bidx].to(dev)
                out = model(xb)
                lv = 0.0
                if loss in ("distill", "both"):
                    lv = lv + distill_loss(out.codes, xb, scale, tau)
                if loss in ("nce", "both"):
                    lv = lv + nce_weight * nce_loss(out.codes, head(xb - model.in_mean), tau,
                                                    hard_negatives)
                if extra_loss is not None:
                    idx = rows[train_ids[bidx.numpy()]]
                    lv = lv + extra_loss(model, out, xb, idx)
                opt.zero_grad(set_to_none=True)
                lv.backward()
                opt.step()
                sched.step()
                lval = float(lv.detach())
                ema = lval if ema is None else 0.95 * ema + 0.05 * lval
                bar.update(1)
                if st % 20 == 0:
                    bar.set_postfix(epoch=ep, loss=f"{ema:.4f}", val_r10=f"{best:.4f}")
                if budget.expired():
                    stop = True
                    budget.cuts.append(
                        f"training: stopped at the time limit ({budget.seconds:g} s) in epoch "
                        f"{ep} of {epochs}, step {st + 1} of {steps_per_epoch}; kept the best "
                        "validation state so far")
                    break
            rec = val_recall()
            if log is not None:
                log.append({"epoch": ep, "val_r10@10": rec, "loss": ema,
                            "time_s": time.perf_counter() - t0})
            if rec > best:
                best, bad = rec, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
            bar.set_postfix(epoch=ep, loss=f"{ema:.4f}", val_r10=f"{rec:.4f}")
            if stop or bad >= patience:
                break
        bar.close()
        model.load_state_dict(best_state)
    model.eval()
    model.train_info = {"val_r10@10": best, "epochs_run": ep, "train_rows": int(len(train_ids)),
                        "time_s": time.perf_counter() - t0}
    if budget.seconds is not None:
        model.train_info["time_budget"] = budget.info()
    return model
