"""Study 2: iso-recall latency, Hamming on 1-bit codes vs SDC on bebr multi-bit codes.

The word protocol of `bebr.datasets` (GloVe-50 and MiniLM-384 words, 2000 queries, 98k base, truth = exact
cosine top-10). Families:
- Hamming, LSH: sign of faiss IndexLSH random-rotation projections with nbits = 1x..8x D,
  searched by `bebr.HammingIndex` (the fastest Hamming scan here, see section 1);
- Hamming, bebr 1-bit: learned 1-bit codes (`Binarizer` bits=1) searched by HammingIndex;
- SDC, bebr multi-bit: learned codes with bits >= 2 searched by `bebr.Index(metric="cosine")`.
Recall@10 = R10@10 (no re-ranking). Latency: one query per search call, one thread, all points
timed interleaved query by query, median over the timed queries; also batch QPS (all queries in
one call, one thread).
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import bebr
from ..lib import (bebr_models, load_data, lsh_bits, md_table, median_times,
                      models_markdown, recall)

NAME = "bench-iso-recall"
TITLE = "Suite 2. Iso-recall latency: Hamming on 1-bit codes vs SDC on multi-bit codes"
PLOT = "bench_iso_recall.png"

FAM_LSH = "Hamming, LSH sign bits"
FAM_B1 = "Hamming, bebr 1-bit"
FAM_SDC = "SDC, bebr multi-bit"
TARGETS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)


def config(quick: bool) -> dict:
    return dict(datasets=["glove", "minilm"], lsh_mult=[1, 2] if quick else [1, 2, 4, 8],
                lat_queries=20 if quick else 300, k=10)


def _points(name, base, queries, quick):
    D = base.shape[1]
    c = config(quick)
    pts = []
    for m in c["lsh_mult"]:
        nbits = m * D
        lb, lq, _ = lsh_bits(base, queries, nbits)
        spec = bebr.CodeSpec(nbits, 1)
        idx = bebr.HammingIndex(nbits)
        idx.add(spec.pack(lb))
        pts.append(dict(family=FAM_LSH, label=f"LSH {nbits} bits ({m}x D)", bits=nbits,
                        bytes=spec.code_bytes, index=idx, q=spec.pack(lq)))
    for (dim, bits), model in bebr_models(name, base, quick).items():
        if bits == 1:
            idx = bebr.HammingIndex(dim)
            fam = FAM_B1
        else:
            idx = bebr.Index(model.spec, metric="cosine")
            fam = FAM_SDC
        idx.add(model.encode(base))
        pts.append(dict(family=fam, label=f"bebr {dim}x{bits}", bits=dim * bits,
                        bytes=model.spec.code_bytes, index=idx, q=model.encode(queries)))
    return pts


def run(quick: bool, bw: dict, log=print, max_n=None) -> dict:
    c = config(quick)
    out = {}
    for name in c["datasets"]:
        base, queries, truth = load_data(name, quick)
        pts = _points(name, base, queries, quick)
        for p in pts:
            found = p["index"].search(p["q"], c["k"], threads=2)[1]
            p["recall"] = recall(found, truth, c["k"])
            (sec,) = median_times([lambda: p["index"].search(p["q"], c["k"], threads=1)], 3)
            p["batch_qps"] = len(p["q"]) / sec
        lat = [[] for _ in pts]
        for i in range(min(c["lat_queries"], len(queries))):
            for j, p in enumerate(pts):
                qi = p["q"][i:i + 1]
                t0 = time.perf_counter()
                p["index"].search(qi, c["k"], threads=1)
                lat[j].append(time.perf_counter() - t0)
        rows = []
        for p, ts in zip(pts, lat):
            rows.append(dict(family=p["family"], label=p["label"], bits=p["bits"],
                             bytes=p["bytes"], recall=p["recall"],
                             latency_us=statistics.median(ts) * 1e6, batch_qps=p["batch_qps"]))
            log(f"{name} {p['label']}: R10@10 {p['recall']:.3f}, "
                f"{rows[-1]['latency_us']:.0f} us/query, {p['batch_qps']:.0f} QPS batch",
                flush=True)
        out[name] = dict(n=base.shape[0], nq=queries.shape[0], D=base.shape[1], rows=rows)
    return dict(config=c, data=out)


def iso_table(rows, targets=TARGETS):
    """For each recall target: fastest point of each family (Hamming families merged)."""
    table = []
    for t in targets:
        best = {}
        for fam in ("Hamming", "SDC"):
            ok = [r for r in rows if r["family"].startswith(fam) and r["recall"] >= t]
            best[fam] = min(ok, key=lambda r: r["latency_us"]) if ok else None
        table.append((t, best["Hamming"], best["SDC"]))
    return table


def _cell(r):
    return "not reached" if r is None else \
        f"{r['label']}: {r['bytes']} B, {r['latency_us']:.0f} us"


def headline(res: dict) -> str:
    """Per dataset and recall target: the fastest Hamming point vs the fastest SDC point."""
    rows = []
    for name, d in res["data"].items():
        for t, h, s in iso_table(d["rows"]):
            if h is None and s is None:
                continue
            speed = f"{h['latency_us'] / s['latency_us']:.1f}x" if h and s else "-"
            size = f"{h['bytes'] / s['bytes']:.1f}x" if h and s else "-"
            rows.append([name, f">= {t:.2f}", _cell(h), _cell(s), speed, size])
    return md_table(["data", "R10@10 target", "fastest Hamming (1-bit codes)",
                     "fastest bebr SDC (multi-bit)", "latency Hamming / SDC (>1: SDC faster)",
                     "bytes Hamming / SDC (>1: SDC smaller)"], rows)


def markdown(res: dict) -> str:
    c = res["config"]
    lines = [f"Latency = median over {c['lat_queries']} single-query searches (k=10, 1 thread), "
             "all points interleaved query by query; batch QPS = all queries in one call on 1 "
             "thread, median of 3.", "", models_markdown(), "",
             "Which reaches a recall target faster, and with how many bytes:", "",
             headline(res), ""]
    for name, d in res["data"].items():
        lines += [f"All points, {name} (n={d['n']:,}, D={d['D']}, {d['nq']} queries):", ""]
        rows = sorted(d["rows"], key=lambda r: (r["family"], r["bits"]))
        lines.append(md_table(["family", "codes", "bits", "bytes", "R10@10", "latency us",
                               "batch QPS"],
                              [[r["family"], r["label"], r["bits"], r["bytes"],
                                f"{r['recall']:.3f}", f"{r['latency_us']:.0f}",
                                f"{r['batch_qps']:.0f}"] for r in rows]))
        lines.append("")
    return "\n".join(lines)


def plot(res: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    data = res["data"]
    fig, axes = plt.subplots(1, len(data), figsize=(6.2 * len(data), 4.6), squeeze=False)
    style = {FAM_LSH: ("C0", "o"), FAM_B1: ("C2", "s"), FAM_SDC: ("C3", "D")}
    for ax, (name, d) in zip(axes[0], data.items()):
        for fam, (col, mk) in style.items():
            rs = sorted((r for r in d["rows"] if r["family"] == fam), key=lambda r: r["bytes"])
            if not rs:
                continue
            ax.plot([r["latency_us"] for r in rs], [r["recall"] for r in rs], marker=mk,
                    color=col, label=fam)
            for r in rs:
                ax.annotate(f"{r['bytes']}B", (r["latency_us"], r["recall"]), fontsize=7,
                            xytext=(4, -9), textcoords="offset points", color=col)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("latency per query, us (1 thread, log)")
        ax.set_ylabel("recall@10 (R10@10)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title(f"{name}: n={d['n']:,}, D={d['D']}", fontsize=10)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
