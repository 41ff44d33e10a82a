"""Cross-version query heads: new queries searching older versions' stored codes.

Backward compatibility without retraining the codes: a new model version keeps its own,
independently trained codes (``bebr.train_binarizer``) and learns, per older version still
present, a query head (:func:`train_cross_queries`) whose query codes rank that version's
*stored* codes the way the new float space ranks the items, plus a score calibration
(:func:`fit_head_calibration`) that puts the head's scores on the new codes' scale, so one
kernel pass merges every version (``Index.search(version_queries=, version_calibration=)``,
``bebr.Collection``). Training needs only the new floats of a paired sample of stored items
and their stored codes: no old floats, no old model.

Compatible training of the codes themselves (BEBR's compat loss, RACT, UniBCT, ...) and the
forward code upgrader (BiCT/DMU) measured no gain over this path (BENCHMARKS.md section 3:
independent codes + heads match or beat compatible codes + heads; upgraded codes score below
codes left old), so they live in ``tools/compat_lab.py`` as ablations, not in the package.
"""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from .codes import CodeSpec, max_query_bits
from .model import CALIBRATION_METRICS, Binarizer
from .train import _Budget, check_training_input, code_recall, mine_neighbors

__all__ = ["train_cross_queries", "fit_head_calibration", "CALIBRATION_TOP"]

# top scores per held-out query that the head calibration fits on (fit_head_calibration)
CALIBRATION_TOP = 50


# ------------------------------------------------------------------------------ checks
def _check_binarizer(model, name: str) -> Binarizer:
    if not isinstance(model, Binarizer):
        raise TypeError(f"{name} must be a bebr.Binarizer, got {type(model).__name__}")
    return model


# ------------------------------------------------------------------------------ query heads
def train_cross_queries(new: Binarizer, x_new, old_codes, old_version: str, *,
                        epochs: Optional[int] = None, query_bits: int = 4,
                        batch_size: int = 256, negatives: int = 2048, mined_k: int = 10,
                        tau_teacher: float = 0.02, tau: float = 0.05, lr: float = 1e-4,
                        val_fraction: float = 0.05, patience: int = 4, seed: int = 0,
                        teacher: str = "softmax", members: int = 3,
                        calibrate: bool = True,
                        max_time_s: Optional[float] = None, progress: bool = True,
                        threads: Optional[int] = None) -> Binarizer:
    """Learn ``new``'s query head into the code space of stored ``old_version`` codes.

    ``x_new`` (n, D_new): the new upstream embeddings of n items; ``old_codes``: those items'
    stored packed codes of version ``old_version`` (``CodeSpec(new.dim, new.bits)``, e.g.
    ``Index.get_codes``): no old floats and no old model are needed, so every version still
    in an index can get a head. The head (``new.add_cross_head``: an ensemble of residual
    MLPs on the L2-normalised, centered input, :class:`bebr.model.QueryHead`) is trained so
    that the new float space's neighbourhoods are what the query finds among old codes:
    per anchor, a softmax over candidates (the batch, each anchor's ``mined_k`` new-float
    neighbours and ``negatives`` random items; the anchor itself excluded, as a query is
    never its own answer) of ``cos(head(x_a), o_c) / tau``
    is fitted (KL) to the softmax of ``cos(x_a, x_c) / tau_teacher``. Start: the ridge
    least-squares map onto the old code values (float64). Validation (:func:`head_split`):
    held-out rows as queries, their ``query_bits``-bit query codes against the old codes of a
    held-out gallery (items the head never trains on), R10@10 against the new float top-10
    among that gallery. Each member is fitted in two stages, each early-stopped on that
    validation from the best state so far: the linear map alone, then with its residual MLP
    branches (which start at zero); a stage is kept only where it validates better, so the
    head is never worse on held-out items than its ridge start (the per-epoch log with its
    stage: ``new.train_info["cross_val"][old_version]``). The defaults (softmax teacher at
    ``tau_teacher`` 0.02, ``tau`` 0.05, ``lr`` 1e-4) were chosen on queries and gallery
    items outside every reported evaluation (tools/eval_upgrade.py).
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
    bar = tqdm(total=members * 2 * epochs * steps, disable=not progress,
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
    with torch.no_grad():  # residual branches start at exactly zero: the member is its map
        for blk in net.blocks:
            blk.fc2.weight.zero_()
            blk.fc2.bias.zero_()
    best, log = val_recall(fwd), []
    best_state = {kk: v.detach().clone() for kk, v in net.state_dict().items()}
    log.append({"epoch": 0, "stage": "start", "val_r10@10": best})
    t0 = time.perf_counter()
    head.train()
    ntr = xt.shape[0]
    # two stages, each from the best state so far and early-stopped on the held-out
    # validation: the linear map alone (KL from the ridge start), then the residual MLP
    # branches too; either is kept only if it validates better (tools/probe_head_design.py,
    # MiniLM -> MPNet from 7.6k pairs: 0.349 on unseen items, the MLP stage never kept)
    t_split = None if end is None else time.monotonic() + 0.5 * max(0.0, end - time.monotonic())
    for stage, params, stop_at in (("linear", [net.skip.weight], t_split),
                                   ("mlp", list(net.parameters()), end)):
        net.load_state_dict(best_state)
        best = _fit_head_stage(
            net, params, stage, xt, ot, nbrs, gen, epochs, steps, batch_size, negatives,
            tau_teacher, tau, lr, patience, teacher, stop_at, bar, fwd, val_recall, best,
            best_state, log, t0, ntr, k, cuts)
    net.load_state_dict(best_state)
    return log


def _fit_head_stage(net, params, stage, xt, ot, nbrs, gen, epochs, steps, batch_size,
                    negatives, tau_teacher, tau, lr, patience, teacher, end, bar, fwd,
                    val_recall, best, best_state, log, t0, ntr, k, cuts) -> tuple:
    """One stage of :func:`_train_head_member` over ``params``; updates ``best_state`` in
    place; returns the best validation recall so far."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    # linear warm-up over the first epoch: full-rate Adam steps on the fresh MLP branches
    # wrecked the least-squares start (v3 MiniLM-CLS -> v2 codes: validation 0.50 -> 0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / steps))
    bad = 0
    stop = False
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
                cuts.append(f"member {k}: {stage} stage stopped at its share of the time "
                            f"limit in epoch {ep} of {epochs}, step {st + 1} of {steps}; "
                            f"kept its best epoch")
                break
        rec = val_recall(fwd)
        log.append({"epoch": ep, "stage": stage, "val_r10@10": rec,
                    "loss": float(loss.detach()), "time_s": time.perf_counter() - t0})
        bar.set_postfix(member=k, stage=stage, epoch=ep, val_r10=f"{rec:.4f}")
        if rec > best:
            best, bad = rec, 0
            best_state.update({kk: v.detach().clone() for kk, v in net.state_dict().items()})
        else:
            bad += 1
        if stop or bad >= patience:
            break
    return best


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
