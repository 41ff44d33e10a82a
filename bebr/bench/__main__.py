"""``python -m bebr.bench [--quick] [--study NAME ...] [--out DIR]``: the benchmark suite."""

import os

# before torch/faiss load OpenMP (see bebr/bench/suite.py)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .suite import main  # noqa: E402

try:
    main()
except ImportError as e:  # a missing extra: one line, not a traceback
    raise SystemExit(f"bebr bench: error: {e}") from None
