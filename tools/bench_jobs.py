"""Offline job benchmark: encode throughput (vectors/s) of ``bebr encode`` on 1 and 2
processes, local engine against Ray, and the peak memory of a 2M-vector job.

Usage:
    python tools/bench_jobs.py [--n 2000000] [--dim-in 384] [--throughput-rows 262144]
                               [--write BENCHMARKS.md] [--quick]

Data: random float32 rows (n, dim_in) written to a temporary .npy (the job's speed and
memory do not depend on the values). Model: a ``bebr.Binarizer(dim_in, 256, 2)`` with the
default architecture (hidden 512, depth 1), weights untrained (encode cost does not depend on
them). Every job runs in a fresh subprocess through the real CLI (``python -m bebr.cli
encode``); peak memory is that process tree's peak resident set (ru_maxrss of the waited-for
child, measured by a wrapper process whose only child is the job) next to the input size.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def make_input(path: Path, n: int, d: int, seed: int = 0) -> None:
    """Write a (n, d) float32 .npy chunk by chunk (never the whole array in memory)."""
    arr = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    rng = np.random.default_rng(seed)
    step = 1 << 16
    for a in range(0, n, step):
        b = min(a + step, n)
        arr[a:b] = rng.standard_normal((b - a, d), dtype=np.float32)
    arr.flush()
    del arr


_WRAPPER = ("import resource, subprocess, sys; p = subprocess.run(sys.argv[1:]); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); "
            "sys.exit(p.returncode)")


def run_job(args: list, env=None) -> dict:
    """Run ``python -m bebr.cli encode ARGS`` under a fresh wrapper process whose only child
    is the job, so its ru_maxrss is the job's own peak RSS; wall time, job time, max RSS."""
    cmd = [sys.executable, "-m", "bebr.cli", "encode", *map(str, args), "--no-progress"]
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", _WRAPPER, *cmd], capture_output=True,
                       text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"job failed: {' '.join(cmd)}\n{p.stderr}")
    maxrss_kb = int(p.stderr.strip().splitlines()[-1])
    m = re.search(r"; ([0-9.]+) s \(([0-9,]+) vec/s\)", p.stderr)
    job_s = float(m.group(1)) if m else float("nan")
    return {"wall_s": wall, "job_s": job_s, "maxrss_mb": maxrss_kb / 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2_000_000, help="rows of the memory job")
    ap.add_argument("--dim-in", type=int, default=384)
    ap.add_argument("--throughput-rows", type=int, default=262_144,
                    help="rows of each throughput job")
    ap.add_argument("--chunk-rows", type=int, default=65536)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    ap.add_argument("--write", default=None, help="write the section into this BENCHMARKS.md")
    ap.add_argument("--tmp", default=None, help="scratch directory (default: system temp)")
    a = ap.parse_args(argv)
    if a.quick:
        a.n, a.throughput_rows, a.chunk_rows = 20_000, 8192, 2048

    import torch

    import bebr

    Binarizer = getattr(bebr, "Binarizer", None)
    if Binarizer is None:
        from bebr.model import Binarizer
    tmp = Path(tempfile.mkdtemp(prefix="bebr-bench-jobs-", dir=a.tmp))
    try:
        torch.manual_seed(0)
        model = tmp / "model"
        Binarizer(a.dim_in, 256, 2).save(model)
        t0 = time.perf_counter()
        big = tmp / "big.npy"
        make_input(big, a.n, a.dim_in)
        print(f"wrote {a.n} x {a.dim_in} float32 input ({big.stat().st_size / 1e9:.2f} GB) "
              f"in {time.perf_counter() - t0:.0f} s", flush=True)
        part = tmp / "part"
        part.mkdir()
        half = a.throughput_rows // 2
        src = np.load(big, mmap_mode="r")
        np.save(part / "a.npy", np.asarray(src[:half]))
        np.save(part / "b.npy", np.asarray(src[half:a.throughput_rows]))
        del src
        base = ["--model", model, "--chunk-rows", a.chunk_rows,
                "--shard-rows", max(half // 2, 1)]
        load0 = os.getloadavg()
        mem = run_job(["--model", model, big, "-o", tmp / "bigout", "--chunk-rows",
                       a.chunk_rows])
        n_out = json.loads((tmp / "bigout" / "manifest.json").read_text())["count"]
        if n_out != a.n:
            raise SystemExit(f"memory job wrote {n_out} codes, expected {a.n}")
        shutil.rmtree(tmp / "bigout")
        print(f"memory job: {a.n} x {a.dim_in} ({big.stat().st_size / 1e9:.2f} GB input): "
              f"peak RSS {mem['maxrss_mb']:.0f} MB, {mem['job_s']:.1f} s "
              f"({a.n / mem['job_s']:,.0f} vec/s)", flush=True)
        rows = []
        configs = [("local, 1 process", ["--workers", "1"]),
                   ("local, 2 processes", ["--workers", "2"])]
        if not a.no_ray:
            configs += [("Ray Data, 1 CPU", ["--engine", "ray", "--ray-cpus", "1"]),
                        ("Ray Data, 2 CPUs", ["--engine", "ray", "--ray-cpus", "2"])]
        for name, extra in configs:
            out = tmp / re.sub(r"\W+", "_", name)
            r = run_job([*base, part, "-o", out, *extra])
            rate = a.throughput_rows / r["job_s"]
            rows.append((name, a.throughput_rows, r["job_s"], rate, r["wall_s"]))
            print(f"{name:22s} {a.throughput_rows} vectors: job {r['job_s']:.2f} s "
                  f"({rate:,.0f} vec/s), process wall {r['wall_s']:.1f} s", flush=True)
            if name != configs[0][0]:
                same = all(open(p, "rb").read() == open(tmp / "local_1_process" / p.name,
                                                       "rb").read()
                           for p in sorted(out.iterdir()) if not p.name.startswith("."))
                print(f"  output byte-identical to local 1 process: {same}", flush=True)
                if not same:
                    raise SystemExit("engines disagree")
                shutil.rmtree(out)
        load1 = os.getloadavg()
        print(f"load average at start {load0[0]:.1f}, at end {load1[0]:.1f}", flush=True)
        if a.write:
            write_section(Path(a.write), a, rows, mem, big.stat().st_size, (load0, load1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def write_section(path: Path, a, rows, mem, input_bytes: int, loads) -> None:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    lines = [
        f"Command: `python tools/bench_jobs.py --n {a.n} --throughput-rows "
        f"{a.throughput_rows} --write BENCHMARKS.md` (dim_in={a.dim_in}, "
        f"chunk_rows={a.chunk_rows}); {os.cpu_count()} cores ({cpu}), "
        f"1-minute load average {loads[0][0]:.1f} at the start and {loads[1][0]:.1f} at the "
        "end of the run" + (" (other work on the same cores: rates are lower than on an idle "
                            "machine)." if max(loads[0][0], loads[1][0]) > 1.5 else "."),
        "",
        f"Encode throughput: `bebr encode` of {a.throughput_rows} random float32 rows "
        f"(2 .npy input shards) with a `Binarizer({a.dim_in}, 256, 2)` (hidden 512), 1 torch "
        "thread per worker. *job s*: the job's own timer, from the plan to the last shard "
        "recorded (includes starting the worker processes or the local Ray instance); "
        "*process wall s*: the whole command including interpreter start and imports. Every "
        "engine's output was checked byte-identical to the 1-process run.",
        "",
        "| engine | vectors | job s | vectors/s | process wall s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, n, s, rate, wall in rows:
        lines.append(f"| {name} | {n} | {s:.2f} | {rate:,.0f} | {wall:.1f} |")
    lines += [
        "",
        f"Memory: one in-process job over a {a.n} x {a.dim_in} float32 .npy "
        f"({input_bytes / 1e9:.2f} GB): peak RSS **{mem['maxrss_mb']:.0f} MB** "
        f"({mem['job_s']:.0f} s, {a.n / mem['job_s']:,.0f} vec/s). Memory is bounded by "
        "the interpreter with torch and the model (about 240 MB here), one chunk of floats "
        "and one output shard of codes, not by the input size.",
    ]
    text = path.read_text()
    head = "## 4. Offline jobs: encode throughput and memory"
    i = text.index(head) + len(head)
    j = text.find("\n<!-- section:", i)
    j = len(text) if j < 0 else j
    text = text[:i] + "\n\n" + "\n".join(lines) + "\n" + text[j:]
    from bebr.fileio import atomic_write_bytes

    atomic_write_bytes(path, text.encode())
    print(f"wrote section 4 of {path}")


if __name__ == "__main__":
    sys.exit(main())
