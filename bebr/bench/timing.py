"""Timing helpers of the benchmarks (the suite's studies and tools/bench_kernels.py): interleaved
repeats with medians, the machine's streaming read bandwidth (C++ kernel) and a faiss fast-scan
PQ index of a given code size, built over random codes."""

from __future__ import annotations

import statistics
import time

import numpy as np

import bebr
from bebr import _C

__all__ = ["timed_repeats", "median_times", "paired_median_times", "at_level",
           "measure_bandwidth", "build_faiss_pq"]


def timed_repeats(fns, repeats):
    """Interleave the callables `repeats` times; seconds of each call, per callable."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for j, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[j].append(time.perf_counter() - t0)
    return times


def median_times(fns, repeats):
    """Interleave the callables `repeats` times; median seconds of each (list)."""
    return [statistics.median(t) for t in timed_repeats(fns, repeats)]


def paired_median_times(fns, repeats):
    """Interleave two callables `repeats` times: (median s of each, quartiles of the
    per-repeat paired speed ratio fns[1] time / fns[0] time)."""
    times = timed_repeats(fns, repeats)
    ratios = sorted(b / a for a, b in zip(times[0], times[1]))
    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratios[0]] * 3
    return statistics.median(times[0]), statistics.median(times[1]), (q[0], q[2])


def at_level(level, fn):
    """Run fn with the SIMD level switched to `level`, restoring the previous one."""
    before = bebr.simd_level()
    bebr.set_simd_level(level)
    try:
        return fn()
    finally:
        bebr.set_simd_level(before)


def measure_bandwidth(nbytes, threads, repeats):
    buf = np.ones(nbytes, dtype=np.uint8)
    _C.read_bandwidth(buf, threads, 1)  # fault the pages in
    secs, _ = _C.read_bandwidth(buf, threads, repeats)
    return nbytes / statistics.median(secs) / 1e9


def build_faiss_pq(faiss, dim, bits, n, rng, ntrain):
    """IndexPQFastScan with M = dim*bits/4 4-bit sub-quantizers over n random codes.

    The PQ is trained on a small random sample; its n codes are random bytes written straight
    into an IndexPQ and converted to the fast-scan layout (scan speed does not depend on them).
    """
    m = dim * bits // 4
    d = m  # one float per sub-quantizer; scan speed depends on M only
    pq = faiss.IndexPQ(d, m, 4)
    faiss.omp_set_num_threads(1)  # OpenMP k-means on a loaded 2-core box is pathologically slow
    pq.train(rng.standard_normal((ntrain, d)).astype(np.float32))
    codes = rng.integers(0, 256, (n, pq.code_size), dtype=np.uint8)
    faiss.copy_array_to_vector(codes.ravel(), pq.codes)
    pq.ntotal = n
    index = faiss.IndexPQFastScan(pq)
    if index.ntotal != n:
        raise RuntimeError(f"faiss IndexPQFastScan holds {index.ntotal} codes, expected {n}")
    return index, d
