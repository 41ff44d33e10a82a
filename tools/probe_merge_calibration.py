"""Why the calibrated merge of old and new codes flips more than the naive merge at small r,
and which per-version score map keeps recall while cutting flips (issue 13, item 3).

Uses the cached models of ``tools/eval_upgrade.py`` (``--cached-only`` semantics: nothing is
trained). For one upgrade and budget, the new model's queries score the re-encoded items,
the OLD model's own queries the items still old (the ``search(older=)`` path), and the old
scores go through a map ``a s + b``; R10@10 and negative flips (old -> old top-1 right,
merged top-1 wrong) at r = 0.1 .. 0.9 of the gallery re-encoded (``metrics.backfill_subset``).

Two settings: ``val`` -- the held-out rows of the paired sample (``compat.head_split``:
validation queries over the validation gallery, what ``Collection.upgrade`` may choose on);
``eval`` -- the 2,000 reported queries over the gallery (diagnosis only, never a choice).
Scores are the float cosine of the code values (the kernel's SDC scores up to ties).

Usage: python tools/probe_merge_calibration.py [--upgrade minilm-mpnet] [--budget 128x2]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bebr  # noqa: E402
from bebr import datasets as ds, metrics as M  # noqa: E402
from bebr.collection import _merge_curves as merge_curves_topk, _topk_scores as _topk_cosine  # noqa: E402
import eval_upgrade as EU  # noqa: E402

R = tuple(round(0.1 * i, 1) for i in range(1, 10))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upgrade", default="minilm-mpnet")
    ap.add_argument("--budget", default="128x2")
    ap.add_argument("--source", default="auto")
    ap.add_argument("--no-grid", action="store_true")
    ap.add_argument("--dump", default="", help="save the top-k lists to this .npz")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    EU.CACHED_ONLY = True
    old_name, new_name = EU.UPGRADES[args.upgrade]
    source = args.source if args.source != "auto" else (
        "gallery" if args.upgrade == "minilm-mpnet" else "extra")
    d = EU.Data(args.upgrade, source)
    st = EU.Store(args.upgrade, source)
    dim, bits = (int(v) for v in args.budget.split("x"))
    ns = argparse.Namespace(epochs=6, new_epochs=3, head_epochs=0, head_max_s=540)
    bud = EU.Budget(d, st, dim, bits, ns)
    _, hm = bud.headed("independent")
    old, spec, qb = bud.old, bud.spec, EU.QB
    from bebr.compat import head_split
    qi, gi, _ = head_split(len(d.fit), 0, 0.05)
    xn, xo = d.xn_t[d.fit], d.xo_t[d.fit]
    t = torch.nn.functional.normalize(torch.from_numpy(xn), dim=1)
    vtruth = (t[qi] @ t[gi].T).topk(10, dim=1).indices.numpy()
    settings = {
        "val": dict(q_old=old.encode_query_codes(xo[qi], qb), g_old=bud.old_pair[gi],
                    q_new=hm.encode_query_codes(xn[qi], qb), g_new=hm.encode(xn[gi]),
                    truth=vtruth),
        "eval": dict(q_old=old.encode_query_codes(d.qo, qb), g_old=bud.old_g,
                     q_new=hm.encode_query_codes(d.qn, qb), g_new=hm.encode(d.gn),
                     truth=d.truth)}
    from bebr.compat import CALIBRATION_TOP, _fit_calibration
    cands = {"naive": (1.0, 0.0)}
    s = settings["val"]
    qspec = bebr.CodeSpec(dim, qb)
    sets = [(torch.from_numpy(qspec.values(q)), torch.from_numpy(spec.values(g)))
            for q, g in ((s["q_old"], s["g_old"]), (s["q_new"], s["g_new"]))]
    cands["logistic top-50"] = _fit_calibration(sets, torch.from_numpy(vtruth),
                                                CALIBRATION_TOP, "cosine")
    for top in (10, 20):
        cands[f"logistic top-{top}"] = _fit_calibration(sets, torch.from_numpy(vtruth), top,
                                                        "cosine")
    for name, st_ in settings.items():
        tk = {}
        for side in ("old", "new"):
            tk[side] = _topk_cosine(qspec.values(st_[f"q_{side}"]),
                                    spec.values(st_[f"g_{side}"]), 400)
        st_["tk"] = tk
    if args.dump:
        np.savez(args.dump, **{f"{n}_{side}_{j}": st_["tk"][side][j] for n, st_ in
                               settings.items() for side in ("old", "new") for j in (0, 1)},
                 **{f"{n}_truth": st_["truth"] for n, st_ in settings.items()},
                 **{f"cand_{k}": np.array(v) for k, v in cands.items()})
    for name, (a, b) in cands.items():
        print(f"{name}: a={a:.3f} b={b:+.3f}")
        for sname, st_ in settings.items():
            n = st_["g_old"].shape[0]
            masks = [M.backfill_subset(n, r, seed=0) for r in R]
            rec, fl = merge_curves_topk(st_["tk"]["old"], st_["tk"]["new"], masks,
                                        st_["truth"], (a, b))
            print(f"  {sname}: R10@10 {np.round(rec, 3).tolist()}\n"
                  f"  {sname}: flips  {np.round(fl, 3).tolist()}")
    if args.no_grid:
        return
    # grid of shifts at fixed scales: the landscape
    print("grid (val | eval): mean R10@10 over r, mean flips, max flips-naive")
    base = {}
    for sname, st_ in settings.items():
        n = st_["g_old"].shape[0]
        masks = [M.backfill_subset(n, r, seed=0) for r in R]
        base[sname] = (masks, merge_curves_topk(st_["tk"]["old"], st_["tk"]["new"], masks,
                                                st_["truth"], (1.0, 0.0)))
    for a in (0.6, 0.8, 1.0, 1.2, 1.5, 2.0):
        for b in np.round(np.arange(-0.3, 0.31, 0.05), 2):
            row = []
            for sname, st_ in settings.items():
                masks, (nr, nf) = base[sname]
                rec, fl = merge_curves_topk(st_["tk"]["old"], st_["tk"]["new"], masks,
                                            st_["truth"], (a, float(b)))
                row.append(f"{np.mean(rec):.3f} {np.mean(fl):.3f} "
                           f"{np.max(np.array(fl) - nf):+.3f} {np.min(np.array(rec) - nr):+.3f}")
            print(f"  a={a:.1f} b={b:+.2f}: " + " | ".join(row))


if __name__ == "__main__":
    main()
