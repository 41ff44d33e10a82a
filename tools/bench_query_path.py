"""Query path benchmark: one float query in, top-10 out; bebr (compiled, torch-free) vs faiss.

Protocol (issue 14): 1 thread everywhere (BLAS, faiss OpenMP, torch, bebr); the 100k most
frequent alphabetic GloVe words, 2,000 random queries (seed 0, ``datasets.query_split``),
the other 98,000 the base; GloVe-50 (v1) and all-MiniLM-L6-v2 (v2) embeddings of the same
words; truth = exact cosine top-10. bebr models: ``train_binarizer`` on the base rows
(cached under ``datasets.data_dir()/models/query_path``, tools/_qp_models.py), searched with
``bebr.Searcher`` (float queries -> query codes -> ``Index.search``, cosine). faiss
``IndexPQFastScan`` (M x 4 bits) and ``IndexRaBitQFastScan`` (1/2/4 bits, its default 8-bit
queries) on the same base, same run. Per row: bytes per stored vector, R10@10 over the 2,000
queries (batch run), one-query latency (median over ``--single`` queries, each a separate
call), batch QPS (2,000 queries in one call, best of 5 rounds in which every row of the data
is timed in turn). Also: encoding one query into query
codes, bulk encoding throughput (compiled path vs the torch float32 forward of bebr before
this path, 1 and 2 threads) with the share of codes that differ between them, and
``python -c "import bebr"`` time and peak RSS with and without the torch training layer.
The 2-bit bebr rows are also timed with plane pruning (``--prune``, ``Index.search(prune=)``:
approximate; their recall is measured like every row's).

    python tools/bench_query_path.py [--data v1 v2] [--single 300] [--write]
    python tools/bench_query_path.py --encoding [--data v1 v2] [--single 300]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
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
from bebr.codes import max_query_bits  # noqa: E402
from bebr.encoder import FAST_MARGIN  # noqa: E402

# (dim, bits) per data: the quality benchmark's budgets (GloVe 100 and 200 bits, MiniLM 384, 768
# and 1,536 bits), GloVe's also at the dims whose planes fill whole bytes (48 x 2 = 12 B, 48 x 4 =
# 24 B: no padding, so at no more bytes than faiss's PQ25x4 / PQ50x4 fast scan codes of 13 / 25 B)
CONFIGS = {"v1": [(48, 2), (50, 2), (48, 4), (50, 4)], "v2": [(192, 2), (192, 4), (384, 4)]}
PQ = {"v1": [25, 50], "v2": [96, 192, 384]}
MARKER = "<!-- section: query path (tools/bench_query_path.py) -->"
BATCH_ROUNDS = 5


def recall10(ids, truth):
    return float(np.mean([len(np.intersect1d(ids[i, :10], truth[i, :10])) / 10.0
                          for i in range(len(truth))]))


def protocol_data(data, single):
    """Per data name (v1 GloVe, v2 MiniLM) of the protocol: (name, base rows, query rows, the
    first ``single`` queries as one-row arrays)."""
    words, glove = ds.glove_words(100_000)
    qi, bi = ds.query_split(len(words), 2000, seed=0)
    for name in data:
        x = glove if name == "v1" else ds.minilm_embeddings(words)
        xb, xq = np.ascontiguousarray(x[bi]), np.ascontiguousarray(x[qi])
        yield name, xb, xq, [xq[i:i + 1] for i in range(single)]


def median_us(fn, xs):
    ts = []
    for x in xs:
        t = time.perf_counter()
        fn(x)
        ts.append(time.perf_counter() - t)
    return float(np.median(ts) * 1e6)


def best_qps(fn, xq, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn(xq)
        best = min(best, time.perf_counter() - t)
    return len(xq) / best, out


def blas_threads(n):
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def import_cost(code: str, repeats: int = 3) -> dict:
    """Median wall time of ``python -c code`` (whole process) and its peak RSS."""
    walls, rss = [], []
    prog = code + "; import resource; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(repeats):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", prog], capture_output=True, text=True,
                             env=env, cwd="/", check=True).stdout
        walls.append(time.perf_counter() - t)
        rss.append(int(out.split()[-1]) / 1024.0)
    return dict(wall_s=float(np.median(walls)), rss_mb=float(np.median(rss)))


def bulk_encoding(name, model, enc, xb, repeats=2):
    """Bulk encoding of the base rows: the compiled path (``Encoder.encode``) vs the torch
    float32 forward (bebr before this path), 1 and 2 threads, each the best of ``repeats``
    runs (the two alternated, so that the machine's load weighs on both alike); the share of
    codes that differ between them and of rows with a pre-activation re-evaluated in float64.
    Returns (the figures, the compiled codes)."""
    import torch

    info = dict(data=name, model=f"{model.dim}x{model.bits}")
    for th in (1, 2):
        best_c = best_t = float("inf")
        for _ in range(repeats):
            with blas_threads(th):
                t = time.perf_counter()
                codes = enc.encode(xb, threads=th)
                best_c = min(best_c, time.perf_counter() - t)
            torch.set_num_threads(th)
            t = time.perf_counter()
            old = model.spec.pack(model._encode_levels_torch(xb, refine=False))
            best_t = min(best_t, time.perf_counter() - t)
            torch.set_num_threads(1)
        info[f"compiled_vps_{th}t"] = len(xb) / best_c
        info[f"torch_vps_{th}t"] = len(xb) / best_t
    lv_new, lv_old = model.spec.unpack(codes), model.spec.unpack(old)
    info["rows_differ_vs_torch32"] = float((lv_new != lv_old).any(1).mean())
    info["dims_differ_vs_torch32"] = float((lv_new != lv_old).mean())
    info["rows_float64"] = enc._core.float64_rows(xb, FAST_MARGIN) / len(xb)
    return info, codes


def encoding_only(data, args, log):
    """Only the encoding figures (``--encoding``): bulk encoding of the 98k base rows
    (``bulk_encoding``) and one float query into query codes (median over ``--single``
    queries, 1 thread, fine and stored-bit query codes), per model."""
    import torch

    from _qp_models import cached_model

    torch.set_num_threads(1)
    out = []
    for name, xb, xq, singles in protocol_data(data, args.single):
        for dim, bits in CONFIGS[name]:
            model = cached_model("glove" if name == "v1" else "minilm", xb, dim, bits)
            enc = model.to_encoder()
            info, _ = bulk_encoding(name, model, enc, xb)
            for qb in sorted({bits, max_query_bits(bits)}):
                info[f"query_encode_us_{qb}bit"] = median_us(
                    lambda q, qb=qb: enc.encode_query_codes(q, qb), singles)
            log(json.dumps(info))
            out.append(info)
    return out


def bench_data(name, x, qi, bi, args, log):
    import faiss
    import torch

    from _qp_models import cached_model

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    xb, xq = np.ascontiguousarray(x[bi]), np.ascontiguousarray(x[qi])
    truth = ds.exact_topk(xq, xb, 10)
    singles = [xq[i:i + 1] for i in range(args.single)]
    rows, extra = [], []
    paired = []  # (row, one-query fn, scan fn) of the bebr rows, timed against faiss at the end
    batch_fns = []  # (row, batch fn) of every row, re-timed interleaved at the end

    def row(**r):
        rows.append(dict(data=name, **r))
        log(json.dumps(rows[-1]))

    for dim, bits in CONFIGS[name]:
        model = cached_model("glove" if name == "v1" else "minilm", xb, dim, bits)
        enc = model.to_encoder()
        enc_info, codes = bulk_encoding(name, model, enc, xb)
        log(json.dumps(enc_info))
        extra.append(enc_info)
        index = bebr.Index(model.spec, "cosine")
        index.add(codes)
        searcher = bebr.Searcher(enc, index)
        qb_fine = max_query_bits(bits)
        qenc = median_us(lambda q: enc.encode_query_codes(q, qb_fine), singles)
        variants = [(qb_fine, f"{qb_fine}-bit query codes", None), (bits, "stored-bit queries", None)]
        if bits == 2 and args.prune:
            variants += [(qb_fine, f"{qb_fine}-bit query codes, prune {args.prune:g}", args.prune),
                         (bits, f"stored-bit queries, prune {args.prune:g}", args.prune)]
        for qb, label, prune in variants:
            # (the lambdas bind this config's searcher and index: the paired timing at the end
            # calls them after the loop has moved on)
            fn = lambda q, qb=qb, searcher=searcher, prune=prune: searcher.search(
                q, 10, query_bits=qb, threads=1, prune=prune)[1]
            one = median_us(fn, singles)
            qps, ids = best_qps(fn, xq, repeats=1)
            batch_fns.append((len(rows), fn))
            codes_q = iter([enc.encode_query_codes(q, qb) for q in singles])
            scan = median_us(lambda q, qb=qb, prune=prune: index.search(
                next(codes_q), 10, query_bits=qb, threads=1, prune=prune), singles)
            extra_r = {} if prune else dict(
                query_encode_us=qenc if qb == qb_fine else
                median_us(lambda q: enc.encode_query_codes(q, bits), singles))
            row(method=f"bebr {dim}x{bits}, {label}", bytes=model.spec.code_bytes,
                r10=recall10(ids, truth), one_us=one, qps=qps, scan_us=scan, **extra_r)
            codes_all = [enc.encode_query_codes(q, qb) for q in singles]
            paired.append((rows[-1], fn, lambda i, qb=qb, c=codes_all, index=index, prune=prune:
                           index.search(c[i], 10, query_bits=qb, threads=1, prune=prune)))
    d = x.shape[1]
    ip = faiss.METRIC_INNER_PRODUCT
    faiss_idx = [(f"faiss PQ{m}x4 fast scan", lambda m=m: faiss.IndexPQFastScan(d, m, 4, ip))
                 for m in PQ[name]]
    faiss_idx += [(f"faiss RaBitQ fast scan, {b} bit", lambda b=b: faiss.IndexRaBitQFastScan(
        d, ip, 32, b)) for b in (1, 2, 4)]
    pq_fns = []
    for label, make in faiss_idx:
        idx = make()
        idx.train(xb)
        idx.add(xb)
        fn = lambda q, idx=idx: idx.search(q, 10)[1]
        one = median_us(fn, singles)
        qps, ids = best_qps(fn, xq, repeats=1)
        batch_fns.append((len(rows), fn))
        row(method=label, bytes=int(idx.code_size), r10=recall10(ids, truth), one_us=one,
            qps=qps)
        if " PQ" in label:
            pq_fns.append((rows[-1], fn))
    # one-query latency against the faiss PQ fast scan of the nearest bytes per vector, the
    # calls interleaved query by query (bebr, its scan alone, faiss), so that the machine's
    # load weighs on the three medians alike
    for r, fn, scan_fn in paired:
        f, ffn = min(pq_fns, key=lambda e: (abs(e[0]["bytes"] - r["bytes"]), e[0]["bytes"]))
        tb, ts, tf = [], [], []
        for i, q in enumerate(singles):
            for acc, call in ((tb, lambda: fn(q)), (ts, lambda: scan_fn(i)), (tf, lambda: ffn(q))):
                t = time.perf_counter()
                call()
                acc.append(time.perf_counter() - t)
        r["paired"] = dict(faiss=f["method"], faiss_bytes=f["bytes"], faiss_r10=f["r10"],
                           one_us=float(np.median(tb) * 1e6), scan_us=float(np.median(ts) * 1e6),
                           faiss_us=float(np.median(tf) * 1e6))
        log(json.dumps(dict(data=name, paired_for=r["method"], **r["paired"])))
    # batch QPS of every row re-timed in interleaved rounds (best of BATCH_ROUNDS each), so
    # that a load change during the run (e.g. helper threads of the 2-thread encoding still
    # spinning) weighs on every method alike; the first pass above only gives the recall
    best = [float("inf")] * len(batch_fns)
    for _ in range(BATCH_ROUNDS):
        for i, (_, fn) in enumerate(batch_fns):
            t = time.perf_counter()
            fn(xq)
            best[i] = min(best[i], time.perf_counter() - t)
    for (ri, _), b in zip(batch_fns, best):
        rows[ri]["qps"] = len(xq) / b
        log(json.dumps(dict(data=name, batch_for=rows[ri]["method"], qps=rows[ri]["qps"])))
    return rows, extra


def breakdown(data, args, log):
    """One float query, 1 thread: median time of encoding it into query codes, of the scan
    (``Index.search`` of those codes) and of both through ``Searcher.search``."""
    from _qp_models import cached_model

    out = []
    for name, xb, xq, singles in protocol_data(data, args.single):
        for dim, bits in CONFIGS[name]:
            enc = cached_model("glove" if name == "v1" else "minilm", xb, dim, bits).to_encoder()
            index = bebr.Index(enc.spec, "cosine")
            index.add(enc.encode(xb))
            s = bebr.Searcher(enc, index)
            for qb in sorted({bits, max_query_bits(bits)}):
                codes = [enc.encode_query_codes(q, qb) for q in singles]
                it = iter(codes)
                r = dict(data=name, model=f"{dim}x{bits}", query_bits=qb,
                         encode_us=median_us(lambda q: enc.encode_query_codes(q, qb), singles),
                         scan_us=median_us(lambda q: index.search(next(it), 10, query_bits=qb,
                                                                  threads=1), singles),
                         total_us=median_us(lambda q: s.search(q, 10, query_bits=qb,
                                                               threads=1), singles))
                log(json.dumps(r))
                out.append(r)
    return out


def table(rows, extra, imports) -> str:
    out = ["| data | method | bytes/vec | R10@10 | one query | batch QPS |",
           "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        m = f"**{r['method']}**" if r["method"].startswith("bebr") else r["method"]
        out.append(f"| {'GloVe' if r['data'] == 'v1' else 'MiniLM'} | {m} | {r['bytes']} | "
                   f"{r['r10']:.3f} | {r['one_us']:,.0f} us | {r['qps']:,.0f} |")
    out += ["", "Encoding one float query into query codes (median, 1 thread): " + "; ".join(
        f"{r['method'].split(',')[0][5:]} {r['method'].split(', ')[1].split(' ')[0]}: "
        f"{r['query_encode_us']:.1f} us" for r in rows if "query_encode_us" in r) + ".", "",
        "| data | model | compiled vec/s, 1 / 2 threads | torch float32 vec/s, 1 / 2 threads "
        "| rows re-evaluated in float64 | codes differing from torch float32 (rows / dims) |",
        "|---|---|---:|---:|---:|---:|"]
    for e in extra:
        out.append(f"| {'GloVe' if e['data'] == 'v1' else 'MiniLM'} | {e['model']} | "
                   f"{e['compiled_vps_1t']:,.0f} / {e['compiled_vps_2t']:,.0f} | "
                   f"{e['torch_vps_1t']:,.0f} / {e['torch_vps_2t']:,.0f} | "
                   f"{e['rows_float64']:.1%} | {e['rows_differ_vs_torch32'] * 98000:.0f} rows"
                   f" ({e['rows_differ_vs_torch32']:.4%}) / "
                   f"{e['dims_differ_vs_torch32']:.6%} of dims |")
    out += ["", "One float query against faiss IndexPQFastScan of the nearest bytes per vector, "
            "timed interleaved query by query in the same run (bebr's `Searcher.search`, its "
            "scan alone = `Index.search` of the query codes, faiss; medians over the same "
            "queries; the rest of bebr's time is encoding the query and the Python call):", ""]
    for r in rows:
        pr = r.get("paired")
        if not pr:
            continue
        out.append(f"- {'GloVe' if r['data'] == 'v1' else 'MiniLM'} {r['method'][5:]} "
                   f"({r['bytes']} B, R10@10 {r['r10']:.3f}): {pr['one_us']:,.0f} us "
                   f"(scan {pr['scan_us']:,.0f} us) vs {pr['faiss'][6:]} ({pr['faiss_bytes']} "
                   f"B, R10@10 {pr['faiss_r10']:.3f}) {pr['faiss_us']:,.0f} us: "
                   f"**{pr['one_us'] / pr['faiss_us']:.2f}x** (scan alone "
                   f"{pr['scan_us'] / pr['faiss_us']:.2f}x)")
    out += ["", "| `python -c ...` | wall s | peak RSS MB |", "|---|---:|---:|"]
    for k, v in imports.items():
        out.append(f"| `{k}` | {v['wall_s']:.2f} | {v['rss_mb']:.0f} |")
    return "\n".join(out)


def write_section(text, cmd):
    path = ROOT / "BENCHMARKS.md"
    s = path.read_text()
    body = (f"{MARKER}\n## Query path: float query in, top-10 out\n\n"
            f"`{cmd}` (1 thread everywhere; protocol in the script's docstring; the machine's "
            f"load average when the section was written: {os.getloadavg()[0]:.1f}).\n\n"
            f"{text}\n\n")
    if MARKER in s:
        i = s.index(MARKER)
        # the section ends at the next section marker or the next top-level heading
        ends = [e for e in (s.find("<!-- section:", i + len(MARKER)),
                            s.find("\n## ", s.index("\n## ", i) + 1)) if e >= 0]
        j = min(ends) + (1 if ends and s[min(ends)] == "\n" else 0) if ends else -1
        s = s[:i] + body + (s[j:] if j >= 0 else "")
    else:
        s = s.rstrip("\n") + "\n\n" + body
    path.write_text(s)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["v1", "v2"], choices=["v1", "v2"])
    ap.add_argument("--single", type=int, default=300, help="queries timed one at a time")
    ap.add_argument("--prune", type=float, default=3.0,
                    help="also time the 2-bit rows with Index.search(prune=) (0: not)")
    ap.add_argument("--write", action="store_true", help="write the section of BENCHMARKS.md")
    ap.add_argument("--breakdown", action="store_true",
                    help="only time one query's encoding, scan and both (bebr rows)")
    ap.add_argument("--encoding", action="store_true",
                    help="only the bulk encoding and one-query encoding figures")
    ap.add_argument("--render", metavar="LOG", default=None,
                    help="only re-render the tables from the JSON lines of a run's output")
    args = ap.parse_args(argv)
    log = lambda s: print(s, flush=True)
    if args.breakdown:
        res = breakdown(args.data, args, log)
        print("| data | model | query bits | encode | scan | Searcher.search |\n"
              "|---|---|---:|---:|---:|---:|\n" + "\n".join(
                  f"| {'GloVe' if r['data'] == 'v1' else 'MiniLM'} | {r['model']} | "
                  f"{r['query_bits']} | {r['encode_us']:.0f} us | {r['scan_us']:.0f} us | "
                  f"{r['total_us']:.0f} us |" for r in res))
        return
    if args.encoding:
        res = encoding_only(args.data, args, log)
        print("| data | model | compiled vec/s, 1 / 2 threads | torch float32 vec/s, 1 / 2 "
              "threads | ratio, 1 / 2 threads | rows re-evaluated in float64 | one query |\n"
              "|---|---|---:|---:|---:|---:|---|\n" + "\n".join(
                  f"| {'GloVe' if e['data'] == 'v1' else 'MiniLM'} | {e['model']} | "
                  f"{e['compiled_vps_1t']:,.0f} / {e['compiled_vps_2t']:,.0f} | "
                  f"{e['torch_vps_1t']:,.0f} / {e['torch_vps_2t']:,.0f} | "
                  f"{e['compiled_vps_1t'] / e['torch_vps_1t']:.2f}x / "
                  f"{e['compiled_vps_2t'] / e['torch_vps_2t']:.2f}x | {e['rows_float64']:.1%} | "
                  + ", ".join(f"{k.split('_')[-1]}: {v:.1f} us" for k, v in e.items()
                              if k.startswith("query_encode_us")) + " |" for e in res))
        return
    if args.render:
        rows, extra, imports = [], [], {}
        for line in Path(args.render).read_text().splitlines():
            if not line.startswith("{"):
                continue
            d = json.loads(line)
            if "import bebr" in d:
                imports = d
            elif "batch_for" in d:
                for r in rows:
                    if r["data"] == d["data"] and r["method"] == d["batch_for"]:
                        r["qps"] = d["qps"]
            elif "paired_for" in d:
                for r in rows:
                    if r["data"] == d["data"] and r["method"] == d["paired_for"]:
                        r["paired"] = {k: v for k, v in d.items() if k not in ("data", "paired_for")}
            elif "method" in d:
                rows.append(d)
            else:
                extra.append(d)
        text = table(rows, extra, imports)
        print(text)
        if args.write:
            write_section(text, "python tools/bench_query_path.py --single 200 --write")
        return
    imports = {"import bebr": import_cost("import bebr"),
               "import bebr; bebr.Binarizer; bebr.train_cross_queries (what import bebr loaded "
               "before)": import_cost("import bebr; bebr.Binarizer; bebr.train_cross_queries")}
    log(json.dumps(imports))
    words, glove = ds.glove_words(100_000)
    qi, bi = ds.query_split(len(words), 2000, seed=0)
    rows, extra = [], []
    for name in args.data:
        x = glove if name == "v1" else ds.minilm_embeddings(words)
        r, e = bench_data(name, x, qi, bi, args, log)
        rows += r
        extra += e
    text = table(rows, extra, imports)
    print(text)
    if args.write:
        write_section(text, "python tools/bench_query_path.py " + " ".join(argv or sys.argv[1:]))


if __name__ == "__main__":
    main()
