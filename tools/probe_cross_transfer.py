"""How much of the new model's neighbourhoods can old codes carry? (issue 4 probe)

    python tools/probe_cross_transfer.py              # 128 dims x 2 bits, the section 3 v1 model
    python tools/probe_cross_transfer.py --budget 64x2

The compatibility criterion asks new-version queries to search old-version codes better than
old queries do: M(new,old) > M(old,old), truth = the new model's float top-10. This probe
measures, on the ANCHORS.md words with the v1 (GloVe-50) Binarizer of tools/eval_compat.py
(same training settings and model cache), what a query code in the old code space can reach:

- ``old query``: the query's own v1 code, i.e. M(old,old);
- ``oracle``: the normalised mean of the v1 codes of the query's true MiniLM top-10 (needs the
  answer, an upper reference);
- ``kNN transfer``: the same mean over the query's 10 nearest MiniLM neighbours in a pool of
  base items that have both a MiniLM float and a v1 code (no answer needed: a memory-based
  cross-version query encoder).

Query codes are quantized to the code grid (scaled to the v1 codes' RMS, nearest level) and
searched with ``bebr.Index(spec, "cosine")`` over the v1 codes of the 98,000 base words.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bebr  # noqa: E402
from bebr import datasets as ds  # noqa: E402
from bebr.train import train_binarizer  # noqa: E402
import eval_compat  # noqa: E402  (same data, v1 training settings and model cache)


def to_grid(values: np.ndarray, spec: bebr.CodeSpec, rms: float) -> np.ndarray:
    """Packed codes of the nearest grid levels to `values` scaled to RMS `rms` per row."""
    v = values / np.maximum(np.sqrt((values ** 2).mean(1, keepdims=True)), 1e-12) * rms
    half = 2 ** (spec.bits - 1)
    levels = np.clip(np.round((v * half + spec.n_levels - 1) / 2), 0, spec.n_levels - 1)
    return spec.pack(levels.astype(np.uint8))


def recall(index, queries, truth) -> float:
    _, found = index.search(queries, 10)
    return ds.recall_at(found, truth)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="128x2")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--train-rows", type=int, default=40000)
    ap.add_argument("--pool", type=int, default=40000, help="kNN transfer pool (base items)")
    ap.add_argument("--k", type=int, default=10, help="neighbours averaged")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    dim, bits = (int(v) for v in args.budget.lower().split("x"))
    t0 = time.perf_counter()
    words, g = ds.glove_words(100_000)
    m2 = ds.minilm_embeddings(words)
    qi, bi = ds.query_split(len(words), 2000, seed=0)
    cache = eval_compat.Cache(ds.data_dir() / "compat_models", args.epochs, args.train_rows)
    kw = dict(epochs=args.epochs, progress=False, seed=0, threads=1,
              max_train_rows=args.train_rows, center=True)  # as eval_compat trains v1
    v1 = cache.get(f"v1_{dim}x{bits}",
                   lambda: train_binarizer(g, dim, bits, version="glove50-v1", **kw))
    spec = v1.spec
    old_vals = v1.encode_values(g)
    rms = float(np.sqrt((old_vals ** 2).mean()))
    index = bebr.Index(spec, "cosine")
    index.add(v1.encode(g[bi]))
    truth = ds.exact_topk(m2[qi], m2[bi], 10)

    rows = [("old query (M(old,old))", v1.encode(g[qi]))]
    base_vals = old_vals[bi]
    rows.append(("oracle: mean v1 code of the true top-10",
                 to_grid(base_vals[truth].mean(1), spec, rms)))
    rng = np.random.default_rng(0)
    pool = np.sort(rng.choice(len(bi), size=min(args.pool, len(bi)), replace=False))
    nbrs = ds.exact_topk(m2[qi], m2[bi[pool]], args.k)
    rows.append((f"kNN transfer: mean v1 code of the {args.k} nearest MiniLM neighbours "
                 f"in a {len(pool):,}-item pool", to_grid(base_vals[pool][nbrs].mean(1), spec, rms)))

    print(f"v1 GloVe-50 codes {spec}, 2,000 MiniLM queries vs 98,000 base; truth = MiniLM float "
          f"top-10; R10@10 (cosine SDC)")
    print("| query code | R10@10 |")
    print("|---|---:|")
    for name, q in rows:
        print(f"| {name} | {recall(index, q, truth):.3f} |")
    print(f"({time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
