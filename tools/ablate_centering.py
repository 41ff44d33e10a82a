"""Ablation: does centering the input before binarization help symmetric recall?

Trains the same Binarizer with ``center=True`` and ``center=False`` on the ANCHORS protocol
(98k base words, 2k queries, truth = exact float top-10 by cosine) and prints R10@10 of
symmetric SDC search through ``bebr.Index(spec, "cosine")``.

    python tools/ablate_centering.py v2 384 4 --epochs 1 [--itq-iters 0]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bebr, installed or not

import bebr
from bebr import datasets as ds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", choices=["v1", "v2"])
    ap.add_argument("dim", type=int)
    ap.add_argument("bits", type=int)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--itq-iters", type=int, default=30,
                    help="train_binarizer itq_iters (0: random rotation, the old init)")
    args = ap.parse_args()
    words, glove = ds.glove_words(100_000)
    x = glove if args.data == "v1" else ds.minilm_embeddings(words)
    qi, bi = ds.query_split(len(x))
    q, b = x[qi], x[bi]
    truth = ds.exact_topk(q, b, 10)
    for center in (False, True):
        t = time.perf_counter()
        model = bebr.train_binarizer(b, args.dim, args.bits, seed=0, progress=False,
                                     threads=args.threads, center=center, epochs=args.epochs,
                                     itq_iters=args.itq_iters)
        index = bebr.Index(model.spec, "cosine")
        index.add(model.encode(b))
        _, found = index.search(model.encode(q), 10)
        print(f"{args.data} {args.dim}x{args.bits} center={center} itq={args.itq_iters}: "
              f"R10@10 {ds.recall_at(found, truth, 10):.3f} "
              f"({time.perf_counter() - t:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
