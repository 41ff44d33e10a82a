"""IVF benchmark: bebr.IVFIndex against faiss IVF-RaBitQ fast scan, IVF-PQ fast scan + refine and
HNSW over SQ8, on real sentence embeddings.

Real data (``--data minilm|mpnet``): embeddings of the ``--n`` most frequent purely alphabetic
GloVe words (bebr.datasets), ``--nq`` held-out queries (bebr.datasets.query_split, seed 0),
exact float top-10 truth by inner product (the rows are L2-normalised). bebr: a Binarizer of
``--budget`` (e.g. 192x2) trained on a sample of the base rows only, SDC over 2-bit item codes
with 4-bit query codes (``encode_query_codes(x, 4)``, ``search(query_bits=4)``), optionally
re-ranked with SQ8 codes of the float vectors (``bebr.ivf.Refine``, ``bebr.ivf.SQ8``: the same
refine data as faiss ``Refine(SQ8)``). Every configuration is searched with one
thread, single queries (a loop of ``--single`` queries) and one batch of all queries; the
fastest configuration of each method reaching R10@10 0.90 / 0.95 is reported with its QPS,
bytes per vector (whole index: codes, ids, lists, centroids, graph, refine data; faiss: the
serialized index size; bebr: ``IVFIndex.memory_bytes()`` of the serving index, i.e. before
its id table is built, with the figure including the table beside it) and build time. Everything expensive is cached under
``bebr.datasets.data_dir() / "bench_ivf"`` (embeddings, truth, models, faiss indexes with
their build times), so a rerun resumes.

    python tools/bench_ivf.py --data minilm --n 327091 --out ivf_minilm.json

(The scaling run, latency against n on synthetic codes: tools/bench_ivf_scaling.py.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bebr, installed or not

import bebr
from bebr import datasets
from bebr.ivf import SQ8, IVFIndex, Refine

CACHE = datasets.data_dir() / "bench_ivf"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def cached_npy(path: Path, fn):
    if path.exists():
        return np.load(path)
    arr = fn()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)
    return arr


def load_data(name: str, n: int, nq: int):
    words, glove = datasets.glove_words(n)
    if name == "glove":  # the 50-d GloVe vectors themselves (quick pipeline checks)
        x = glove
    elif name == "minilm":
        x = datasets.minilm_embeddings(words)
    elif name == "mpnet":
        x = datasets.mpnet_embeddings(words)
    else:
        raise SystemExit(f"unknown --data {name}")
    qi, bi = datasets.query_split(n, nq, seed=0)
    key = f"{name}_{n}_{nq}"
    truth = cached_npy(CACHE / f"truth_{key}.npy",
                       lambda: datasets.exact_topk(x[qi], x[bi], 10))
    return np.ascontiguousarray(x[bi]), np.ascontiguousarray(x[qi]), truth, key


def binarizer(xb: np.ndarray, budget: str, key: str, max_time_s: float):
    dim, bits = (int(v) for v in budget.split("x"))
    path = CACHE / f"model_{key}_{budget}_t{int(max_time_s)}"
    if (path / "config.json").exists():
        return bebr.Binarizer.load(path), 0.0
    rng = np.random.default_rng(0)
    sample = xb[np.sort(rng.choice(xb.shape[0], min(100_000, xb.shape[0]), replace=False))]
    t0 = time.perf_counter()
    model = bebr.train_binarizer(sample, dim, bits, seed=0, progress=False, threads=2,
                                 max_time_s=max_time_s, query_bits=4)
    dt = time.perf_counter() - t0
    model.save(path)
    (path / "train_time.json").write_text(json.dumps({"seconds": dt}))
    return model, dt


def recall10(found, truth):
    return datasets.recall_at(found[:, :10], truth)


def timed_search(fn, nq_single: int, nq: int):
    """(single-query QPS, batch QPS, ids of the batch run)."""
    t0 = time.perf_counter()
    for i in range(nq_single):
        fn(slice(i, i + 1))
    single = nq_single / (time.perf_counter() - t0)
    best = None
    for _ in range(2):  # median-of-two batch runs (first warms caches)
        t0 = time.perf_counter()
        ids = fn(slice(0, nq))
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return single, nq / best, ids


# ----------------------------------------------------------------------------- bebr
def bebr_rows(xb, xq, truth, model, key, nlists, nprobes, refines, nq_single, train_s, spills=(None,)):
    rows = []
    codes = model.encode(xb)
    q4 = model.encode_query_codes(xq, 4)
    spec = model.spec
    refine_data = SQ8.encode(xb)
    flat = bebr.Index(spec, "cosine")
    flat.add(codes)
    _, fi = flat.search(q4, 10, threads=1, query_bits=4)
    log(f"bebr flat SDC R10@10 {recall10(fi, truth):.3f}")
    for nlist, spill in ((nl, sp) for nl in nlists for sp in spills):
        ivf = IVFIndex(spec, nlist, "cosine", spill_lambda=spill)
        t0 = time.perf_counter()
        ivf.train(codes[np.random.default_rng(0).choice(codes.shape[0], min(codes.shape[0], 64 * nlist), replace=False)],
                  max_points_per_centroid=64)
        ivf.add(codes)
        ivf.compact()
        build = time.perf_counter() - t0
        mem = ivf.memory_bytes()
        parts = {k: v / xb.shape[0] for k, v in ivf.memory_breakdown().items()}
        _ = 0 in ivf  # builds the id table (remove / upsert / lookups need it)
        mem_table = ivf.memory_bytes()
        log(f"bebr IVF{nlist} bytes/vector by part {json.dumps(parts)}; id table "
            f"{(mem_table - mem) / xb.shape[0]:.1f}; SQ8 {refine_data.nbytes / xb.shape[0]:.1f}")
        for r in refines:
            for nprobe in nprobes:
                if nprobe > nlist:
                    continue
                def fn(sl, r=r, nprobe=nprobe):
                    if r == 0:
                        return ivf.search(q4[sl], 10, threads=1, query_bits=4, nprobe=nprobe)[1]
                    return ivf.search(q4[sl], 10, threads=1, query_bits=4, nprobe=nprobe,
                                      refine=Refine(refine_data, xq[sl], r))[1]
                single, batch, ids = timed_search(fn, nq_single, xq.shape[0])
                bpv = (mem + (refine_data.nbytes if r else 0)) / xb.shape[0]
                soar = "" if spill is None else f" SOAR(lambda={spill:g})"
                row = dict(method=f"bebr IVF{nlist}{soar} SDC {spec.dim}x{spec.bits} q4" + (" + SQ8 refine" if r else ""),
                           params=dict(nlist=nlist, nprobe=nprobe, refine=r),
                           recall=recall10(ids, truth), qps_single=single, qps_batch=batch,
                           bytes_per_vector=bpv,
                           bytes_per_vector_with_id_table=bpv + (mem_table - mem) / xb.shape[0],
                           memory_parts=parts, build_s=build, model_train_s=train_s)
                log(json.dumps(row))
                rows.append(row)
                if row["recall"] > 0.985:
                    break
    return rows


# ----------------------------------------------------------------------------- faiss
def coarse_centroids(xb, nlist: int, key: str):
    """One float coarse quantizer per (data, nlist), shared by every faiss IVF index (k-means
    on 64 points per centroid); returns (centroids, seconds)."""
    import faiss

    path = CACHE / f"faiss_coarse_{key}_{nlist}.npy"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return np.load(path), json.loads(meta.read_text())["build_s"]
    faiss.omp_set_num_threads(2)
    t0 = time.perf_counter()
    km = faiss.Kmeans(xb.shape[1], nlist, niter=20, seed=0, spherical=True,
                      max_points_per_centroid=64)
    km.train(xb)
    dt = time.perf_counter() - t0
    np.save(path, km.centroids)
    meta.write_text(json.dumps({"build_s": dt}))
    return km.centroids, dt


def faiss_index(xb, factory: str, key: str):
    """(index, build seconds): faiss IVF indexes get the shared coarse quantizer (its
    training time is counted in), their fine quantizer trained on <= 65536 rows."""
    import faiss

    path = CACHE / f"faiss_{key}_{factory.replace(',', '_').replace('(', '').replace(')', '')}.index"
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        return faiss.read_index(str(path)), json.loads(meta.read_text())["build_s"]
    faiss.omp_set_num_threads(2)
    idx = faiss.index_factory(xb.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    coarse_s = 0.0
    if factory.startswith("IVF"):
        nlist = faiss.extract_index_ivf(idx).nlist
        cent, coarse_s = coarse_centroids(xb, nlist, key)
        faiss.extract_index_ivf(idx).quantizer.add(cent)
    sample = xb[np.random.default_rng(0).choice(xb.shape[0], min(65536, xb.shape[0]), replace=False)]
    t0 = time.perf_counter()
    idx.train(sample)
    idx.add(xb)
    build = time.perf_counter() - t0 + coarse_s
    faiss.write_index(idx, str(path))
    meta.write_text(json.dumps({"build_s": build, "threads": 2}))
    # builds use 2 threads, every search in this tool 1: a caller that searches right after a
    # build (confirm) must not inherit the build's 2 OpenMP threads
    faiss.omp_set_num_threads(1)
    return idx, build


def faiss_rows(xb, xq, truth, key, factories, nprobes, kfactors, efs, nq_single):
    import faiss

    rows = []
    for fac in factories:
        idx, build = faiss_index(xb, fac, key)
        faiss.omp_set_num_threads(1)
        bpv = len(faiss.serialize_index(idx)) / xb.shape[0]
        hnsw = fac.startswith("HNSW")
        refine = "Refine" in fac or "RFlat" in fac
        grid = [(e, 1) for e in efs] if hnsw else [(p, kf) for kf in (kfactors if refine else [1]) for p in nprobes]
        for a, kf in grid:
            if hnsw:
                faiss.downcast_index(idx).hnsw.efSearch = a
                params = dict(efSearch=a)
            else:
                faiss.extract_index_ivf(idx).nprobe = a
                if refine:
                    faiss.downcast_index(idx).k_factor = kf
                params = dict(nprobe=a, k_factor=kf)
            fn = lambda sl: idx.search(xq[sl], 10)[1]
            single, batch, ids = timed_search(fn, nq_single, xq.shape[0])
            row = dict(method=f"faiss {fac}", params=params, recall=recall10(ids, truth),
                       qps_single=single, qps_batch=batch, bytes_per_vector=bpv, build_s=build)
            log(json.dumps(row))
            rows.append(row)
            if row["recall"] > 0.985:
                break
    return rows


def confirm(xb, xq, truth, models, key, picks, rounds, nq_single):
    """Re-time chosen configurations (the best row of each method at each target, from an
    earlier result) interleaved: ``rounds`` rounds, each timing every configuration once
    (single-query loop of ``nq_single`` queries, then one batch), so that load changes on a
    shared machine hit every configuration alike; QPS = median over rounds."""
    import faiss

    faiss.omp_set_num_threads(1)
    fns, built = [], {}
    refine_data = SQ8.encode(xb)
    for r in picks:
        m, p = r["method"], r["params"]
        if m.startswith("bebr"):
            dim_bits = m.split(" SDC ")[1].split(" ")[0]
            model = models[dim_bits]
            spill = float(m.split("lambda=")[1].split(")")[0]) if "SOAR" in m else None
            bkey = (dim_bits, p["nlist"], spill)
            if bkey not in built:
                codes = model.encode(xb)
                ivf = IVFIndex(model.spec, p["nlist"], "cosine", spill_lambda=spill)
                ivf.train(codes[np.random.default_rng(0).choice(codes.shape[0], min(codes.shape[0], 64 * p["nlist"]),
                                                                replace=False)], max_points_per_centroid=64)
                ivf.add(codes)
                ivf.compact()
                built[bkey] = (ivf, model.encode_query_codes(xq, 4))
            ivf, q4 = built[bkey]

            def fn(sl, ivf=ivf, q4=q4, p=p):
                if p["refine"] == 0:
                    return ivf.search(q4[sl], 10, threads=1, query_bits=4, nprobe=p["nprobe"])[1]
                return ivf.search(q4[sl], 10, threads=1, query_bits=4, nprobe=p["nprobe"],
                                  refine=Refine(refine_data, xq[sl], p["refine"]))[1]
        else:
            idx, _ = faiss_index(xb, m[len("faiss "):], key)

            def fn(sl, idx=idx, p=p):
                if "efSearch" in p:
                    faiss.downcast_index(idx).hnsw.efSearch = p["efSearch"]
                else:
                    faiss.extract_index_ivf(idx).nprobe = p["nprobe"]
                    if p["k_factor"] > 1:
                        faiss.downcast_index(idx).k_factor = p["k_factor"]
                return idx.search(xq[sl], 10)[1]
        fns.append(fn)
    faiss.omp_set_num_threads(1)  # (faiss_index restores it after a build too)
    single = [[] for _ in picks]
    batch = [[] for _ in picks]
    for rnd in range(rounds):
        for i, fn in enumerate(fns):
            s, b, ids = timed_search(fn, nq_single, xq.shape[0])
            single[i].append(s)
            batch[i].append(b)
        log(f"confirm round {rnd + 1}/{rounds} done")
    out = []
    for r, s, b, fn in zip(picks, single, batch, fns):
        out.append(dict(r, qps_single=float(np.median(s)), qps_batch=float(np.median(b)),
                        qps_single_rounds=s, qps_batch_rounds=b,
                        recall=recall10(fn(slice(0, xq.shape[0])), truth)))
        log(json.dumps({k: out[-1][k] for k in ("method", "params", "recall", "qps_single", "qps_batch")}))
    return out


def best_at(rows, target):
    out = {}
    for r in rows:
        if r["recall"] < target:
            continue
        m = r["method"]
        for mode in ("qps_single", "qps_batch"):
            k = (m, mode)
            if k not in out or r[mode] > out[k][mode]:
                out[k] = r
    return out


# ----------------------------------------------------------------------------- probing
def soar_lists(x: np.ndarray, cent: np.ndarray, primary: np.ndarray, lam: float,
               chunk: int = 8192) -> np.ndarray:
    """SOAR spilled assignment (Sun et al. 2023): the second list of each row minimises
    ||x - c'||^2 + lam * <r, x - c'>^2 / ||r||^2 with r = x - c(primary), over c' != primary."""
    out = np.empty(x.shape[0], np.int32)
    cn = (cent * cent).sum(1)
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk]
        r = xs - cent[primary[s:s + chunk]]
        rn = np.maximum((r * r).sum(1, keepdims=True), 1e-12)
        xc = xs @ cent.T
        d2 = (xs * xs).sum(1, keepdims=True) - 2 * xc + cn[None, :]
        # <r, x - c'> = <r, x> - <r, c'>
        par = (r * xs).sum(1, keepdims=True) - r @ cent.T
        loss = d2 + lam * par * par / rn
        loss[np.arange(xs.shape[0]), primary[s:s + chunk]] = np.inf
        out[s:s + chunk] = np.argmin(loss, axis=1)
    return out


def probe_study(xb, xq, truth, model, nlist, nprobes, soar_lambdas=(0.0, 1.0, 1.5)):
    """Share of the true top-10 items that lie in the probed lists (the recall ceiling of a
    probe) and the items a probe scans, when the query meets the centroids as its 4-bit query
    code values (what IVFIndex.search does) or as its float projection
    (Binarizer.encode_query); and with SOAR spilled assignment (every item also in a second
    list, ``soar_lists``; lambda 0 = the second-nearest centroid), which stores every code
    twice. Compare rows at equal items scanned."""
    codes = model.encode(xb)
    ivf = IVFIndex(model.spec, nlist, "cosine")
    ivf.train(codes[np.random.default_rng(0).choice(codes.shape[0], min(codes.shape[0], 64 * nlist), replace=False)],
              max_points_per_centroid=64)
    lists = ivf.assign(codes)
    q4 = model.encode_query_codes(xq, 4)
    proj = model.encode_query(xq)
    cent = ivf.centroids()
    x = (model.spec.values(codes) / float(model.spec.scale)).astype(np.float32)
    second = {lam: soar_lists(x, cent, lists, lam) for lam in soar_lambdas}
    size1 = np.bincount(lists, minlength=nlist)
    rows = []
    for nprobe in nprobes:
        by_code = ivf.probe(q4, nprobe, query_bits=4)
        by_float = np.argsort(-(proj @ cent.T), axis=1, kind="stable")[:, :nprobe]
        cov, scanned = {}, {}
        for name, probed in (("query code values", by_code), ("float projection", by_float)):
            hit = [np.isin(lists[truth[i]], probed[i]).mean() for i in range(truth.shape[0])]
            cov[name] = float(np.mean(hit))
            scanned[name] = float(size1[probed].sum(1).mean())
        for lam, sec in second.items():
            name = f"SOAR lambda={lam:g}, query code values"
            size2 = size1 + np.bincount(sec, minlength=nlist)
            hit = [(np.isin(lists[truth[i]], by_code[i]) | np.isin(sec[truth[i]], by_code[i])).mean()
                   for i in range(truth.shape[0])]
            cov[name] = float(np.mean(hit))
            scanned[name] = float(size2[by_code].sum(1).mean())
        row = dict(nlist=nlist, nprobe=nprobe, coverage=cov, scanned=scanned)
        log(json.dumps(row))
        rows.append(row)
    return rows


def render(res: dict) -> str:
    """Markdown tables of a result file: best configuration per method at each target, and
    the scaling rows."""
    out = []
    if "rows" in res:
        for t, best in res["best"].items():
            for mode in ("qps_single", "qps_batch"):
                rows = sorted((r for r in best if r["mode"] == mode), key=lambda r: -r[mode])
                out.append(f"R10@10 >= {t}, 1 thread, {'single queries' if mode == 'qps_single' else 'one batch of all queries'}:\n")
                out.append("| method | params | R10@10 | QPS | bytes/vector | build s |")
                out.append("|---|---|---:|---:|---:|---:|")
                for r in rows:
                    p = ", ".join(f"{k}={v}" for k, v in r["params"].items())
                    out.append(f"| {r['method']} | {p} | {r['recall']:.3f} | {r[mode]:.0f} | "
                               f"{r['bytes_per_vector']:.0f} | {r['build_s']:.0f} |")
                reached = {r["method"] for r in res["rows"] if r["recall"] >= float(t)}
                missing = sorted({r["method"] for r in res["rows"]} - reached)
                if missing:
                    out.append(f"\nnot reached: {'; '.join(missing)}")
                out.append("")
    if "probe" in res:
        out.append("| nlist | nprobe | probe | coverage of the true top-10 | items scanned |")
        out.append("|---:|---:|---|---:|---:|")
        for r in res["probe"]:
            for name, c in r["coverage"].items():
                out.append(f"| {r['nlist']} | {r['nprobe']} | {name} | {c:.3f} | {r['scanned'][name]:,.0f} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="minilm")
    ap.add_argument("--n", type=int, default=327_091)
    ap.add_argument("--nq", type=int, default=2000)
    ap.add_argument("--single", type=int, default=300, help="queries in the single-query loop")
    ap.add_argument("--budget", default="192x2", help="Binarizer dim x bits (','-separated: several)")
    ap.add_argument("--spill", default="none",
                    help="IVFIndex spill_lambda values, ','-separated ('none': single assignment)")
    ap.add_argument("--train-time", type=float, default=600.0)
    ap.add_argument("--nlist", default="1024")
    ap.add_argument("--nprobe", default="4,8,16,32,64,128")
    ap.add_argument("--refine", default="0,2,4,8")
    ap.add_argument("--faiss", default="IVF{nlist},RaBitQfs,Refine(SQ8);IVF{nlist},RaBitQfs2,Refine(SQ8);"
                    "IVF{nlist},RaBitQfs4;IVF{nlist},RaBitQfs4,Refine(SQ8);IVF{nlist},RaBitQfs,RFlat;"
                    "IVF{nlist},PQ96x4fs,Refine(SQ8);IVF{nlist},PQ96x4fs,RFlat;HNSW32,SQ8",
                    help="faiss factory strings (';'-separated); {nlist}: the first --nlist")
    ap.add_argument("--kfactor", default="2,4,8")
    ap.add_argument("--ef", default="16,32,64,128,256")
    ap.add_argument("--skip-faiss", action="store_true")
    ap.add_argument("--skip-bebr", action="store_true", help="faiss rows only")
    ap.add_argument("--confirm", default=None,
                    help="re-time the best rows of these result JSONs (','-separated) interleaved "
                         "(--rounds)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--probe-study", action="store_true",
                    help="only measure probe coverage: query codes vs float projection")
    ap.add_argument("--out", default=None, help="result JSON to write")
    ap.add_argument("--render", default=None, help="print the markdown tables of a result JSON")
    a = ap.parse_args(argv)
    if a.render:
        text = Path(a.render).read_text()
        try:
            res = json.loads(text)
        except ValueError:  # a run's stderr log: its JSON row lines (an interrupted run)
            rows = [json.loads(l) for l in text.splitlines() if l.startswith('{"method"')]
            res = dict(rows=rows, best={str(t): [dict(r, mode=m) for (_, m), r in
                                                 best_at(rows, t).items()] for t in (0.90, 0.95)})
        print(render(res))
        return
    if not a.out:
        ap.error("--out is required (or --render)")
    ints = lambda s: [int(v) for v in s.split(",") if v]
    CACHE.mkdir(parents=True, exist_ok=True)
    res = dict(simd=bebr.simd_level(), argv=sys.argv[1:], load_avg=os.getloadavg())
    xb, xq, truth, key = load_data(a.data, a.n, a.nq)
    log(f"data {key}: base {xb.shape}, queries {xq.shape}")
    models = [binarizer(xb, b, key, a.train_time) for b in a.budget.split(",")]
    model, train_s = models[0]
    if a.probe_study:
        res["probe"] = probe_study(xb, xq, truth, model, ints(a.nlist)[0], ints(a.nprobe))
        Path(a.out).write_text(json.dumps(res, indent=1))
        return
    if a.confirm:
        picks = {}
        for f in a.confirm.split(","):  # the best rows of every given grid
            prev = json.loads(Path(f).read_text())
            picks.update({(r["method"], json.dumps(r["params"], sort_keys=True)): r
                          for t in prev["best"].values() for r in t})
        by_budget = {b: m for b, (m, _) in zip(a.budget.split(","), models)}
        rows = confirm(xb, xq, truth, by_budget, key, list(picks.values()), a.rounds, a.single)
        res["rows"] = rows
        res["best"] = {str(t): [dict(r, mode=m) for (_, m), r in best_at(rows, t).items()]
                       for t in (0.90, 0.95)}
        Path(a.out).write_text(json.dumps(res, indent=1))
        log(f"wrote {a.out}")
        return
    spills = [None if v == "none" else float(v) for v in a.spill.split(",")]
    rows = []
    for model, train_s in ([] if a.skip_bebr else models):
        rows += bebr_rows(xb, xq, truth, model, key, ints(a.nlist), ints(a.nprobe), ints(a.refine),
                          a.single, train_s, spills)
    if not a.skip_faiss:
        facs = a.faiss.replace("{nlist}", str(ints(a.nlist)[0])).split(";")
        rows += faiss_rows(xb, xq, truth, key, facs, ints(a.nprobe),
                           ints(a.kfactor), ints(a.ef), a.single)
    res["rows"] = rows
    res["best"] = {str(t): [dict(r, mode=m) for (_, m), r in best_at(rows, t).items()]
                   for t in (0.90, 0.95)}
    Path(a.out).write_text(json.dumps(res, indent=1))
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
