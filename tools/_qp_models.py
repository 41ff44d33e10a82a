"""Cached benchmark models of tools/bench_query_path.py (trained once, reused).

A model is cached under ``bebr.datasets.data_dir() / "models" / "query_path" / KEY`` where
KEY hashes the data name, (dim, bits), the number of base rows, the training settings and
CACHE_VERSION (bump it when a change of bebr's training should retrain the models). Training holds the lock file ``KEY.lock`` so
that at most one training of a key runs at a time.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

TRAIN_SETTINGS = dict(seed=0, center=False, max_time_s=240.0, progress=False)
CACHE_VERSION = 1


def model_key(data: str, dim: int, bits: int, n_rows: int) -> str:
    from bebr.codes import max_query_bits

    desc = json.dumps(dict(data=data, dim=dim, bits=bits, n=n_rows, cache=CACHE_VERSION,
                           query_bits=max_query_bits(bits), **TRAIN_SETTINGS), sort_keys=True)
    return f"{data}-{dim}x{bits}-" + hashlib.sha256(desc.encode()).hexdigest()[:16]


def cached_model(data: str, xb, dim: int, bits: int, threads: int = 1, log=print):
    """The Binarizer for (data, dim, bits) trained on base rows ``xb``: loaded when cached,
    else trained (train_binarizer, TRAIN_SETTINGS) and saved."""
    from bebr import datasets as ds
    from bebr.codes import max_query_bits

    key = model_key(data, dim, bits, len(xb))
    path = ds.data_dir() / "models" / "query_path" / key
    if (path / "config.json").exists():
        from bebr.model import Binarizer

        return Binarizer.load(path)
    from bebr.train import train_binarizer

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / (key + ".lock")
    while True:
        try:
            lock.touch(exist_ok=False)
            break
        except FileExistsError:
            log(f"waiting for another training of {key}")
            time.sleep(10)
            if (path / "config.json").exists():
                from bebr.model import Binarizer

                return Binarizer.load(path)
    try:
        t = time.perf_counter()
        model = train_binarizer(xb, dim, bits, threads=threads,
                                query_bits=max_query_bits(bits), **TRAIN_SETTINGS)
        log(f"trained {key} in {time.perf_counter() - t:.0f} s")
        model.save(path)
    finally:
        lock.unlink()
    return model


if __name__ == "__main__":  # python tools/_qp_models.py DATA DIM BITS: train one into the cache
    import sys

    import numpy as np

    sys.path.insert(0, str(ROOT))
    from bebr import datasets as ds

    data, dim, bits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    words, glove = ds.glove_words(100_000)
    x = glove if data == "glove" else ds.minilm_embeddings(words)
    _, base = ds.query_split(len(x), 2000, seed=0)
    m = cached_model(data, np.ascontiguousarray(x[base]), dim, bits)
    print(m)
