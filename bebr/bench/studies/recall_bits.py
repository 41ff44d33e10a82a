"""Study 3: recall against bits per vector, bebr vs faiss LSH / PQ / RaBitQ / SQ, with
symmetric and asymmetric query handling, on GloVe-50 and MiniLM-384 (the word protocol of
`bebr.datasets`).

Budgets = the bits of the shared bebr models (bebr/bench/lib.py `MODEL_SHAPES`). Query
handling:
- symmetric: the query is encoded like the base and compared code against code: bebr SDC
  (`bebr.Index`, cosine), LSH Hamming (`bebr.HammingIndex`), faiss PQ/RaBitQ/SQ with the
  query replaced by sa_decode(sa_encode(query));
- asymmetric: float query against the stored codes: bebr `Binarizer.encode_query` (continuous
  first-step projection) against code values / code norm, LSH rotated float query against
  the +-1 sign codes, faiss PQ (ADC), RaBitQ (qb=0: float query), SQ (float query).
"""

from __future__ import annotations

import numpy as np

import bebr
from ..lib import (bebr_models, faiss_baselines, faiss_search, flat_topk, load_data,
                      lsh_bits, md_table, models_markdown, recall)

NAME = "bench-recall-bits"
TITLE = "Suite 3. Recall against bits per vector: bebr vs faiss, symmetric and asymmetric"
PLOT = "bench_recall_bits.png"


def config(quick: bool) -> dict:
    # faiss RaBitQ / SQ flat search runs ~100-500 queries/s: 500 of the 2000 queries (a seeded
    # random subset, the same for every method) keep the study within minutes
    return dict(datasets=["glove", "minilm"], k=100, eval_queries=None if quick else 500)


def _bebr_rows(name, base, queries, truth, quick, k):
    rows = []
    for (dim, bits), model in bebr_models(name, base, quick).items():
        codes = model.encode(base)
        idx = bebr.Index(model.spec, metric="cosine")
        idx.add(codes)
        sym = idx.search(model.encode(queries), k)[1]
        vals = model.spec.unpack(codes)
        vals = model.spec.level_values()[vals].astype(np.float32)
        inv_norm = 1.0 / np.maximum(np.linalg.norm(vals, axis=1), 1e-12)
        asym = flat_topk(model.encode_query(queries), vals, k, scale=inv_norm)
        rows.append(_row(f"bebr {dim}x{bits}", "bebr", dim * bits, sym, asym, truth))
    return rows


def _lsh_rows(base, queries, truth, budgets, k):
    rows = []
    for nbits in budgets:
        lb, lq, fq = lsh_bits(base, queries, nbits)
        spec = bebr.CodeSpec(nbits, 1)
        idx = bebr.HammingIndex(nbits)
        idx.add(spec.pack(lb))
        sym = idx.search(spec.pack(lq), k)[1]
        asym = flat_topk(fq, (2.0 * lb - 1.0).astype(np.float32), k)
        rows.append(_row(f"faiss LSH {nbits}", "faiss LSH", nbits, sym, asym, truth))
    return rows


def _faiss_rows(base, queries, truth, budgets, k):
    rows = []
    for budget in budgets:
        for label, make in faiss_baselines(base.shape[1], budget):
            index = make()
            index.train(base)
            index.add(base)
            sym = faiss_search(index, queries, k, symmetric=True)
            asym = faiss_search(index, queries, k, symmetric=False)
            rows.append(_row(label, " ".join(label.split()[:2]), budget, sym, asym, truth,
                             stored=index.code_size))
    return rows


def _row(label, family, bits, sym, asym, truth, stored=None):
    return dict(label=label, family=family, bits=bits,
                stored_bytes=stored if stored is not None else (bits + 7) // 8,
                sym10=recall(sym, truth, 10), sym100=recall(sym, truth, 100),
                asym10=recall(asym, truth, 10), asym100=recall(asym, truth, 100))


def run(quick: bool, bw: dict, log=print, max_n=None) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)
    c = config(quick)
    out = {}
    for name in c["datasets"]:
        base, queries, truth = load_data(name, quick)
        if c["eval_queries"] and c["eval_queries"] < len(queries):
            pick = np.sort(np.random.default_rng(0).choice(len(queries), c["eval_queries"],
                                                           replace=False))
            queries, truth = queries[pick], truth[pick]
        rows = _bebr_rows(name, base, queries, truth, quick, c["k"])
        budgets = sorted({r["bits"] for r in rows})
        rows += _lsh_rows(base, queries, truth, budgets, c["k"])
        rows += _faiss_rows(base, queries, truth, budgets, c["k"])
        for r in rows:
            log(f"{name} {r['label']}: R10@10 sym {r['sym10']:.3f} asym {r['asym10']:.3f}",
                flush=True)
        out[name] = dict(n=base.shape[0], nq=queries.shape[0], D=base.shape[1], rows=rows)
    return dict(config=c, data=out)


def markdown(res: dict) -> str:
    lines = [f"{res['config']['eval_queries'] or 'All'} queries (seeded random subset of the "
             "2000, the same for every method; faiss RaBitQ/SQ flat search is slow). "
             "R10@10 / R10@100 = share of the exact cosine top-10 found in the first 10 / 100 "
             "results, no re-ranking. 'sym': query encoded like the base (code vs code); "
             "'asym': float query vs codes. 'stored B' = bytes per stored vector (faiss RaBitQ "
             "adds per-vector float factors to its bits). Best R10@10 of each budget in bold. "
             "faiss RaBitQ 'sym' rows: in faiss 1.15.1 `IndexRaBitQ.sa_decode` returns the same "
             "reconstruction whatever the bits per dim (it uses the 1-bit part only), so those "
             "rows are a 1-bit symmetric RaBitQ at every budget; read RaBitQ's asym rows.",
             "", models_markdown(), ""]
    for name, d in res["data"].items():
        lines += [f"{name} (n={d['n']:,}, D={d['D']}, {d['nq']} queries):", ""]
        table = []
        for bits in sorted({r["bits"] for r in d["rows"]}):
            rs = [r for r in d["rows"] if r["bits"] == bits]
            best = max(max(r["sym10"], r["asym10"]) for r in rs)
            for r in sorted(rs, key=lambda r: -max(r["sym10"], r["asym10"])):
                def f(v):
                    return f"**{v:.3f}**" if v == best else f"{v:.3f}"
                table.append([bits, r["label"], r["stored_bytes"], f(r["sym10"]),
                              f"{r['sym100']:.3f}", f(r["asym10"]), f"{r['asym100']:.3f}"])
        lines += [md_table(["bits/vec", "method", "stored B", "R10@10 sym", "R10@100 sym",
                            "R10@10 asym", "R10@100 asym"], table), ""]
    return "\n".join(lines)


def plot(res: dict, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = res["data"]
    fig, axes = plt.subplots(1, len(data), figsize=(6.2 * len(data), 4.6), squeeze=False)
    for ax, (name, d) in zip(axes[0], data.items()):
        fams = list(dict.fromkeys(r["family"] for r in d["rows"]))
        for i, fam in enumerate(fams):
            rs = [r for r in d["rows"] if r["family"] == fam]
            best = {}
            for r in rs:  # one point per budget: the best variant of the family
                if r["bits"] not in best or r["asym10"] > best[r["bits"]]["asym10"]:
                    best[r["bits"]] = r
            bs = sorted(best)
            ax.plot(bs, [best[b]["asym10"] for b in bs], marker="o", color=f"C{i}",
                    label=f"{fam} asym")
            ax.plot(bs, [best[b]["sym10"] for b in bs], marker="x", ls="--", color=f"C{i}",
                    label=f"{fam} sym")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bits per vector (log2)")
        ax.set_ylabel("recall@10 (R10@10)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.set_title(f"{name}: n={d['n']:,}, D={d['D']}", fontsize=10)
        ax.legend(fontsize=7, loc="lower right", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
