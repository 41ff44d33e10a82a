"""Where the query head's design choices come from (bebr.compat.train_cross_queries).

On the reduced MiniLM -> MPNet protocol of tools/eval_upgrade.py (``--train-source`` first40k:
the first 40,000 benchmark words; 9,000 fit rows of the training sample; its cached old model
``old_minilm_128x2_e6`` and independent new model ``ind_mpnet_128x2_e2`` under
``<data dir>/upgrade_eval/minilm-mpnet/first40k/``, so run eval_upgrade on that source first).
Selection set ("dev"): 1,000 seeded words of the 28,000-word gallery as queries against the
other 27,000 (truth: their new-float top-10) -- never the reported 2,000 queries and never a
training item; the reported queries ("test") are printed beside it.

1. The head's start: least squares of the centered new floats onto the old code values,
   solved in float32 (what the head used) and in float64 with a small ridge (what it uses).
2. Head variants through ``train_cross_queries`` (one member, no calibration): the two-stage
   default, the previous defaults (neighbours teacher, tau 0.05 / 0.07, lr 1e-3) and a linear
   head (``cross_depth`` 0, research only).

Usage: python tools/probe_head_design.py [--variants start,default,previous,linear]
(its output of the last run: docs/probe_head_design.txt)
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bebr  # noqa: E402
import eval_upgrade as E  # noqa: E402
from bebr import datasets as ds  # noqa: E402
from bebr.compat import train_cross_queries  # noqa: E402
from eval_compat import Evaluator  # noqa: E402

QB = 4
VARIANTS = {
    "default": {},
    "previous": {"teacher": "neighbors", "tau_teacher": 0.05, "tau": 0.07, "lr": 1e-3},
    "linear": {"depth": 0},
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="start,default,previous,linear")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    d = E.Data("minilm-mpnet", "first40k")
    root = ds.data_dir() / "upgrade_eval/minilm-mpnet/first40k"
    old = bebr.Binarizer.load(next(root.glob("old_minilm_128x2_e6_*")))
    new0 = bebr.Binarizer.load(next(p for p in root.glob("ind_mpnet_128x2_e2_*")
                                    if "head" not in p.name))
    spec = old.spec
    qspec = bebr.CodeSpec(spec.dim, QB)
    pair, gal = old.encode(d.xo_t[d.fit]), old.encode(d.go)
    perm = np.random.default_rng(3).permutation(len(d.go))
    dq, dg = np.sort(perm[:1000]), np.sort(perm[1000:])
    ev_t = Evaluator(spec, d.truth)
    ev_d = Evaluator(spec, ds.exact_topk(d.gn[dq], d.gn[dg], 10))

    def codes(z):
        return qspec.pack(qspec.quantize_angle(np.ascontiguousarray(z, np.float32)))

    def both(fn):
        return (round(ev_d.m(codes(fn(d.gn[dq])), gal[dg], query_bits=QB), 4),
                round(ev_t.m(codes(fn(d.qn)), gal, query_bits=QB), 4))
    print("old queries (dev, test):", both(lambda x: old.encode_query(
        d.go[dq] if x.shape[0] == len(dq) else d.qo)), flush=True)
    variants = args.variants.split(",")
    if "start" in variants:
        x = F.normalize(torch.from_numpy(d.xn_t[d.fit]), dim=1)
        o = F.normalize(torch.from_numpy(spec.values(pair)), dim=1)
        m = x.mean(0)
        w32 = torch.linalg.lstsq(x - m, o).solution
        xc = (x - m).double()
        w64 = torch.linalg.solve(xc.T @ xc + 1e-4 * len(x) * torch.eye(x.shape[1],
                                 dtype=torch.float64), xc.T @ o.double()).float()
        for name, w in (("float32 lstsq", w32), ("float64 ridge", w64)):
            print(f"start, {name} (dev, test):", both(
                lambda q, w=w: ((F.normalize(torch.from_numpy(q), dim=1) - m) @ w).numpy()),
                flush=True)
    for name in [v for v in variants if v != "start"]:
        kw = dict(VARIANTS[name])
        m = copy.deepcopy(new0)
        depth = kw.pop("depth", None)
        if depth is not None:
            m.config.cross_depth = depth  # research only: the file format needs depth >= 1
        t = time.perf_counter()
        train_cross_queries(m, d.xn_t[d.fit], pair, old.version, members=1, calibrate=False,
                            progress=False, seed=0, threads=2, **kw)
        head = m.cross_head(old.version)

        def fn(q, head=head):
            with torch.no_grad():
                return head(torch.from_numpy(q)).numpy()
        log = m.train_info["cross_val"][old.version]["log"]
        print(f"head {name} {kw} (dev, test): {both(fn)}; validation by epoch "
              f"{[(e.get('stage', ''), round(e['val_r10@10'], 3)) for e in log]}; "
              f"{time.perf_counter() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
