"""``bebr demo``: the whole offline job on real GloVe word vectors, end to end.

Steps: load the most frequent GloVe-50 words (ANCHORS protocol: held-out query words, the rest
is the base), train a Binarizer, write the base as a parquet shard (vectors + word-row ids),
encode it into code shards with the job runner, build an Index from the shards, save it and
reload it memory-mapped, then answer word queries and measure recall@10 and latency against
exact float search (faiss ``IndexFlatIP`` when installed, else numpy).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

__all__ = ["run_demo"]


def _out(msg: str = "") -> None:
    print(msg, flush=True)


class _FloatSearch:
    """Exact inner-product search over float rows (faiss if installed, else numpy)."""

    def __init__(self, base: np.ndarray):
        self.base = np.ascontiguousarray(base, dtype=np.float32)
        try:
            import faiss

            self.index = faiss.IndexFlatIP(base.shape[1])
            self.index.add(self.base)
            self.name = "faiss IndexFlatIP"
            self._default_threads = faiss.omp_get_max_threads()
        except ImportError:
            self.index, self.name = None, "numpy exact"

    def set_threads(self, n: Optional[int]) -> None:
        """Threads for faiss (None: its default)."""
        if self.index is not None:
            import faiss

            if n is None:
                faiss.omp_set_num_threads(self._default_threads)
            else:
                self._default_threads = getattr(self, "_default_threads",
                                                faiss.omp_get_max_threads())
                faiss.omp_set_num_threads(n)

    def search(self, q: np.ndarray, k: int):
        q = np.ascontiguousarray(q, dtype=np.float32)
        if self.index is not None:
            return self.index.search(q, k)
        s = q @ self.base.T
        idx = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(s, idx, 1), idx


def _per_query_us(fn, queries: np.ndarray, repeat: int = 1) -> float:
    t0 = time.perf_counter()
    for _ in range(repeat):
        for i in range(queries.shape[0]):
            fn(queries[i:i + 1])
    return (time.perf_counter() - t0) / (repeat * queries.shape[0]) * 1e6


def run_demo(*, n_words: int = 100_000, dim: int = 128, bits: int = 2,
             epochs: Optional[int] = None, max_time: Optional[float] = 30.0,
             train_rows: int = 40_000,
             queries: Sequence[str] = ("king", "france", "computer"), progress: bool = True,
             workdir: Optional[str] = None, n_queries: int = 1000, k: int = 10) -> int:
    """Run the demo; prints to stdout; returns 0."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    import bebr
    from .datasets import exact_topk, glove_words, query_split
    from .io import CodeShards
    from .jobs import encode_shards

    if not hasattr(bebr, "Index") or not hasattr(bebr, "train_binarizer"):
        raise ImportError("bebr demo needs bebr.Index and bebr.train_binarizer, which this "
                          "build does not have")
    tmp = None
    if workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bebr-demo-")
        workdir = tmp.name
    work = Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.perf_counter()
        words, vecs = glove_words(n_words)
        qi, bi = query_split(len(words), min(n_queries, len(words) // 10), seed=0)
        base = vecs[bi]
        _out(f"bebr demo: {len(words)} GloVe-50 words ({time.perf_counter() - t0:.1f} s to "
             f"load); {bi.size} in the base, {qi.size} held out as queries")

        t0 = time.perf_counter()
        kw = {"epochs": epochs} if epochs is not None else {}
        if max_time is not None:
            kw["max_time_s"] = max_time
        model = bebr.train_binarizer(base, dim, bits, progress=progress, seed=0,
                                     max_train_rows=min(train_rows, base.shape[0]), **kw)
        t_train = time.perf_counter() - t0
        model_dir = work / "model"
        model.save(model_dir)
        _out(f"trained Binarizer {model.spec} ({model.spec.code_bytes} bytes/vector vs "
             f"{base.shape[1] * 4} as float32) on {min(train_rows, base.shape[0])} words in "
             f"{t_train:.1f} s; version {model.version}")

        # the base as a parquet shard: fixed-size-list vectors + the word's row as id
        flat = pa.array(base.ravel(), type=pa.float32())
        table = pa.table({"id": pa.array(bi, type=pa.int64()),
                          "embedding": pa.FixedSizeListArray.from_arrays(flat, base.shape[1])})
        pq.write_table(table, work / "base.parquet", row_group_size=32768)
        res = encode_shards(model_dir, work / "base.parquet", work / "codes",
                            chunk_rows=16384, shard_rows=32768, progress=progress,
                            overwrite=True)
        m = res.manifest
        _out(f"encoded {m.count} vectors into {m.units} code shards in {res.seconds:.1f} s "
             f"({m.count / max(res.seconds, 1e-9):,.0f} vec/s) -> {work / 'codes'}")

        index = bebr.Index(model.spec, metric="ip")
        for _, c, ids in CodeShards(work / "codes").shards():
            index.add(np.ascontiguousarray(c), np.ascontiguousarray(ids))
        index_path = work / "index.bebr"
        if hasattr(index, "save") and hasattr(bebr.Index, "load"):
            index.save(index_path)
            index = bebr.Index.load(index_path, mmap=True)
            _out(f"built index of {len(index)} codes, saved and reloaded memory-mapped "
                 f"({index_path.stat().st_size / 1e6:.1f} MB)")
        else:
            _out(f"built index of {len(index)} codes")

        flt = _FloatSearch(base)
        wid = {w: i for i, w in enumerate(words)}
        _out("")
        _out(f"nearest words ({flt.name} on floats | bebr codes):")
        for w in queries:
            if w not in wid:
                _out(f"  {w!r}: not among the {len(words)} words")
                continue
            v = vecs[wid[w]][None]
            _, fi = flt.search(v, k + 1)
            f_words = [words[bi[j]] for j in fi[0] if words[bi[j]] != w][:k]
            _, ci = index.search(model.encode(v), k + 1)
            c_words = [words[j] for j in ci[0] if j >= 0 and words[j] != w][:k]
            _out(f"  {w:10s} float: {', '.join(f_words[:8])}")
            _out(f"  {'':10s} bebr : {', '.join(c_words[:8])}")

        qv = vecs[qi]
        truth = bi[exact_topk(qv, base, k)]
        qc = model.encode(qv)
        _, found = index.search(qc, k)
        recall = np.mean([len(set(f) & set(t)) / k for f, t in zip(found, truth)])
        _, found100 = index.search(qc, 100)
        recall100 = np.mean([len(set(f) & set(t)) / k for f, t in zip(found100, truth)])
        n_lat = min(200, qv.shape[0])
        import torch

        torch_threads = torch.get_num_threads()
        flt.set_threads(1)  # nq=1: one thread each, as a serving process would
        torch.set_num_threads(1)
        try:
            t_float = _per_query_us(lambda q: flt.search(q, k), qv[:n_lat])
            t_code = _per_query_us(lambda q: index.search(q, k, threads=1), qc[:n_lat])
            t_enc = _per_query_us(lambda q: model.encode(q), qv[:n_lat])
        finally:
            flt.set_threads(None)
            torch.set_num_threads(torch_threads)
        t0 = time.perf_counter()
        flt.search(qv, k)
        tb_float = (time.perf_counter() - t0) / qv.shape[0] * 1e6
        t0 = time.perf_counter()
        index.search(qc, k)
        tb_code = (time.perf_counter() - t0) / qv.shape[0] * 1e6
        _out("")
        _out(f"{qv.shape[0]} held-out query words against {base.shape[0]} base words; "
             f"truth: exact float cosine top-{k}")
        _out(f"  {'method':28s} {'bytes/vec':>9s} {'R10@10':>7s} {'R10@100':>8s} "
             f"{'us/query (nq=1)':>16s} {'us/query (batch)':>17s}")
        _out(f"  {flt.name:28s} {base.shape[1] * 4:9d} {1.0:7.3f} {1.0:8.3f} "
             f"{t_float:16.1f} {tb_float:17.1f}")
        label = f"bebr SDC, {model.spec.dim} dims x {model.spec.bits} bits"
        _out(f"  {label:28s} {model.spec.code_bytes:9d} {recall:7.3f} "
             f"{recall100:8.3f} {t_code:16.1f} {tb_code:17.1f}")
        _out(f"  (nq=1: one thread each; bebr's figure excludes encoding the query, "
             f"{t_enc:.0f} us/query (the model's compiled CPU encoder); batch: {qv.shape[0]} queries at "
             "once, default threads)")
        return 0
    finally:
        if tmp is not None:
            tmp.cleanup()
        sys.stdout.flush()
