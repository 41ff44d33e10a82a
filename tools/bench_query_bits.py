"""Scan cost of finer query codes: bebr.Index searched with query codes at the stored bits and
at 4 bits (``query_bits=4``), against faiss IndexPQFastScan at the same bytes per vector, in
one process (interleaved repeats, medians; faiss is the baseline).

    python tools/bench_query_bits.py            # 1M items, dim 256, stored bits 1/2, nq 1/64
    python tools/bench_query_bits.py --quick    # tiny sizes (smoke test; numbers meaningless)

Finer queries raise recall (BENCHMARKS.md section 2); over 1-2-bit items the lookup-table
scan then widens its byte sums every row instead of every few rows, which this measures.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bebr  # noqa: E402
from bench_kernels import build_faiss_pq, median_times  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 20_000, 2
    import faiss

    faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"SIMD level {bebr.simd_level()}, n={args.n:,}, dim={args.dim}, threads "
          f"{args.threads}, load {os.getloadavg()[0]:.1f}; median of {args.repeats} "
          "interleaved repeats")
    print("| stored bits | nq | faiss PQ fast scan QPS | SDC QPS (stored-bit queries) | "
          "SDC QPS (4-bit queries) | 4-bit / stored-bit time | 4-bit SDC vs faiss |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    rows = []
    for bits in (1, 2):
        spec = bebr.CodeSpec(args.dim, bits)
        index = bebr.Index(spec, "ip")
        index.add(spec.pack(rng.integers(0, 2 ** bits, (args.n, args.dim))))
        pq, pq_d = build_faiss_pq(faiss, args.dim, bits, args.n, rng, ntrain=4096)
        for nq in (1, 64):
            qs = spec.pack(rng.integers(0, 2 ** bits, (nq, args.dim)))
            q4 = bebr.CodeSpec(args.dim, 4).pack(rng.integers(0, 16, (nq, args.dim)))
            qf = rng.standard_normal((nq, pq_d)).astype(np.float32)
            t_f, t_s, t_4 = median_times([
                lambda: pq.search(qf, 10),
                lambda: index.search(qs, 10, threads=args.threads),
                lambda: index.search(q4, 10, threads=args.threads, query_bits=4)],
                args.repeats)
            rows.append((bits, nq, nq / t_f, nq / t_s, nq / t_4, t_4 / t_s, t_f / t_4))
            print(f"| {bits} | {nq} | {nq / t_f:,.0f} | {nq / t_s:,.0f} | {nq / t_4:,.0f} | "
                  f"{t_4 / t_s:.2f} | {t_f / t_4:.2f}x |", flush=True)
    return rows


if __name__ == "__main__":
    main()
