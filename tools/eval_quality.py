"""Code quality benchmark (ANCHORS.md protocol): bebr Binarizer vs faiss baselines.

v1 = GloVe-50 of the 100k most frequent alphabetic words, v2 = all-MiniLM-L6-v2 of the same
words (cached under $BEBR_DATA). 2000 random queries (seed 0), the other 98,000 are the base;
truth = exact cosine top-10. R10@10 / R10@100 with flat search, no re-ranking.

bebr rows: a Binarizer trained on the base vectors only (queries never seen; train_binarizer's
defaults, with ``center=False`` pinned, measured better: BENCHMARKS.md section 2, and
``query_bits`` = the finest the kernel scores exactly (``bebr.codes.max_query_bits``: 4 over
1-2-bit codes, 7 over 3-4-bit codes): validation and early stopping with such query codes);
for each bit budget
the (dim, bits) with the best *validation* recall (held out inside the training rows) is kept.
Three rows per budget, all against the same stored codes, all searched with
``bebr.Index(spec, "cosine")`` (SDC, both sides binary codes) except the last:
"symmetric": query codes at the stored bits (``encode``); "q-bit query codes": queries encoded
with ``encode_query_codes(x, q)`` and searched with ``query_bits=q`` (the stored bits/vector
are the budget; queries are never stored, like RaBitQ's 4-bit queries); "asym": the float query
projection ``encode_query`` against the code values (torch matmul). faiss rows recomputed in
this run.

    python tools/eval_quality.py [--data v1 v2] [--write] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bebr import datasets as ds  # noqa: E402
from bebr.codes import max_query_bits  # noqa: E402
from bebr.train import train_binarizer  # noqa: E402

BUDGETS = {  # candidates per budget (dim, bits); earlier runs dropped v1 66x3 and v2 768x1,
    # 512x3 (init-only recall, tools/ablate_training.py)
    "v1": {50: [(25, 2), (50, 1)], 100: [(50, 2), (33, 3)], 200: [(50, 4), (100, 2)]},
    "v2": {384: [(384, 1), (192, 2)], 768: [(192, 4), (384, 2)], 1536: [(384, 4), (768, 2)]},
}


def recall(found, truth, r):
    found = torch.as_tensor(np.asarray(found))[:, :r]
    truth = torch.as_tensor(np.asarray(truth))
    return float((found[:, :, None] == truth[:, None, :]).any(1).float().mean())


def topk_torch(q, b, k=100, chunk=500):
    q, b = torch.as_tensor(q), torch.as_tensor(b)
    return torch.cat([(q[s:s + chunk] @ b.T).topk(k, dim=1).indices
                      for s in range(0, len(q), chunk)]).numpy()


def search_codes(index, qcodes, query_bits, k=100):
    """SDC search through ``bebr.Index`` (query codes at ``query_bits``)."""
    _, ids = index.search(qcodes, k, query_bits=query_bits)
    return ids


# ----------------------------------------------------------------------------- faiss rows
def faiss_rows(name, xb, xq, truth):
    import faiss

    d = xb.shape[1]
    rows = []

    def run(label, bits, index, train=True, params=None):
        t = time.perf_counter()
        if train:
            index.train(xb)
        index.add(xb)
        _, ids = index.search(xq, 100, params=params) if params is not None else \
            index.search(xq, 100)
        rows.append(dict(method=label, bits=bits, r10=recall(ids, truth, 10),
                         r100=recall(ids, truth, 100), secs=time.perf_counter() - t))
        print(json.dumps(rows[-1]), flush=True)

    def sign_bits():
        pad = (-d) % 8
        enc = lambda a: np.packbits(np.pad(a > 0, ((0, 0), (0, pad))), axis=1)
        idx = faiss.IndexBinaryFlat(d + pad)
        t = time.perf_counter()
        idx.add(enc(xb))
        _, ids = idx.search(enc(xq), 100)
        rows.append(dict(method="sign bits + Hamming", bits=d, r10=recall(ids, truth, 10),
                         r100=recall(ids, truth, 100), secs=time.perf_counter() - t))
        print(json.dumps(rows[-1]), flush=True)

    ip = faiss.METRIC_INNER_PRODUCT
    sign_bits()
    for b in ((1, 2, 4) if name == "v1" else (1, 2)):
        run(f"LSH (rotation) {b} b/dim", b * d, faiss.IndexLSH(d, b * d, True, False))
    for b in (1, 2, 4):
        idx = faiss.IndexRaBitQ(d, ip, b)
        idx.qb = 4
        run(f"RaBitQ {b} b/dim (qb=4)", b * d, idx)
    if name == "v1":
        run("PQ 25x4 fast scan", 100, faiss.IndexPQFastScan(d, 25, 4, ip))
        run("PQ 50x4 fast scan", 200, faiss.IndexPQFastScan(d, 50, 4, ip))
        run("PQ 25x8", 200, faiss.IndexPQ(d, 25, 8, ip))
        run("SQ 4-bit", 200, faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_4bit, ip))
    else:
        run("PQ 192x4 fast scan", 768, faiss.IndexPQFastScan(d, 192, 4, ip))
        run("PQ 96x8", 768, faiss.IndexPQ(d, 96, 8, ip))
        run("PQ 384x4 fast scan", 1536, faiss.IndexPQFastScan(d, 384, 4, ip))
        run("SQ 4-bit", 1536, faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_4bit, ip))
    return rows


# ----------------------------------------------------------------------------- bebr rows
def bebr_rows(name, xb, xq, truth, args):
    from bebr import Index

    rows = []
    for budget, configs in BUDGETS[name].items():
        cands = []
        for dim, bits in configs:
            load0 = os.getloadavg()[0]
            t = time.perf_counter()
            model = train_binarizer(xb, dim, bits, seed=0, progress=args.progress,
                                    threads=args.threads, max_time_s=args.max_time[name],
                                    epochs=args.epochs, center=False,
                                    query_bits=max_query_bits(bits))
            train_s = time.perf_counter() - t
            load1 = os.getloadavg()[0]
            val = model.train_info["val_r10@10"]
            print(json.dumps(dict(data=name, dim=dim, bits=bits, val_r10=val,
                                  train_s=round(train_s, 1),
                                  epochs=model.train_info["epochs_run"])), flush=True)
            cands.append((val, dim, bits, model, train_s, (load0 + load1) / 2))
        val, dim, bits, model, train_s, load = max(cands, key=lambda c: c[0])
        torch.set_num_threads(args.threads)
        t = time.perf_counter()
        bcodes = model.encode(xb)
        enc_vps = len(xb) / (time.perf_counter() - t)
        index = Index(model.spec, "cosine")
        index.add(bcodes)
        common = dict(bits=budget, train_s=train_s, enc_vps=enc_vps, load=load)

        def add_row(method, ids, **extra):
            rows.append(dict(method=method, r10=recall(ids, truth, 10),
                             r100=recall(ids, truth, 100), **common, **extra))
            print(json.dumps(rows[-1]), flush=True)

        qb = max_query_bits(bits)
        add_row(f"bebr {dim}x{bits} symmetric", search_codes(index, model.encode(xq), bits))
        add_row(f"bebr {dim}x{bits}, {qb}-bit query codes",
                search_codes(index, model.encode_query_codes(xq, qb), qb),
                val=val, tried=[f"{c[1]}x{c[2]}: {c[0]:.3f}" for c in cands])
        cb = F.normalize(torch.from_numpy(model.spec.values(bcodes)), dim=1)
        add_row(f"bebr {dim}x{bits} asym (float query)",
                topk_torch(torch.from_numpy(model.encode_query(xq)), cb))
    return rows


def table(name, rows):
    title = {"v1": "v1, GloVe 50-d", "v2": "v2, MiniLM 384-d"}[name]
    out = [title, "",
           "| method | bits/vector | R10@10 | R10@100 | train s (load) | encode vec/s |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["bits"], "bebr" in r["method"], r["r10"])):
        tr = f"{r['train_s']:.0f} ({r['load']:.1f})" if "train_s" in r else ""
        ev = f"{r['enc_vps']:,.0f}" if "enc_vps" in r else ""
        m = f"**{r['method']}**" if "bebr" in r["method"] else r["method"]
        out.append(f"| {m} | {r['bits']} | {r['r10']:.3f} | {r['r100']:.3f} | {tr} | {ev} |")
    tried = [f"{r['bits']} bits: {', '.join(r['tried'])}" for r in rows if "tried" in r]
    out += ["", "(dim x bits) tried, validation R10@10 with the finest query codes (4-bit "
            "over 1-2-bit codes, 7-bit over 3-4-bit codes; selection on held-out training "
            "rows): " + "; ".join(tried) + "."]
    return "\n".join(out)


def write_section(text):
    path = ROOT / "BENCHMARKS.md"
    s = path.read_text()
    marker = "<!-- section: quality (tools/eval_quality.py) -->"
    i = s.index(marker)
    j = s.find("<!-- section:", i + len(marker))
    j = len(s) if j < 0 else j
    body = f"{marker}\n## 2. Code quality: recall against bits\n\n{text}\n\n"
    path.write_text(s[:i] + body + s[j:])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", nargs="+", default=["v1", "v2"], choices=["v1", "v2"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--max-time-v1", type=float, default=200.0)
    ap.add_argument("--max-time-v2", type=float, default=150.0)
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--write", action="store_true", help="write the tables into BENCHMARKS.md")
    ap.add_argument("--json", default=None, help="also dump all rows to this JSON file")
    args = ap.parse_args(argv)
    args.max_time = {"v1": args.max_time_v1, "v2": args.max_time_v2}
    torch.set_num_threads(args.threads)
    try:
        import faiss
        faiss.omp_set_num_threads(args.threads)
    except ImportError:
        args.no_faiss = True
    words, x1 = ds.glove_words()
    qi, bi = ds.query_split(len(words), 2000, seed=0)
    tables, dump = [], {}
    for name in args.data:
        x = x1 if name == "v1" else ds.minilm_embeddings(words)
        xb, xq = np.ascontiguousarray(x[bi]), np.ascontiguousarray(x[qi])
        truth = ds.exact_topk(xq, xb, 10)
        rows = [] if args.no_faiss else faiss_rows(name, xb, xq, truth)
        rows += bebr_rows(name, xb, xq, truth, args)
        dump[name] = rows
        tables.append(table(name, rows))
    cmd = "python tools/eval_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"Command: `{cmd}` (torch/faiss threads: {args.threads}; `train s (load)`: "
            "training wall time with the 1-minute load average observed during it, on the "
            "shared 2-core machine).\n\n" + "\n\n".join(tables))
    print(text)
    if args.json:
        Path(args.json).write_text(json.dumps(dump, indent=1, default=str))
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
