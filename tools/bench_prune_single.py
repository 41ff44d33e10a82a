"""One-query plane pruning against the exact scan, on the query-path benchmark's data.

The query-path protocol (tools/bench_query_path.py: 98k base words, cached models, cosine,
4-bit query codes, 1 thread): ``Index.search`` of one query's codes, exact and at each
``--prune`` value, timed interleaved query by query (so that the machine's load weighs on
every setting alike), medians over ``--queries`` queries and ``--rounds`` rounds, with the
R10@10 of each setting against the exact float top-10. Used to measure kernel variants of the
pruned scan against the build's exact one (BENCHMARKS.md, "Query path").

    python tools/bench_prune_single.py [--data v1 v2] [--prune 3 4] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bebr  # noqa: E402
from bebr import datasets as ds  # noqa: E402

MODELS = {"v1": ("glove", 50), "v2": ("minilm", 192)}  # the 2-bit single-query cells


def run(data: str, prunes, n_queries: int, rounds: int) -> dict:
    from _qp_models import cached_model
    from bench_query_path import protocol_data

    _, xb, xq, _ = next(protocol_data([data], 0))
    xq = xq[:n_queries]
    name, dim = MODELS[data]
    enc = cached_model(name, xb, dim, 2).to_encoder()
    index = bebr.Index(enc.spec, "cosine")
    index.add(enc.encode(xb))
    codes = [enc.encode_query_codes(xq[i:i + 1], 4) for i in range(len(xq))]
    truth = ds.exact_topk(xq, xb, 10)
    settings = [None] + list(prunes)
    times = {p: [] for p in settings}
    hits = {p: 0.0 for p in settings}
    for r in range(rounds):
        for i, q in enumerate(codes):
            for p in settings:
                t = time.perf_counter()
                _, ids = index.search(q, 10, query_bits=4, threads=1, prune=p)
                times[p].append(time.perf_counter() - t)
                if r == 0:
                    hits[p] += len(np.intersect1d(ids[0], truth[i])) / 10.0
    exact = float(np.median(times[None]))
    out = dict(data=data, model=f"{dim}x2", query_bits=4, simd=bebr.simd_level(), rows=[])
    for p in settings:
        med = float(np.median(times[p]))
        out["rows"].append(dict(prune=p, one_query_us=med * 1e6, vs_exact=med / exact,
                                r10=hits[p] / len(codes)))
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["v1", "v2"], choices=sorted(MODELS))
    ap.add_argument("--prune", nargs="+", type=float, default=[3.0, 4.0])
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    for data in args.data:
        print(json.dumps(run(data, args.prune, args.queries, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
