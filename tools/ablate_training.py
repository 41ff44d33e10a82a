"""Training-loss ablation for train_binarizer on the ANCHORS.md protocol (v1 GloVe-50).

Each variant trains a Binarizer (threads=1) on ``--ntr`` random base rows (seed 1), then
searches the 2000 held-out queries against all 98,000 base rows: symmetric (code cosine) and
asymmetric (``encode_query`` against code values / norm). Prints one JSON line per variant
and a markdown table.

    python tools/ablate_training.py --dim 50 --bits 2 --ntr 30000 --epochs 3 \
        --variant "loss=distill depth=0" --variant "loss=nce depth=0" ...
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bebr import datasets as ds  # noqa: E402
from bebr.model import Binarizer  # noqa: E402
from bebr.train import _init_model, train_binarizer  # noqa: E402


def parse_kw(spec: str) -> dict:
    kw = {}
    for item in spec.split():
        k, v = item.split("=")
        for conv in (int, float):
            try:
                kw[k] = conv(v)
                break
            except ValueError:
                continue
        else:
            kw[k] = {"True": True, "False": False}.get(v, v)
    return kw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="v1", choices=["v1", "v2"])
    ap.add_argument("--dim", type=int, default=50)
    ap.add_argument("--bits", type=int, default=2)
    ap.add_argument("--ntr", type=int, default=30000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--variant", action="append", default=[],
                    help='train_binarizer keywords, e.g. "loss=nce depth=0"; "init-only" '
                         "measures the PCA + rotation init without training (optionally "
                         '"init-only center=True itq_iters=0")')
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    words, x = ds.glove_words()
    if args.data == "v2":
        x = ds.minilm_embeddings(words)
    qi, bi = ds.query_split(len(x))
    gt = torch.from_numpy(ds.exact_topk(x[qi], x[bi], 10))

    def rec(top, r):
        return float((top[:, :r, None] == gt[:, None, :]).any(1).float().mean())

    tr = np.sort(np.random.default_rng(1).choice(bi, args.ntr, replace=False))
    rows = []
    for v in args.variant or ["loss=distill"]:
        t = time.perf_counter()
        if v.startswith("init-only"):
            kw = dict(center=False, itq_iters=30)  # train_binarizer's defaults
            kw.update(parse_kw(v[len("init-only"):]))
            m = Binarizer(x.shape[1], args.dim, args.bits, depth=0)
            xt = torch.from_numpy(ds.l2_normalize(x[tr]))
            _init_model(m, xt, torch.Generator().manual_seed(0), kw["center"],
                        itq_iters=kw["itq_iters"])
        else:
            kw = dict(epochs=args.epochs, lr=args.lr, threads=1)
            kw.update(parse_kw(v))
            m = train_binarizer(x[tr], args.dim, args.bits, progress=False, **kw)
        train_s = time.perf_counter() - t
        cb = F.normalize(torch.from_numpy(m.encode_values(x[bi])), dim=1)
        cq = F.normalize(torch.from_numpy(m.encode_values(x[qi])), dim=1)
        ts = (cq @ cb.T).topk(100, dim=1).indices
        ta = (torch.from_numpy(m.encode_query(x[qi])) @ cb.T).topk(100, dim=1).indices
        row = dict(variant=v, sym10=rec(ts, 10), sym100=rec(ts, 100), asym10=rec(ta, 10),
                   asym100=rec(ta, 100), train_s=train_s)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{args.data}, {args.dim}x{args.bits} = {args.dim * args.bits} bits, trained on "
          f"{args.ntr} base rows, {args.epochs} epochs, lr {args.lr}\n")
    print("| variant | R10@10 sym | R10@100 sym | R10@10 asym | R10@100 asym | train s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['variant']} | {r['sym10']:.3f} | {r['sym100']:.3f} | {r['asym10']:.3f} | "
              f"{r['asym100']:.3f} | {r['train_s']:.0f} |")


if __name__ == "__main__":
    main()
