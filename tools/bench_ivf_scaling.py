"""IVF scaling benchmark: single-query latency of bebr.IVFIndex against the flat bebr.Index as
n grows, on synthetic clustered codes.

Data: a seeded Gaussian mixture in ``--dim`` dimensions (``--clusters`` centres drawn from
N(0, 1), points = centre + ``--sigma`` * N(0, 1) noise), coded per dimension at the
equal-probability thresholds of the data's own distribution: 2-bit item codes (``dim x 2``,
64 bytes at 256-d), 4-bit query codes (``query_bits=4``), metric ip. No trained model: the
codes are a fixed per-dimension quantizer of isotropic data (a randomly rotated binarizer
would see the same distribution). Queries: ``--nq`` fresh points of the same mixture.

For each n: IVF with ``nlist = round(--nlist-per-sqrt * sqrt(n))`` (centroids: spherical
k-means on 64 codes per list), single-query latency (median of ``--nq`` one-query calls,
1 thread) of the flat scan and of the IVF at a fixed ``--nprobe``, and at the smallest
nprobe of a doubling grid whose R10@10 against the flat SDC top-10 (the exact answer over
the same codes) reaches ``--target``. Every n is cached under
``bebr.datasets.data_dir() / "bench_ivf" / "scaling"`` (codes and its result row), so a rerun
resumes and a larger n can be added later.

    python tools/bench_ivf_scaling.py --n 100000,300000,1000000,3000000,10000000 --out ivf_scaling.json
    python tools/bench_ivf_scaling.py --render ivf_scaling.json
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
from bebr.ivf import IVFIndex

CACHE = datasets.data_dir() / "bench_ivf" / "scaling"


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class Mixture:
    """The seeded Gaussian mixture and its fixed per-dimension quantizers."""

    def __init__(self, dim: int, clusters: int, sigma: float, seed: int = 0) -> None:
        self.dim, self.sigma = dim, sigma
        rng = np.random.default_rng(seed)
        self.centers = rng.standard_normal((clusters, dim)).astype(np.float32)
        # the marginal of every dimension is N(0, 1 + sigma^2): equal-probability cuts of a
        # large sample give the 2-bit item and 4-bit query thresholds
        sample = self.points(200_000, np.random.default_rng(seed + 1)).reshape(-1)
        self.cuts2 = np.quantile(sample, [0.25, 0.5, 0.75]).astype(np.float32)
        self.cuts4 = np.quantile(sample, np.arange(1, 16) / 16).astype(np.float32)
        self.spec, self.qspec = bebr.CodeSpec(dim, 2), bebr.CodeSpec(dim, 4)

    def points(self, n: int, rng) -> np.ndarray:
        c = self.centers[rng.integers(0, self.centers.shape[0], n)]
        return c + self.sigma * rng.standard_normal((n, self.dim), dtype=np.float32)

    def codes(self, n: int, seed: int, chunk: int = 250_000) -> np.ndarray:
        out = np.empty((n, self.spec.code_bytes), np.uint8)
        rng = np.random.default_rng(seed)
        for s in range(0, n, chunk):
            x = self.points(min(chunk, n - s), rng)
            out[s:s + x.shape[0]] = self.spec.pack(np.searchsorted(self.cuts2, x).astype(np.uint8))
        return out

    def queries(self, nq: int, seed: int) -> np.ndarray:
        x = self.points(nq, np.random.default_rng(seed))
        return self.qspec.pack(np.searchsorted(self.cuts4, x).astype(np.uint8))


def cached_codes(mix: Mixture, n: int, tag: str) -> np.ndarray:
    path = CACHE / f"codes_{tag}_{n}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    t0 = time.perf_counter()
    arr = mix.codes(n, seed=n)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)
    log(f"generated {n:,} codes in {time.perf_counter() - t0:.0f} s")
    return arr


def median_latency_ms(fn, nq: int) -> float:
    fn(0)  # warm-up
    ts = []
    for i in range(nq):
        t0 = time.perf_counter()
        fn(i)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)) * 1e3


def run_n(mix: Mixture, n: int, a, tag: str) -> dict:
    codes = cached_codes(mix, n, tag)
    q = mix.queries(a.nq, seed=12345)
    nlist = max(1, int(round(a.nlist_per_sqrt * np.sqrt(n))))
    flat = bebr.Index(mix.spec, "ip")
    t0 = time.perf_counter()
    flat.add(np.ascontiguousarray(codes))
    flat_build = time.perf_counter() - t0
    _, truth = flat.search(q, 10, threads=1, query_bits=4)
    flat_ms = median_latency_ms(lambda i: flat.search(q[i:i + 1], 10, threads=1, query_bits=4), a.nq)
    flat_bpv = flat.memory_bytes() / n
    flat = None  # free its memory before the IVF is built
    ivf = IVFIndex(mix.spec, nlist, "ip")
    t0 = time.perf_counter()
    sample = np.sort(np.random.default_rng(1).choice(n, min(n, 64 * nlist), replace=False))
    ivf.train(np.ascontiguousarray(codes[sample]), max_points_per_centroid=64)
    train_s = time.perf_counter() - t0
    for s in range(0, n, 1_000_000):  # add in pieces: the float code values stay small
        ivf.add(np.ascontiguousarray(codes[s:s + 1_000_000]))
    build_s = time.perf_counter() - t0
    del codes
    grid = []
    nprobe = 1
    while nprobe <= nlist:
        _, found = ivf.search(q, 10, threads=1, query_bits=4, nprobe=nprobe)
        grid.append(dict(nprobe=nprobe, recall=datasets.recall_at(found, truth)))
        if grid[-1]["recall"] >= max(a.target, 0.99) or nprobe == nlist:
            break
        nprobe = min(2 * nprobe, nlist)
    fixed = min(a.nprobe, nlist)
    _, found = ivf.search(q, 10, threads=1, query_bits=4, nprobe=fixed)
    at_target = next((g["nprobe"] for g in grid if g["recall"] >= a.target), nlist)
    row = dict(n=n, dim=mix.dim, nlist=nlist, flat_ms=flat_ms, flat_build_s=flat_build,
               flat_bytes_per_vector=flat_bpv, ivf_train_s=train_s, ivf_build_s=build_s,
               ivf_bytes_per_vector=ivf.memory_bytes() / n,
               fixed_nprobe=fixed, fixed_recall=datasets.recall_at(found, truth),
               fixed_ms=median_latency_ms(
                   lambda i: ivf.search(q[i:i + 1], 10, threads=1, query_bits=4, nprobe=fixed), a.nq),
               target=a.target, target_nprobe=at_target,
               target_recall=next(g["recall"] for g in grid if g["nprobe"] == at_target),
               target_ms=median_latency_ms(
                   lambda i: ivf.search(q[i:i + 1], 10, threads=1, query_bits=4, nprobe=at_target), a.nq),
               grid=grid, simd=bebr.simd_level(), load_avg=os.getloadavg())
    return row


def render(rows: list) -> str:
    out = ["| n | nlist | flat ms | IVF ms, nprobe {p} | R10@10 | IVF ms at R10@10 >= {t} (nprobe) | "
           "flat / IVF at target | IVF build s | IVF B/vector |".format(p=rows[0]["fixed_nprobe"],
                                                                       t=rows[0]["target"]),
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['n']:,} | {r['nlist']} | {r['flat_ms']:.2f} | {r['fixed_ms']:.3f} | "
                   f"{r['fixed_recall']:.3f} | {r['target_ms']:.3f} ({r['target_nprobe']}, "
                   f"{r['target_recall']:.3f}) | {r['flat_ms'] / r['target_ms']:.1f}x | "
                   f"{r['ivf_build_s']:.0f} | {r['ivf_bytes_per_vector']:.1f} |")
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", default="100000,300000,1000000")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--clusters", type=int, default=1024)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--nlist-per-sqrt", type=float, default=1.0)
    ap.add_argument("--nprobe", type=int, default=16)
    ap.add_argument("--target", type=float, default=0.9)
    ap.add_argument("--nq", type=int, default=100)
    ap.add_argument("--out", default=None)
    ap.add_argument("--render", default=None)
    a = ap.parse_args(argv)
    if a.render:
        print(render(json.loads(Path(a.render).read_text())["scaling"]))
        return
    if not a.out:
        ap.error("--out is required (or --render)")
    mix = Mixture(a.dim, a.clusters, a.sigma)
    tag = f"d{a.dim}_c{a.clusters}_s{a.sigma:g}"
    rows = []
    for n in (int(v) for v in a.n.split(",") if v):
        key = f"{tag}_n{n}_l{a.nlist_per_sqrt:g}_p{a.nprobe}_t{a.target:g}_q{a.nq}"
        path = CACHE / f"row_{key}.json"
        if path.exists():
            row = json.loads(path.read_text())
        else:
            row = run_n(mix, n, a, tag)
            CACHE.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(row))
        log(json.dumps({k: v for k, v in row.items() if k != "grid"}))
        rows.append(row)
        Path(a.out).write_text(json.dumps(dict(argv=sys.argv[1:], scaling=rows), indent=1))
    log(f"wrote {a.out}")


if __name__ == "__main__":
    main()
