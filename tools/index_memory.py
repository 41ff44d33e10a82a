"""Resident bytes per item of a loaded index: ``Index.memory_bytes()`` (what the C++ core owns:
codes unless memory-mapped, ids, versions, alive masks, inverse norms, id map) and the RSS
growth of a fresh process that loads the file, for ``mmap=True`` and ``mmap=False``.

    PYTHONPATH=. python tools/index_memory.py [--n 200000] [--dim 64] [--bits 4]
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bebr, installed or not

import bebr
from bebr import CodeSpec


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--bits", type=int, default=4)
    args = ap.parse_args()
    spec = CodeSpec(args.dim, args.bits)
    rng = np.random.default_rng(0)
    codes = spec.pack(rng.integers(0, spec.n_levels, (args.n, spec.dim)))
    print(f"{args.n} items, CodeSpec({args.dim}, {args.bits}): {spec.code_bytes} code bytes/item")
    print(f"{'metric':8} {'mmap':5} {'owned B/item':>13} {'RSS growth B/item':>18}")
    with tempfile.TemporaryDirectory() as d:
        for metric in ("ip", "cosine"):
            path = Path(d) / f"{metric}.bebr"
            idx = bebr.Index(spec, metric)
            idx.add(codes)
            idx.save(path)
            del idx
            gc.collect()
            for mmap in (True, False):
                out = subprocess.run([sys.executable, __file__, "--child", str(path), str(mmap)],
                                     capture_output=True, text=True, check=True).stdout
                owned, grown = json.loads(out)
                print(f"{metric:8} {str(mmap):5} {owned / args.n:13.1f} {grown / args.n:18.1f}")


def child(path: str, mmap: bool) -> None:
    """Load path in this fresh process: print [owned bytes, RSS growth of the load]."""
    bebr.Index(CodeSpec(8, 1))  # import-time allocations before the first RSS reading
    gc.collect()
    before = rss_bytes()
    loaded = bebr.Index.load(path, mmap=mmap, verify=False)
    grown = rss_bytes() - before
    print(json.dumps([loaded.memory_bytes(), grown]))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3] == "True")
    else:
        main()
