"""Study 1: scan throughput at equal bytes per vector, up to the largest n that fits.

bebr SDC (`bebr.Index`, dim x bits codes) vs `bebr.HammingIndex` (8*B bits) vs faiss
`IndexBinaryFlat` (8*B bits), `IndexPQFastScan` (2*B sub-quantizers of 4 bits) and
`IndexRaBitQ` / `IndexRaBitQFastScan` (d = 8*B dims at 1 bit; their codes carry extra
per-vector float factors, shown in the bytes column). Random codes / random data: scan speed
does not depend on the values. All methods of one (n, nq, threads) setting are timed
interleaved (tools/bench_kernels.py `median_times`), medians of `repeats`. GB/s = code bytes
streamed per second (every search reads the whole database once, whatever nq).
"""

from __future__ import annotations

import time

import numpy as np

import bebr
from ..lib import build_faiss_pq, md_table, median_times

NAME = "bench-kernels"
TITLE = "Suite 1. Kernel throughput at equal bytes per vector"
PLOT = "bench_kernels.png"

K = 10


def config(quick: bool) -> dict:
    if quick:
        return dict(ns=[3000], nq=[1, 4], threads=[1, 2], repeats=1, dim=128, bits=2,
                    rabitq_max_n=3000, rabitq_max_nq=4, chunk=2000, train=512)
    return dict(ns=[1_000_000, 10_000_000], nq=[1, 16, 64], threads=[1, 2], repeats=5,
                dim=256, bits=2, rabitq_max_n=1_000_000, rabitq_max_nq=16, chunk=250_000,
                train=4096)


def _random_float(rng, n, d, chunk):
    for s in range(0, n, chunk):
        yield rng.standard_normal((min(chunk, n - s), d), dtype=np.float32)


def build(n: int, c: dict, rng, log=print):
    """Every index of the study over n random items; returns {label: (bytes/vec, search)}."""
    import faiss

    faiss.omp_set_num_threads(1)  # training/encoding with spinning OpenMP threads on a busy
    dim, bits = c["dim"], c["bits"]  # 2-core machine can take minutes; search sets its own
    spec = bebr.CodeSpec(dim, bits)
    nbytes = spec.code_bytes
    nbits = 8 * nbytes
    codes = rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    out = {}
    t0 = time.perf_counter()
    sdc = bebr.Index(spec)
    sdc.add(codes)
    ham = bebr.HammingIndex(nbits)
    ham.add(codes)
    fbin = faiss.IndexBinaryFlat(nbits)
    fbin.add(codes)
    del codes
    fpq, fpq_d = build_faiss_pq(faiss, 2 * nbytes, 4, n, rng, c["train"])
    out["bebr SDC"] = (nbytes, lambda q, t: sdc.search(q["code"], K, threads=t))
    out["bebr Hamming"] = (nbytes, lambda q, t: ham.search(q["code"], K, threads=t))
    out["faiss BinaryFlat"] = (nbytes, lambda q, t: fbin.search(q["code"], K))
    out[f"faiss PQ{2 * nbytes}x4 fastscan"] = (
        nbytes, lambda q, t: fpq.search(q["pq"], K))
    if n <= c["rabitq_max_n"]:
        rfs = faiss.IndexRaBitQFastScan(nbits, faiss.METRIC_INNER_PRODUCT)
        rfs.train(rng.standard_normal((c["train"], nbits), dtype=np.float32))
        for x in _random_float(rng, n, nbits, c["chunk"]):
            rfs.add(x)
        out["faiss RaBitQ fastscan"] = (rfs.code_size, lambda q, t: rfs.search(q["float"], K))
        rbq = faiss.IndexRaBitQ(nbits, faiss.METRIC_INNER_PRODUCT)
        rbq.train(rng.standard_normal((c["train"], nbits), dtype=np.float32))
        for x in _random_float(rng, n, nbits, c["chunk"]):
            rbq.add(x)
        out["faiss RaBitQ"] = (rbq.code_size, lambda q, t: rbq.search(q["float"], K))
    log(f"# kernels n={n:,}: built {len(out)} indexes in {time.perf_counter() - t0:.0f} s",
        flush=True)
    return out, fpq_d


def run(quick: bool, bw: dict, log=print, max_n=None) -> dict:
    import faiss

    c = config(quick)
    if max_n:  # cap the database sizes (time or memory); the report shows the sizes run
        c["ns"] = [n for n in c["ns"] if n <= max_n] or [max_n]
    rng = np.random.default_rng(0)
    spec = bebr.CodeSpec(c["dim"], c["bits"])
    rows = []
    for n in c["ns"]:
        idx, pq_d = build(n, c, rng, log)
        for nq in c["nq"]:
            q = dict(code=rng.integers(0, 256, (nq, spec.code_bytes), dtype=np.uint8),
                     pq=rng.standard_normal((nq, pq_d), dtype=np.float32),
                     float=rng.standard_normal((nq, 8 * spec.code_bytes), dtype=np.float32))
            for t in c["threads"]:
                faiss.omp_set_num_threads(t)
                labels = [lb for lb in idx
                          if not (lb == "faiss RaBitQ" and nq > c["rabitq_max_nq"])]
                times = median_times([lambda lb=lb: idx[lb][1](q, t) for lb in labels],
                                     c["repeats"])
                for lb, sec in zip(labels, times):
                    b = idx[lb][0]
                    rows.append(dict(n=n, nq=nq, threads=t, method=lb, bytes=b, sec=sec,
                                     qps=nq / sec, gbs=n * b / sec / 1e9, bw=bw[t]))
                base = {r["method"]: r for r in rows[-len(labels):]}
                log(f"n={n:,} nq={nq} threads={t}: " + ", ".join(
                    f"{lb} {base[lb]['qps']:.1f} QPS ({base[lb]['gbs']:.2f} GB/s)"
                    for lb in labels), flush=True)
        del idx
    return dict(config=c, rows=rows, spec=(c["dim"], c["bits"], spec.code_bytes))


def markdown(res: dict) -> str:
    c = res["config"]
    dim, bits, nbytes = res["spec"]
    rows = res["rows"]
    lines = [f"{nbytes} bytes per vector for every method: bebr SDC `CodeSpec({dim}, {bits})`, "
             f"bebr `HammingIndex({8 * nbytes})`, faiss `IndexBinaryFlat({8 * nbytes})`, "
             f"faiss `IndexPQFastScan` with {2 * nbytes} sub-quantizers x 4 bits, faiss "
             f"`IndexRaBitQ`/`IndexRaBitQFastScan` at d={8 * nbytes}, 1 bit/dim (their codes "
             "add per-vector float factors: bytes column). k=10, random data, medians of "
             f"{c['repeats']} interleaved repeats. faiss RaBitQ (both) only up "
             f"to n={c['rabitq_max_n']:,} (encoding 10M x {8 * nbytes}-d floats takes minutes), "
             f"`IndexRaBitQ` only for nq<={c['rabitq_max_nq']} (it is ~100x slower). "
             "'x SDC' = QPS of the row / QPS of bebr SDC in the same setting; 'of bw' = GB/s "
             "over the streaming-read bandwidth at that thread count.", ""]
    table = []
    for r in rows:
        sdc = next(x for x in rows if x["n"] == r["n"] and x["nq"] == r["nq"]
                   and x["threads"] == r["threads"] and x["method"] == "bebr SDC")
        table.append([f"{r['n']:,}", r["nq"], r["threads"], r["method"], r["bytes"],
                      f"{r['qps']:.1f}", f"{r['sec'] * 1e3:.2f}", f"{r['gbs']:.2f}",
                      f"{r['gbs'] / r['bw']:.2f}", f"{r['qps'] / sdc['qps']:.2f}"])
    lines.append(md_table(["n", "nq", "threads", "method", "bytes/vec", "QPS", "ms/search",
                           "GB/s", "of bw", "x SDC"], table))
    if any(r["gbs"] > r["bw"] for r in rows):
        lines += ["", "'of bw' above 1: the streaming-read bandwidth, measured once at the start "
                  "of the run, came out lower than what the scans reached later; on this shared "
                  "VM that measurement moves several-fold with the load of the other processes "
                  "(and the databases up to 1M x 64 B fit in its large last-level cache), so "
                  "read the ratios to faiss, not 'of bw', as the result."]
    return "\n".join(lines)


def plot(res: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = res["rows"]
    ns = sorted({r["n"] for r in rows})
    nqs = sorted({r["nq"] for r in rows})
    threads = sorted({r["threads"] for r in rows})
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colors = {m: f"C{i}" for i, m in enumerate(methods)}
    fig, axes = plt.subplots(len(ns), len(threads), figsize=(5.5 * len(threads), 3.6 * len(ns)),
                             squeeze=False)
    w = 0.8 / len(methods)
    for axrow, n in zip(axes, ns):
        for ax, t in zip(axrow, threads):
            for j, m in enumerate(methods):
                ys = []
                for nq in nqs:
                    hit = [r["gbs"] for r in rows if r["n"] == n and r["nq"] == nq
                           and r["threads"] == t and r["method"] == m]
                    ys.append(hit[0] if hit else np.nan)
                ax.bar(np.arange(len(nqs)) + j * w, ys, w, label=m, color=colors[m])
            bw = next(r["bw"] for r in rows if r["threads"] == t)
            ax.axhline(bw, color="k", ls="--", lw=1, label=f"read bandwidth {bw:.1f} GB/s")
            ax.set_xticks(np.arange(len(nqs)) + w * (len(methods) - 1) / 2)
            ax.set_xticklabels([f"nq={q}" for q in nqs])
            ax.set_yscale("log")
            ax.set_ylabel("GB of codes scanned / s")
            ax.set_title(f"n={n:,}, {res['spec'][2]} B/vector, {t} thread(s)", fontsize=10)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=8, loc="lower center", ncol=4)
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
