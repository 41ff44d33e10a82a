"""Study 4: scaling with n (10k -> 10M): query latency, index memory, build and encode speed.

Codes of the MiniLM shape (`CodeSpec(384, 2)`, 96 bytes) in `bebr.Index` (SDC) and 768-bit
codes (same 96 bytes) in `bebr.HammingIndex`, random codes (speed does not depend on them).
Per n: add() throughput, resident memory added by the index (RSS after add - before, per
vector), single-query latency at 1 and 2 threads and batch QPS (nq=64, 2 threads), medians of
interleaved repeats. Encode throughput: `Binarizer.encode` / `encode_query` on MiniLM-384 and
GloVe-50 inputs (torch CPU threads as set by torch).
"""

from __future__ import annotations

import gc
import time

import numpy as np

import bebr
from ..lib import heap_bytes, md_table, median_times, rss_bytes

NAME = "bench-scaling"
TITLE = "Suite 4. Scaling: latency and memory from 10k to 10M vectors, encode throughput"
PLOT = "bench_scaling.png"

K = 10


def config(quick: bool) -> dict:
    if quick:
        return dict(ns=[1000, 4000, 16000], dim=384, bits=2, repeats=3, lat_queries=5,
                    encode_n=2000)
    return dict(ns=[10_000, 100_000, 1_000_000, 10_000_000], dim=384, bits=2, repeats=5,
                lat_queries=9, encode_n=50_000)


def _scan(c, rng, log):
    spec = bebr.CodeSpec(c["dim"], c["bits"])
    nb = spec.code_bytes
    rows = []
    for n in c["ns"]:
        codes = rng.integers(0, 256, (n, nb), dtype=np.uint8)
        q1 = rng.integers(0, 256, (c["lat_queries"], nb), dtype=np.uint8)
        q64 = rng.integers(0, 256, (64, nb), dtype=np.uint8)
        for kind, make in (("bebr SDC", lambda: bebr.Index(spec)),
                           ("bebr Hamming", lambda: bebr.HammingIndex(8 * nb))):
            gc.collect()
            r0, h0 = rss_bytes(), heap_bytes()
            idx = make()
            t0 = time.perf_counter()
            idx.add(codes)
            t_add = time.perf_counter() - t0
            rss = rss_bytes() - r0
            mem = heap_bytes() - h0 if h0 is not None else rss
            lat1, lat2 = [], []
            for i in range(c["lat_queries"]):
                qi = q1[i:i + 1]
                a, b = median_times([lambda: idx.search(qi, K, threads=1),
                                     lambda: idx.search(qi, K, threads=2)], c["repeats"])
                lat1.append(a)
                lat2.append(b)
            (t64,) = median_times([lambda: idx.search(q64, K, threads=2)], c["repeats"])
            rows.append(dict(method=kind, n=n, bytes=nb, add_s=n / t_add, mem=mem, rss=rss,
                             mem_per_vec=mem / n, lat1_ms=float(np.median(lat1)) * 1e3,
                             lat2_ms=float(np.median(lat2)) * 1e3, qps64=64 / t64))
            r = rows[-1]
            log(f"scaling {kind} n={n:,}: add {r['add_s'] / 1e6:.1f} M/s, "
                f"{r['mem_per_vec']:.1f} B/vec, {r['lat1_ms']:.3f} / {r['lat2_ms']:.3f} ms "
                f"(1/2 threads), {r['qps64']:.0f} QPS nq=64", flush=True)
            del idx
        del codes
    return rows


def _encode(c, rng, log):
    import torch

    rows = []
    for name, d_in, dim, bits in (("MiniLM-384", 384, 384, 2), ("GloVe-50", 50, 50, 2)):
        model = bebr.Binarizer(d_in, dim, bits)  # speed does not depend on the weights
        model.eval()
        x = rng.standard_normal((c["encode_n"], d_in), dtype=np.float32)
        model.encode(x[:1000])  # warm up
        te, tq = median_times([lambda: model.encode(x), lambda: model.encode_query(x)],
                              max(1, c["repeats"] // 2))
        rows.append(dict(input=name, shape=f"{dim}x{bits}", n=c["encode_n"],
                         encode_s=c["encode_n"] / te, query_s=c["encode_n"] / tq,
                         torch_threads=torch.get_num_threads()))
        log(f"encode {name} -> {dim}x{bits}: {rows[-1]['encode_s']:.0f} vectors/s", flush=True)
    return rows


def run(quick: bool, bw: dict, log=print, max_n=None) -> dict:
    c = config(quick)
    if max_n:  # cap the database sizes (time or memory); the report shows the sizes run
        c["ns"] = [n for n in c["ns"] if n <= max_n] or [max_n]
    rng = np.random.default_rng(0)
    return dict(config=c, scan=_scan(c, rng, log), encode=_encode(c, rng, log))


def markdown(res: dict) -> str:
    c = res["config"]
    lines = [f"`CodeSpec({c['dim']}, {c['bits']})` codes ({res['scan'][0]['bytes']} B) in "
             f"`bebr.Index` and {8 * res['scan'][0]['bytes']}-bit codes in `bebr.HammingIndex`, "
             f"k=10. Latency: median over {c['lat_queries']} queries of the median of "
             f"{c['repeats']} repeats. Memory: bytes the index holds after add() (malloc'd heap "
             "added, glibc mallinfo2: codes + ids + bookkeeping), per vector, and the RSS "
             "added (blurred by reuse of freed memory at small n).", ""]
    lines.append(md_table(
        ["method", "n", "add (M vec/s)", "index MiB", "B/vec", "RSS added MiB",
         "latency 1 thr (ms)",
         "latency 2 thr (ms)", "QPS nq=64, 2 thr"],
        [[r["method"], f"{r['n']:,}", f"{r['add_s'] / 1e6:.1f}", f"{r['mem'] / 2**20:.1f}",
          f"{r['mem_per_vec']:.1f}", f"{r['rss'] / 2**20:.1f}", f"{r['lat1_ms']:.3f}",
          f"{r['lat2_ms']:.3f}",
          f"{r['qps64']:.0f}"] for r in res["scan"]]))
    lines += ["", "Encode throughput (`Binarizer` with default hidden width/depth; untrained "
              "weights, same cost as trained):", ""]
    lines.append(md_table(["input", "code", "n", "encode (vec/s)", "encode_query (vec/s)",
                           "torch threads"],
                          [[r["input"], r["shape"], f"{r['n']:,}", f"{r['encode_s']:.0f}",
                            f"{r['query_s']:.0f}", r["torch_threads"]] for r in res["encode"]]))
    return "\n".join(lines)


def plot(res: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, m in enumerate(dict.fromkeys(r["method"] for r in res["scan"])):
        rs = [r for r in res["scan"] if r["method"] == m]
        ns = [r["n"] for r in rs]
        a1.plot(ns, [r["lat1_ms"] for r in rs], marker="o", color=f"C{i}", label=f"{m}, 1 thread")
        a1.plot(ns, [r["lat2_ms"] for r in rs], marker="x", ls="--", color=f"C{i}",
                label=f"{m}, 2 threads")
        a2.plot(ns, [max(r["mem"], 4096) / 2**20 for r in rs], marker="o", color=f"C{i}",
                label=m)
    for a in (a1, a2):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel("n (vectors)")
        a.grid(alpha=0.3)
        a.legend(fontsize=8)
    a1.set_ylabel("single-query latency, ms")
    a2.set_ylabel("index memory (heap bytes held), MiB")
    a1.set_title(f"{res['scan'][0]['bytes']} B/vector, k=10", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
