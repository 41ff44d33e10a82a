"""Shared pieces of the benchmark suite (bebr/bench/suite.py and bebr/bench/studies/*.py).

Timing and bandwidth come from bebr/bench/timing.py (shared with tools/bench_kernels.py):
`median_times` (interleaved repeats, median), `measure_bandwidth` (C++ streaming read
kernel) and `build_faiss_pq`. This module adds what the studies share on top: the machine
description, a load-average sampler, RSS, Markdown tables, BENCHMARKS.md/README section writing,
the word data protocol of `bebr.datasets` (with tiny `quick` sizes), trained-model caching, and the faiss
baselines (LSH, PQ, RaBitQ, SQ) with symmetric and asymmetric query handling.

Layout relied on: every section of BENCHMARKS.md starts with a line `<!-- section: NAME ... -->`
and runs to the next such line (or the end of the file); the README block of the suite sits
between `<!-- bench-suite: begin -->` and `<!-- bench-suite: end -->`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import threading
import time
from pathlib import Path

import numpy as np

import bebr
from bebr import datasets

from .timing import build_faiss_pq, measure_bandwidth, median_times

__all__ = ["median_times", "measure_bandwidth", "build_faiss_pq", "machine_info",
           "machine_markdown", "LoadSampler", "heap_bytes", "rss_bytes", "md_table",
           "write_section", "write_readme_block", "load_data", "bebr_model", "lsh_bits", "recall",
           "flat_topk", "faiss_baselines", "faiss_search", "bebr_models",
           "MODEL_SHAPES", "MODEL_BUDGET_S", "MODEL_INFO", "models_markdown"]


# ----------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _simd_flags() -> list:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.split(":", 1)[1].split())
            break
    keep = re.compile(r"^(sse4_2|avx|avx2|fma|avx512.*|avx_vnni|amx.*)$")
    return sorted(f for f in flags if keep.match(f))


def _mem_total_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def machine_info(bw: dict) -> dict:
    """CPU model, SIMD flags, bebr.simd_level(), cores, RAM and the measured bandwidth."""
    import faiss

    return dict(cpu=_cpu_model(), flags=_simd_flags(), simd=bebr.simd_level(),
                simd_levels=bebr.simd_levels(), cores=os.cpu_count(), mem_gb=_mem_total_gb(),
                bw=dict(bw), faiss=faiss.__version__, python=platform.python_version(),
                omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(unset)"))


def machine_markdown(info: dict, load: dict) -> str:
    bw = ", ".join(f"{t} thread(s) {v:.1f} GB/s" for t, v in info["bw"].items())
    return (f"Machine: {info['cpu']}, {info['cores']} cores, {info['mem_gb']:.0f} GiB RAM; "
            f"SIMD flags: {' '.join(info['flags'])}; `bebr.simd_level()` = `{info['simd']}`; "
            f"faiss {info['faiss']}, OMP_WAIT_POLICY={info['omp_wait_policy']}. "
            f"Streaming read bandwidth measured in the same run "
            f"(`bebr._C.read_bandwidth`, via tools/bench_kernels.py): {bw}. "
            f"Load average (1 min) during this study: min {load['min']:.2f}, median "
            f"{load['median']:.2f}, max {load['max']:.2f} on {info['cores']} cores "
            f"(shared machine: absolute timings are noisy, compare rows of one run).")


class LoadSampler:
    """Samples the 1-minute load average every `every` seconds while active (a thread)."""

    def __init__(self, every: float = 2.0):
        self.every = every
        self.samples = []
        self._stop = threading.Event()
        self._thread = None

    def __enter__(self):
        self.samples.append(os.getloadavg()[0])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])
        return False

    def summary(self) -> dict:
        s = self.samples
        return dict(min=min(s), median=statistics.median(s), max=max(s), n=len(s))


def heap_bytes():
    """Bytes currently allocated through malloc (glibc mallinfo2: in-use heap + mmapped
    chunks), or None where unavailable. Unlike RSS, not blurred by freed-memory reuse."""
    import ctypes

    class _MallInfo2(ctypes.Structure):
        _fields_ = [(f, ctypes.c_size_t) for f in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
            "uordblks", "fordblks", "keepcost")]

    try:
        fn = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    m = fn()
    return int(m.uordblks + m.hblkhd)


def rss_bytes() -> int:
    """Resident set size of this process (bytes), from /proc/self/statm."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------- markdown
def md_table(headers, rows) -> str:
    out = ["| " + " | ".join(headers) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(headers))) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def write_section(path: Path, name: str, source: str, body: str) -> None:
    """Replace section `name` of BENCHMARKS.md at `path` (created if missing) with `body`.

    Only the text from `<!-- section: NAME` up to the next `<!-- section:` line changes;
    a missing section is appended at the end.
    """
    path = Path(path)
    text = path.read_text() if path.exists() else "# bebr benchmarks\n"
    head = f"<!-- section: {name} ({source}) -->\n"
    block = head + body.rstrip("\n") + "\n\n"
    m = re.search(r"^<!-- section: " + re.escape(name) + r"\b.*$\n?", text, flags=re.M)
    if m is None:
        text = text.rstrip("\n") + "\n\n" + block
    else:
        nxt = text.find("<!-- section:", m.end())
        nxt = len(text) if nxt < 0 else nxt
        text = text[:m.start()] + block + text[nxt:]
    path.write_text(text.rstrip("\n") + "\n")


README_BEGIN = "<!-- bench-suite: begin -->"
README_END = "<!-- bench-suite: end -->"


def write_readme_block(path: Path, body: str) -> None:
    """Replace the suite's block of README.md (between its markers; appended if absent)."""
    path = Path(path)
    text = path.read_text() if path.exists() else "# bebr\n"
    block = f"{README_BEGIN}\n{body.rstrip()}\n{README_END}"
    if README_BEGIN in text and README_END in text:
        a = text.index(README_BEGIN)
        b = text.index(README_END, a) + len(README_END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


# ----------------------------------------------------------------------------- data
def load_data(name: str, quick: bool, nq: int = 2000):
    """The word protocol: (base, queries, truth top-100) for "glove" or "minilm".

    Full: 100k words, 2000 queries, the other 98k the base. Quick: 3000 words, 100 queries.
    """
    n = 3000 if quick else 100_000
    nq = 100 if quick else nq
    words, vecs = datasets.glove_words(n)
    if name == "minilm":
        vecs = datasets.minilm_embeddings(words)
    elif name != "glove":
        raise ValueError(f"unknown dataset {name!r}")
    qi, bi = datasets.query_split(n, nq, seed=0)
    base, queries = vecs[bi], vecs[qi]
    truth = datasets.exact_topk(queries, base, 100)
    return base, queries, truth


def recall(found: np.ndarray, truth: np.ndarray, r: int, k: int = 10) -> float:
    """R{k}@{r}: share of the true top-k in the first r results."""
    return datasets.recall_at(np.asarray(found)[:, :r], np.asarray(truth)[:, :k])


def flat_topk(q: np.ndarray, b: np.ndarray, k: int, scale: np.ndarray | None = None,
              chunk: int = 256) -> np.ndarray:
    """Top-k rows of b by q @ b.T (times per-row `scale`), float search in numpy."""
    out = np.empty((q.shape[0], k), dtype=np.int64)
    for s in range(0, q.shape[0], chunk):
        sims = q[s:s + chunk] @ b.T
        if scale is not None:
            sims *= scale[None, :]
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1, kind="stable")
        out[s:s + chunk] = np.take_along_axis(part, order, axis=1)
    return out


# ----------------------------------------------------------------------------- models
_MODELS: dict = {}  # in-process memo: studies 2 and 3 of one run share their models
MODEL_INFO: dict = {}  # (data, dim, bits) -> training time, load, validation recall


def bebr_model(name: str, base: np.ndarray, dim: int, bits: int, quick: bool,
               budget_s: float):
    """A Binarizer trained on `base` (dataset `name`); full runs cache it under the bebr data
    directory (keyed by data, dim, bits, time budget) so studies 2 and 3 share one model."""
    from bebr import Binarizer, train_binarizer

    key = (name, base.shape, dim, bits, quick, budget_s)
    if key in _MODELS:
        return _MODELS[key]
    if quick:
        _MODELS[key] = train_binarizer(base, dim, bits, epochs=1, progress=False, seed=0,
                                       max_time_s=budget_s, hidden=64)
        return _MODELS[key]
    path = (datasets.data_dir() / "bench-models"
            / f"{name}-{base.shape[0]}x{base.shape[1]}-{dim}x{bits}-{int(budget_s)}s-seed0")
    if (path / "config.json").exists():
        _MODELS[key] = Binarizer.load(path)
        info = path / "bench-train.json"
        MODEL_INFO[(name, dim, bits)] = json.loads(info.read_text()) if info.exists() else {}
        return _MODELS[key]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as tools/eval_quality.py: 1 thread trains faster on a busy box
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    try:
        model = train_binarizer(base, dim, bits, progress=False, seed=0, max_time_s=budget_s)
    finally:
        torch.set_num_threads(threads)
    info = dict(train_s=round(time.perf_counter() - t0, 1),
                load=round((load0 + os.getloadavg()[0]) / 2, 2), budget_s=budget_s,
                **{k: v for k, v in getattr(model, "train_info", {}).items()
                   if k in ("val_r10@10", "epochs_run")})
    print(f"# trained bebr {name} {dim}x{bits}: {info}", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    (path / "bench-train.json").write_text(json.dumps(info))
    MODEL_INFO[(name, dim, bits)] = info
    _MODELS[key] = model
    return model


def lsh_bits(base: np.ndarray, queries: np.ndarray, nbits: int):
    """faiss IndexLSH (random rotation, its default seed, zero thresholds): sign bits as 0/1
    levels (n, nbits) of base and queries, and the rotated float queries (asymmetric use)."""
    import faiss

    lsh = faiss.IndexLSH(base.shape[1], nbits, True, False)
    lsh.train(np.ascontiguousarray(base[:1000], dtype=np.float32))  # zero thresholds: no-op
    out = []
    for x in (base, queries):
        codes = lsh.sa_encode(np.ascontiguousarray(x, dtype=np.float32))
        out.append(np.unpackbits(codes, axis=1, bitorder="little")[:, :nbits])
    return out[0], out[1], lsh.rrot.apply(np.ascontiguousarray(queries, dtype=np.float32))


def faiss_baselines(d: int, budget: int):
    """faiss quantizers with `budget` bits per vector for d-dim data: a list of
    (label, factory() -> untrained faiss index) (LSH is handled by `lsh_bits`).

    PQ: M x nb bits, nb the first of (8, 4, 5, 6) for which M = budget/nb divides d; RaBitQ:
    budget/d bits per dim (1, 2, 4, 8), its code also holds per-vector float factors
    (code_size says how many bytes); SQ: 4 or 8 bits per dim. Query handling (see
    `faiss_search`): asymmetric = float queries (RaBitQ with qb=0); symmetric = the query
    passed through the same quantizer (sa_decode(sa_encode(q))) before the search, i.e. code
    against code.
    """
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    out = []
    for nb in (8, 4, 5, 6):
        if budget % nb == 0 and d % (budget // nb) == 0:
            m = budget // nb
            out.append((f"faiss PQ {m}x{nb}", lambda m=m, nb=nb: faiss.IndexPQ(d, m, nb, ip)))
            break
    if budget % d == 0 and budget // d in (1, 2, 4, 8):
        b = budget // d
        out.append((f"faiss RaBitQ {b} b/dim", lambda b=b: faiss.IndexRaBitQ(d, ip, b)))
    for b, qt in ((4, faiss.ScalarQuantizer.QT_4bit), (8, faiss.ScalarQuantizer.QT_8bit)):
        if budget == b * d:
            out.append((f"faiss SQ {b}-bit", lambda qt=qt: faiss.IndexScalarQuantizer(d, qt, ip)))
    return out


def faiss_search(index, q: np.ndarray, k: int, symmetric: bool) -> np.ndarray:
    """Top-k ids of a trained, filled faiss index; `symmetric` quantizes the query first."""
    q = np.ascontiguousarray(q, dtype=np.float32)
    if hasattr(index, "qb"):
        index.qb = 0
    if symmetric:
        q = index.sa_decode(index.sa_encode(q))
    return index.search(q, k)[1]


# (dim, bits) of the bebr models that studies 2 and 3 share, and their training time budgets
MODEL_SHAPES = {
    "glove": [(50, 1), (25, 2), (50, 2), (50, 4), (100, 4)],
    "minilm": [(384, 1), (192, 2), (384, 2), (384, 4)],
}
MODEL_SHAPES_QUICK = {"glove": [(50, 1), (50, 2)], "minilm": [(96, 2)]}
MODEL_BUDGET_S = {"glove": 150.0, "minilm": 300.0}  # as tools/eval_quality.py


def bebr_models(name: str, base: np.ndarray, quick: bool) -> dict:
    """{(dim, bits): Binarizer} for dataset `name` (trained once, cached in full runs)."""
    shapes = (MODEL_SHAPES_QUICK if quick else MODEL_SHAPES)[name]
    budget = 2.0 if quick else MODEL_BUDGET_S[name]
    return {(d, b): bebr_model(name, base, d, b, quick, budget) for d, b in shapes}


def models_markdown() -> str:
    """One line on how the bebr models used by this run were trained (from MODEL_INFO)."""
    if not MODEL_INFO:
        return "bebr models: trained in this run with quick settings (1 epoch, hidden 64)."
    parts = []
    for (name, dim, bits), i in sorted(MODEL_INFO.items()):
        if not i:
            parts.append(f"{name} {dim}x{bits} (cached, no training record)")
            continue
        extra = f", val R10@10 {i['val_r10@10']:.3f}" if "val_r10@10" in i else ""
        parts.append(f"{name} {dim}x{bits}: {i['train_s']:.0f} s at load {i['load']:.1f}"
                     f"{extra}")
    return ("bebr models (`train_binarizer` defaults, seed 0, 1 torch thread, time budget "
            f"{', '.join(f'{k} {v:.0f} s' for k, v in MODEL_BUDGET_S.items())}; trained once "
            "and cached under the bebr data dir): " + "; ".join(parts) + ".")
