"""The benchmark suite, from a source checkout: ``python tools/bench_suite.py [--quick]
[--study NAME ...] [--out DIR]`` is ``bebr bench`` (the code ships in bebr/bench/)."""

import os
import runpy
import sys
from pathlib import Path

# before torch/faiss load OpenMP (see bebr/bench/suite.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's bebr

runpy.run_module("bebr.bench", run_name="__main__", alter_sys=True)
