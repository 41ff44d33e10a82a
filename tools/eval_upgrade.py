"""Realistic model upgrade: every new-query path over old codes, on MiniLM -> MPNet and on
GloVe -> MiniLM (BENCHMARKS.md section "Realistic upgrade: MiniLM -> MPNet").

Data: the 100k words of the quality benchmark (``bebr.datasets.glove_words(100_000)``),
2,000 query words (``query_split(100_000, 2000, seed=0)``), the rest the gallery; truth: the
NEW model's exact float top-10 over the gallery; metric R10@10; search ``bebr.Index`` (SDC,
cosine), 4-bit query codes everywhere (``QB``).
Training sample (``--train-source``): ``extra`` = the 40,000 next GloVe words (rows
100,000..139,999 of ``glove_words(140_000)``), embedded by both models: no query or gallery
word is in any training sample of a model, head, adapter or calibration. ``gallery`` = a
seeded random 40,000 of the 98,000 gallery words, removed from the evaluation gallery (which
keeps the other 58,000); used where the new model's floats of the extra words are missing.
Of the training sample, ``VAL`` rows (seeded) are held out of every fit: the research
validation (``--research``) uses them as queries against the old codes of the other rows,
never the 2,000 reported queries.

Paths measured per upgrade and budget (``M(q, g)``: queries of q's codes over g's codes):
  (a) an independently trained new model (``train_binarizer`` on new floats) + query heads
      into the old codes (``train_cross_queries``: new floats and the old model's STORED codes
      of the paired sample only);
  (b) ``train_compatible`` codes alone; (c) ``train_compatible`` + heads;
  (d) the forward upgrader (``train_upgrader``): the gallery upgraded from its old codes vs
      left old;
  (e) Drift-Adapter-style baselines: a least-squares affine map and a small residual MLP
      from new float queries to old floats (fitted on the paired sample), then the OLD
      model's query encoder over the same old codes.

Usage:  python tools/eval_upgrade.py [--upgrades minilm-mpnet,glove-minilm]
            [--budgets 128x2,256x2] [--parts a,e,b,c,d,f,r] [--write]
  (f: hot refresh through ``bebr.Collection``: ``upgrade`` timed on the paired sample,
   backfill curves with and without the old model's query floats, the naive merge and RRF,
   ``backfill_order`` random vs uncertainty; r: research variants on the validation rows)
Everything trained is cached under ``<data dir>/upgrade_eval/`` keyed by the training code's
hash and its settings; every measured row lands in ``<data dir>/upgrade_eval/results.json``
(key: upgrade / source / budget / row), so a rerun reuses both and trains only what is new.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import io
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

import bebr  # noqa: E402
from bebr import datasets as ds, metrics as M  # noqa: E402
from bebr.compat import train_cross_queries  # noqa: E402
from bebr.collection import joint_query_codes  # noqa: E402
from bebr.fileio import atomic_write_bytes  # noqa: E402
from bebr.train import train_binarizer  # noqa: E402
from compat_lab import CodeUpgrader, train_compatible, train_upgrader  # noqa: E402
from eval_compat import Evaluator, code_hash, fmt  # noqa: E402

QB = 4            # query bits of every SDC search
N_BENCH = 100_000  # words of the benchmark
N_EXTRA = 40_000   # training words after them (extra) / taken from the gallery (gallery)
NQ = 2000
VAL = 2000         # rows of the training sample held out of every fit (research validation)
FIRST, FIRST_TRAIN, FIRST_VAL = 40_000, 10_000, 1_000  # the "first40k" protocol
THREADS = 2
ALLOW_MPNET = False  # --embed-mpnet
CACHED_ONLY = False  # --cached-only: report stored rows, train and measure nothing new
STORE_DIR = "upgrade_eval"  # under the data dir ("upgrade_eval_dev" with --dev)

UPGRADES = {  # name: (old model, new model)
    "minilm-mpnet": ("minilm", "mpnet"),
    "glove-minilm": ("glove", "minilm"),
}
DIMS = {"glove": 50, "minilm": 384, "mpnet": 768}


# ---------------------------------------------------------------------------- data
def _embed_cached(name: str, lo: int, hi: int) -> np.ndarray:
    """Rows ``lo:hi`` (GloVe word order) of model ``name``'s floats: sliced from any cached
    array of a longer GloVe-word prefix, else the cached / computed array of exactly those
    words (``bebr.datasets`` caches it by word hash)."""
    words, g = ds.glove_words(hi)
    if name == "glove":
        return g[lo:hi]
    stem = {"minilm": "minilm-l6-v2", "mpnet": "mpnet-base-v2"}[name]
    for p in sorted(ds.data_dir().glob(f"{stem}_*_*.npy")):
        m = int(p.stem.rsplit("_", 1)[1])
        if m < hi or m > 400_000:
            continue
        pre, _ = ds.glove_words(m)
        if p.stem.split("_")[1] == ds.words_hash(pre)[:24]:
            arr = np.load(p, mmap_mode="r")
            if arr.shape == (m, DIMS[name]):
                return np.ascontiguousarray(arr[lo:hi], dtype=np.float32)
    if name == "mpnet" and not ALLOW_MPNET:
        raise SystemExit(f"MPNet floats of GloVe words {lo}..{hi} are not cached (slow to "
                         "embed on CPU); pass --embed-mpnet to compute them")
    fn = ds.minilm_embeddings if name == "minilm" else ds.mpnet_embeddings
    if not has_cached(name, lo, hi):
        print(f"  embedding {hi - lo} words with {name}", flush=True)
    return fn(words[lo:hi])


def has_cached(name: str, lo: int, hi: int) -> bool:
    """Whether rows ``lo:hi`` of ``name`` are available without embedding anything."""
    if name == "glove":
        return True
    stem = {"minilm": "minilm-l6-v2", "mpnet": "mpnet-base-v2"}[name]
    words, _ = ds.glove_words(hi)
    if ds.embeddings_cached(stem, words[lo:hi]):
        return True
    for p in ds.data_dir().glob(f"{stem}_*_*.npy"):
        m = int(p.stem.rsplit("_", 1)[1])
        if hi <= m <= 400_000 and p.stem.split("_")[1] == ds.words_hash(
                ds.glove_words(m)[0])[:24]:
            return True
    return False


class Data:
    """Floats of one upgrade: benchmark rows, the split, the training sample, the truth."""

    def __init__(self, upgrade: str, source: str, need_new: bool = True):
        self.upgrade, self.source = upgrade, source
        self.old_name, self.new_name = UPGRADES[upgrade]
        nb = FIRST if source == "first40k" else N_BENCH
        self.n_words = nb
        xo = _embed_cached(self.old_name, 0, nb)
        xn = _embed_cached(self.new_name, 0, nb) if need_new else None
        qi, bi = ds.query_split(nb, NQ, seed=0)
        n_val = VAL
        if source == "first40k":
            # the first 40k benchmark words only (MPNet of all 100k takes hours here): 2,000
            # queries, the other 38,000 split (seeded) into a 10,000-word training sample
            # and a 28,000-word gallery
            rng = np.random.default_rng(11)
            perm = rng.permutation(len(bi))
            tr, gal = np.sort(bi[perm[:FIRST_TRAIN]]), np.sort(bi[perm[FIRST_TRAIN:]])
            self.xo_t = xo[tr]
            self.xn_t = xn[tr] if need_new else None
            n_val = FIRST_VAL
        elif source == "extra":
            self.xo_t = _embed_cached(self.old_name, N_BENCH, N_BENCH + N_EXTRA)
            self.xn_t = _embed_cached(self.new_name, N_BENCH, N_BENCH + N_EXTRA)
            gal = bi
        elif source == "gallery":
            rng = np.random.default_rng(11)
            take = np.zeros(len(bi), dtype=bool)
            take[rng.choice(len(bi), N_EXTRA, replace=False)] = True
            self.xo_t, self.xn_t = xo[bi[take]], xn[bi[take]]
            gal = bi[~take]
        else:
            raise ValueError(f"train source must be 'extra' or 'gallery', got {source!r}")
        self.n_gallery = len(gal)
        # the training sample: `fit` rows train everything, `val` rows never
        rng = np.random.default_rng(5)
        perm = rng.permutation(len(self.xo_t))
        self.val, self.fit = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        self.qo, self.go = xo[qi], xo[gal]    # query / gallery floats, old model
        if not need_new:
            return
        self.qn, self.gn = xn[qi], xn[gal]    # the same, new model
        t = time.perf_counter()
        self.truth = ds.exact_topk(self.qn, self.gn, 10)
        self.val_truth = ds.exact_topk(self.xn_t[self.val], self.xn_t[self.fit], 10)
        print(f"[{upgrade}/{source}] {len(qi)} queries, {self.n_gallery} gallery, "
              f"{len(self.fit)} fit + {len(self.val)} val training rows; truth "
              f"{time.perf_counter() - t:.0f} s", flush=True)

    def overlap(self) -> float:
        """Mean share of the new float top-10 in the old float top-10 (same queries)."""
        old = ds.exact_topk(self.qo, self.go, 10)
        return float(np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(old, self.truth)]))


# ---------------------------------------------------------------------------- cache
class Skip(Exception):
    """A row or model that is not stored, under --cached-only."""


class Store:
    """Trained objects and measured rows of one upgrade / source, on disk.

    Objects: ``root/<name>_<code hash>/`` (a Binarizer / CodeUpgrader dir, or ``arrays.npz``)
    plus ``train_time.json``. Rows: one JSON file for the whole benchmark, keyed
    ``upgrade/source/budget/row``; a row is recomputed only when its key (which holds the
    code hash) is missing.
    """

    def __init__(self, upgrade: str, source: str, root: Path | None = None):
        self.base = root or ds.data_dir() / STORE_DIR
        self.root = self.base / upgrade / source
        self.root.mkdir(parents=True, exist_ok=True)
        self.code = code_hash()
        self.prefix = f"{upgrade}/{source}"
        self.results_path = self.base / "results.json"
        self.times: dict = {}

    def _dir(self, name: str) -> Path:
        return self.root / f"{name}_{self.code}"

    def model(self, name: str, fn, kind=bebr.Binarizer):
        p = self._dir(name)
        if (p / "config.json").exists():
            self.times[name] = json.loads((p / "train_time.json").read_text())["time_s"]
            m = kind.load(p)
            if (p / "train_info.json").exists():  # not part of the model file
                m.train_info = json.loads((p / "train_info.json").read_text())
            return m
        if CACHED_ONLY:
            raise Skip(name)
        t = time.perf_counter()
        m = fn()
        self.times[name] = time.perf_counter() - t
        m.save(p)
        atomic_write_bytes(p / "train_time.json", json.dumps({"time_s": self.times[name]}).encode())
        info = getattr(m, "train_info", None)
        if isinstance(info, dict):
            atomic_write_bytes(p / "train_info.json", json.dumps(info, default=str).encode())
        print(f"  trained {name} in {self.times[name]:.0f} s", flush=True)
        return m

    def arrays(self, name: str, fn) -> dict:
        p = self._dir(name)
        if (p / "arrays.npz").exists():
            self.times[name] = json.loads((p / "train_time.json").read_text())["time_s"]
            with np.load(p / "arrays.npz") as z:
                return {k: z[k] for k in z.files}
        if CACHED_ONLY:
            raise Skip(name)
        t = time.perf_counter()
        arrs = fn()
        self.times[name] = time.perf_counter() - t
        p.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, **arrs)
        atomic_write_bytes(p / "arrays.npz", buf.getvalue())
        atomic_write_bytes(p / "train_time.json", json.dumps({"time_s": self.times[name]}).encode())
        print(f"  fitted {name} in {self.times[name]:.0f} s", flush=True)
        return arrs

    # ---- results
    def load_results(self) -> dict:
        if self.results_path.exists():
            return json.loads(self.results_path.read_text())
        return {}

    def row(self, budget: str, row: str, fn, dep: str = "") -> dict:
        """The stored row, or ``fn()`` stored; ``dep`` names what the row was measured on
        (e.g. the head's cache name): a row of another ``dep`` is recomputed."""
        key = f"{self.prefix}/{budget}/{row}"
        res = self.load_results()
        if key in res and res[key].get("code") == self.code and res[key].get("dep", "") == dep:
            return res[key]
        if CACHED_ONLY:
            raise Skip(key)
        val = fn()
        val["code"] = self.code
        if dep:
            val["dep"] = dep
        res = self.load_results()  # re-read: another row may have landed meanwhile
        res[key] = val
        atomic_write_bytes(self.results_path, json.dumps(res, indent=1, sort_keys=True).encode())
        return val


# ---------------------------------------------------------------------------- adapters
def fit_ls_adapter(xn: np.ndarray, xo: np.ndarray) -> dict:
    """Least-squares affine map new floats -> old floats (Drift-Adapter's linear baseline)."""
    a = np.concatenate([xn, np.ones((len(xn), 1), np.float32)], 1).astype(np.float64)
    sol = np.linalg.lstsq(a, xo.astype(np.float64), rcond=None)[0]
    return {"w": sol[:-1].astype(np.float32), "b": sol[-1].astype(np.float32)}


def apply_ls(ad: dict, x: np.ndarray) -> np.ndarray:
    return ds.l2_normalize(x @ ad["w"] + ad["b"])


class ResidualAdapter(torch.nn.Module):
    """Drift-Adapter's residual MLP: y = A x + b + MLP(x), A, b the least-squares start."""

    def __init__(self, a: int, c: int, hidden: int = 1024):
        super().__init__()
        self.lin = torch.nn.Linear(a, c)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(a, hidden), torch.nn.GELU(),
                                       torch.nn.Linear(hidden, c))
        torch.nn.init.zeros_(self.mlp[2].weight)
        torch.nn.init.zeros_(self.mlp[2].bias)

    def forward(self, x):
        return self.lin(x) + self.mlp(x)


def fit_mlp_adapter(xn: np.ndarray, xo: np.ndarray, *, epochs: int | None = None,
                    hidden: int = 1024, lr: float = 1e-3, batch: int = 256,
                    seed: int = 0) -> dict:
    """The residual MLP adapter trained on ``1 - cos(y, x_old)`` (+ MSE), from the LS start;
    the best of its epochs on a held-out 5% (cosine) is kept. ``epochs`` None: about 200k
    rows visited (4 to 20 epochs). Returns its weights."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(xn))
    nv = max(100, len(xn) // 20)
    va, tr = perm[:nv], perm[nv:]
    if epochs is None:
        epochs = int(min(20, max(4, round(2e5 / len(tr)))))
    ls = fit_ls_adapter(xn[tr], xo[tr])
    net = ResidualAdapter(xn.shape[1], xo.shape[1], hidden)
    with torch.no_grad():
        net.lin.weight.copy_(torch.from_numpy(ls["w"].T))
        net.lin.bias.copy_(torch.from_numpy(ls["b"]))
    X, Y = torch.from_numpy(xn), torch.from_numpy(xo)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * math.ceil(len(tr) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))

    def val():
        with torch.no_grad():
            return float(F.cosine_similarity(net(X[va]), Y[va]).mean())
    best, state = val(), copy.deepcopy(net.state_dict())
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.from_numpy(tr)[torch.randperm(len(tr), generator=g)]
        for s in range(0, len(order), batch):
            b = order[s:s + batch]
            y = net(X[b])
            loss = (1 - F.cosine_similarity(y, Y[b])).mean() + F.mse_loss(y, Y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        v = val()
        if v > best:
            best, state = v, copy.deepcopy(net.state_dict())
    return {k: v.numpy() for k, v in state.items()} | {"hidden": np.array(hidden)}


def apply_mlp(ad: dict, x: np.ndarray) -> np.ndarray:
    net = ResidualAdapter(x.shape[1], ad["lin.weight"].shape[0], int(ad["hidden"]))
    net.load_state_dict({k: torch.from_numpy(v) for k, v in ad.items() if k != "hidden"})
    with torch.no_grad():
        return ds.l2_normalize(net(torch.from_numpy(np.ascontiguousarray(x))).numpy())


# ---------------------------------------------------------------------------- measuring
def recall_of(spec, q_codes, g_codes, truth, query_bits=QB) -> float:
    return Evaluator(spec, truth).m(q_codes, g_codes, query_bits=query_bits)


def gain(no, oo, nn):
    try:
        return M.update_gain(no, oo, nn)
    except ValueError:
        return None


class Budget:
    """All models and rows of one upgrade at one code budget."""

    def __init__(self, data: Data, store: Store, dim: int, bits: int, args):
        self.d, self.s, self.dim, self.bits, self.args = data, store, dim, bits, args
        self.tag = f"{dim}x{bits}"
        self.kw = dict(epochs=args.epochs, progress=False, seed=0, threads=THREADS,
                       query_bits=QB)
        d = data
        self.old = self.old_model(d, store, dim, bits, args)
        self.spec = self.old.spec
        self.old_g = self.old.encode(d.go)                  # the stored old gallery codes
        self.old_pair = self.old.encode(d.xo_t[d.fit])      # stored old codes of the pairs
        self.old_valq = self.old.encode_query_codes(d.xo_t[d.val], QB)
        self.m_oo = recall_of(self.spec, self.old.encode_query_codes(d.qo, QB), self.old_g,
                              d.truth)
        self.val_oo = recall_of(self.spec, self.old_valq, self.old_pair, d.val_truth)
        self.rows: dict = {}

    @staticmethod
    def old_model(d, store, dim, bits, args):
        tag = f"{dim}x{bits}"
        return store.model(f"old_{d.old_name}_{tag}_e{args.epochs}", lambda: train_binarizer(
            d.xo_t[d.fit], dim, bits, version=f"{d.old_name}-{tag}", epochs=args.epochs,
            progress=False, seed=0, threads=THREADS, query_bits=QB))

    def m_old(self, q_codes):
        return recall_of(self.spec, q_codes, self.old_g, self.d.truth)

    def val_old(self, q_codes):
        return recall_of(self.spec, q_codes, self.old_pair, self.d.val_truth)

    def record(self, name, fn, dep: str = ""):
        r = self.s.row(self.tag, name, fn, dep)
        self.rows[name] = r
        no, nn = r.get("m_new_old"), r.get("m_new_new")
        print(f"  [{self.tag}] {name}: " + ", ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
            if k not in ("code", "curves", "orders", "dep")), flush=True)
        for k, c in r.get("curves", {}).items():
            print(f"    {k}: R10@10 {np.round(c['values'], 4).tolist()} flips "
                  f"{np.round(c['flips'], 4).tolist()} area {c['area']:.4f}", flush=True)
        return r

    def base(self):
        return self.record("old", lambda: {"m_old_old": self.m_oo, "val_old_old": self.val_oo,
                                           "train_s": self.s.times[
                                               f"old_{self.d.old_name}_{self.tag}_e{self.args.epochs}"]})

    # ---- (a) / (c): a new model and its head
    def new_model(self, kind: str):
        d, a = self.d, self.args
        if kind == "independent":
            ep = a.new_epochs or a.epochs
            name = f"ind_{d.new_name}_{self.tag}_e{ep}"
            return name, self.s.model(name, lambda: train_binarizer(
                d.xn_t[d.fit], self.dim, self.bits, patience=ep,
                version=f"{d.new_name}-{self.tag}-indep", **(self.kw | {"epochs": ep})))
        name = f"compat_{d.new_name}_{self.tag}_e{a.epochs}"
        return name, self.s.model(name, lambda: train_compatible(
            d.xn_t[d.fit], d.xo_t[d.fit], self.old, version=f"{d.new_name}-{self.tag}-compat",
            cross_queries=False, **self.kw))

    def headed(self, kind: str, **head_kw):
        name, model = self.new_model(kind)
        opts = dict(members=3, teacher="neighbors") | head_kw
        if self.args.head_epochs:
            opts.setdefault("epochs", self.args.head_epochs)
        hname = f"{name}_head_" + "_".join(f"{k}{v}" for k, v in sorted(opts.items()))
        cap = self.args.head_max_s
        if cap:
            hname += f"_max{cap:g}"

        def fit():
            m = copy.deepcopy(model)
            if kind == "independent" and not head_kw:
                # the default head comes from Collection.upgrade (the same train_cross_queries
                # call), which is timed and leaves the collection for the hot-refresh rows
                return self.collection_upgrade(m, hname, {k: v for k, v in opts.items()
                                                          if k != "members"})
            return train_cross_queries(m, self.d.xn_t[self.d.fit], self.old_pair,
                                       self.old.version, progress=False, threads=THREADS,
                                       query_bits=QB, max_time_s=cap / opts["members"]
                                       if cap else None, **opts)
        return hname, self.s.model(hname, fit)

    def collection_dir(self, hname: str) -> Path:
        return self.s.root / f"collection_{hname}_{self.s.code}"

    def collection_upgrade(self, new_model, hname: str, head_options=None):
        """A ``bebr.Collection`` of the old model holding the gallery (ids 0..) and the fit
        rows of the training sample (ids after them), upgraded to ``new_model`` from the fit
        rows' new floats (and old floats, for the own-query calibration); the fit rows are
        then removed, so the saved collection holds the gallery only. Returns the model
        with its head; the upgrade's time lands in ``upgrade.json``."""
        import shutil
        d = self.d
        path = self.collection_dir(hname)
        if path.exists():
            shutil.rmtree(path)
        coll = bebr.Collection.create(path, self.old, query_bits=QB)
        ng = len(d.go)
        coll.add(d.go, ids=np.arange(ng))
        pair_ids = ng + np.arange(len(d.fit))
        coll.add(d.xo_t[d.fit], ids=pair_ids)
        t = time.perf_counter()
        rep = coll.upgrade(new_model, d.xn_t[d.fit], pair_ids,
                           older={self.old.version: d.xo_t[d.fit]}, members=3, seed=0,
                           joint_query=True,  # the opt-in path; the Index rows: the default
                           max_time_s=self.args.head_max_s or None,
                           progress=False,
                           head_options={"threads": THREADS} | (head_options or {}))
        up_s = time.perf_counter() - t
        coll.remove(pair_ids)
        coll.save()
        atomic_write_bytes(path.parent / f"{path.name}.upgrade.json", json.dumps(
            {"upgrade_s": up_s, "rows": len(pair_ids), "report": rep}, default=str).encode())
        print(f"  Collection.upgrade on {len(pair_ids)} pairs: {up_s:.0f} s", flush=True)
        return coll.model

    def new_row(self, kind: str):
        d = self.d
        name, model = self.new_model(kind)
        own = model.encode(d.gn)
        q = model.encode_query_codes(d.qn, QB)

        def fn():
            m_nn = recall_of(self.spec, q, own, d.truth)
            m_no = self.m_old(q)  # its own query codes over the old codes, no head
            return {"m_new_new": m_nn, "m_new_old": m_no, "m_old_old": self.m_oo,
                    "gain": gain(m_no, self.m_oo, m_nn), "criterion": m_no > self.m_oo,
                    "train_s": self.s.times[name]}
        return self.record(f"{kind} codes alone", fn)

    def head_row(self, kind: str, label: str | None = None, **head_kw):
        d = self.d
        name, model = self.new_model(kind)
        hname, hm = self.headed(kind, **head_kw)
        label = label or f"{kind} + head"

        def fn():
            own = hm.encode(d.gn)
            m_nn = recall_of(self.spec, hm.encode_query_codes(d.qn, QB), own, d.truth)
            m_no = self.m_old(hm.encode_query_codes(d.qn, QB, target=self.old.version))
            v = self.val_old(hm.encode_query_codes(d.xn_t[d.val], QB, target=self.old.version))
            info = hm.train_info["cross_val"][self.old.version]
            return {"m_new_new": m_nn, "m_new_old": m_no, "m_old_old": self.m_oo,
                    "gain": gain(m_no, self.m_oo, m_nn), "criterion": m_no > self.m_oo,
                    "val_new_old": v, "val_old_old": self.val_oo,
                    "member_best": info["member_best"], "head_s": self.s.times[hname],
                    "train_s": self.s.times[name], "calibration": list(info["calibration"]["cosine"])}
        return self.record(label, fn, hname)

    # ---- (e) adapters
    def adapters(self):
        d = self.d
        ls = self.s.arrays(f"adapter_ls_{d.new_name}_{d.old_name}",
                           lambda: fit_ls_adapter(d.xn_t[d.fit], d.xo_t[d.fit]))
        mlp = self.s.arrays(f"adapter_mlp_{d.new_name}_{d.old_name}_eauto",
                            lambda: fit_mlp_adapter(d.xn_t[d.fit], d.xo_t[d.fit]))
        return {"LS adapter": (ls, apply_ls), "MLP adapter": (mlp, apply_mlp)}

    def adapter_rows(self):
        d = self.d
        for label, (ad, fn) in self.adapters().items():
            key = "adapter_ls_" if label.startswith("LS") else "adapter_mlp_"
            tname = next(k for k in self.s.times if k.startswith(key))

            def row(ad=ad, fn=fn, tname=tname):
                q = self.old.encode_query_codes(fn(ad, d.qn), QB)
                m_no = self.m_old(q)
                v = self.val_old(self.old.encode_query_codes(fn(ad, d.xn_t[d.val]), QB))
                return {"m_new_old": m_no, "m_old_old": self.m_oo, "criterion": m_no > self.m_oo,
                        "val_new_old": v, "val_old_old": self.val_oo,
                        "fit_s": self.s.times[tname]}
            self.record(f"{label} + old query encoder", row)

    # ---- research: query-path variants on the held-out training rows only
    def research_row(self, kind: str = "independent"):
        """Post-hoc variants of the new-query path, measured on the ``VAL`` held-out rows of
        the training sample (never the reported queries). Protocol A: val queries over the
        old codes of the fit rows (truth: new-float top-10 among them). Protocol B (memory
        variants): the fit rows split in halves, a memory pool (new floats + old codes) and
        a gallery (old codes), so no memory item is a gallery item."""
        d = self.d
        hname, hm = self.headed(kind)
        ads = self.adapters()

        def fn():
            head = hm.cross_head(self.old.version)
            xq, xoq = d.xn_t[d.val], d.xo_t[d.val]
            unit = ds.l2_normalize
            qspec = bebr.CodeSpec(self.dim, QB)

            def codes(z):
                return qspec.pack(qspec.quantize_angle(np.ascontiguousarray(z, np.float32)))
            with torch.no_grad():
                xt = torch.from_numpy(np.ascontiguousarray(xq))
                z_head = unit(head(xt).numpy())
                z_mem = [unit(head.member(k, xt).numpy()) for k in range(len(head.nets))]
            z_ad = {k: unit(self.old.encode_query(fn_(ad, xq))) for k, (ad, fn_) in ads.items()}
            z_own = unit(self.old.encode_query(xoq))
            out = {"A: old queries (old floats)": self.val_old(codes(z_own)),
                   "A: head": self.val_old(codes(z_head))}
            for k, z in enumerate(z_mem):
                out[f"A: head member {k}"] = self.val_old(codes(z))
            for name, z in z_ad.items():
                out[f"A: {name}"] = self.val_old(codes(z))
                for w in (0.25, 0.5, 1.0):
                    out[f"A: head + {w:g} {name}"] = self.val_old(codes(z_head + w * z))
            for w in (0.25, 0.5, 1.0, 2.0):
                out[f"A: old queries + {w:g} head (both floats)"] = self.val_old(
                    codes(z_own + w * z_head))
            # protocol B: memory = first half of the fit rows, gallery = second half
            rng = np.random.default_rng(9)
            perm = rng.permutation(len(d.fit))
            mem, gal = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2:])
            truth_b = ds.exact_topk(xq, d.xn_t[d.fit][gal], 10)
            g_codes = self.old_pair[gal]
            ev = Evaluator(self.spec, truth_b)

            def mb(z):
                return ev.m(codes(z), g_codes, query_bits=QB)
            out["B: old queries (old floats)"] = mb(z_own)
            out["B: head"] = mb(z_head)
            xm = d.xn_t[d.fit][mem]
            om = unit(self.spec.values(self.old_pair[mem]))
            sims = xq @ xm.T
            for kk in (5, 10, 20, 50):
                nb = np.argpartition(-sims, kk, axis=1)[:, :kk]
                z_knn = unit(om[nb].mean(1))
                out[f"B: kNN memory k={kk}"] = mb(z_knn)
                for w in (0.5, 1.0, 2.0):
                    out[f"B: head + {w:g} kNN memory k={kk}"] = mb(z_head + w * z_knn)
            out["val_old_old"] = self.val_oo
            return out
        return self.record(f"{kind} research (validation)", fn, hname)

    # ---- hot refresh
    def backfill_row(self, kind: str = "independent"):
        d = self.d
        name, _ = self.new_model(kind)
        hname, hm = self.headed(kind)

        def fn():
            t = time.perf_counter()
            q_old = self.old.encode_query_codes(d.qo, QB)
            ev = Evaluator(self.spec, d.truth)
            old_ok = ev.correct(ev.ids(q_old, self.old_g, query_bits=QB))
            new_pair = hm.encode(d.xn_t[d.fit])
            cal_old = fit_calibration(self.spec, self.old_valq, self.old_pair,
                                      hm.encode_query_codes(d.xn_t[d.val], QB), new_pair,
                                      d.val_truth)
            cal_old_s = time.perf_counter() - t
            curves = backfill_curves(
                self.spec, d.truth, old_ok, q_new=hm.encode_query_codes(d.qn, QB),
                q_old=q_old, q_head=hm.encode_query_codes(d.qn, QB, target=self.old.version),
                old_g=self.old_g, new_g=hm.encode(d.gn), cal_old=cal_old,
                cal_head=hm.cross_calibration(self.old.version))
            return {"curves": curves, "m_old_old": self.m_oo, "cal_old": list(cal_old),
                    "cal_head": list(hm.cross_calibration(self.old.version)),
                    "cal_old_fit_s": cal_old_s, "via": "bebr.Index"}
        return self.record(f"{kind} + head: backfill", fn, hname)

    def collection_row(self):
        """Hot refresh through ``Collection.search`` (the collection of
        :meth:`collection_upgrade`): for each order (``backfill_order`` "random" and
        "uncertainty"), the first r of the gallery re-encoded by ``upsert`` (new floats);
        R10@10 and flips with the old model's query floats given (``older=``) and without
        (new queries only); the naive merge and RRF over the same codes and order."""
        d = self.d
        hname, hm = self.headed("independent")
        path = self.collection_dir(hname)
        up_file = path.parent / f"{path.name}.upgrade.json"
        if not up_file.exists():  # the head was cached before: upgrade a collection again
            opts = {"teacher": "neighbors"} | ({"epochs": self.args.head_epochs}
                                               if self.args.head_epochs else {})
            hm = self.collection_upgrade(copy.deepcopy(self.new_model("independent")[1]), hname,
                                         opts)
        up = json.loads(up_file.read_text())

        def fn():
            q_old = self.old.encode_query_codes(d.qo, QB)
            ev = Evaluator(self.spec, d.truth)
            old_ok = ev.correct(ev.ids(q_old, self.old_g, query_bits=QB))
            n = len(d.go)
            out = {"m_old_old": self.m_oo, "upgrade_s": up["upgrade_s"],
                   "upgrade_rows": up["rows"], "via": "bebr.Collection", "orders": {}}
            import shutil
            import tempfile
            base = bebr.Collection.open(path, mmap=False)
            ov = self.old.version
            # the cached upgrade fitted the opt-in joint query: its figure, then the
            # default (old queries alone) refitted by this bebr's Collection.calibrate on
            # the upgrade's own paired rows (re-added with their stored codes), in a copy
            w = base._manifest["joint_weight"].get(ov, 0.0)
            q_joint = joint_query_codes(self.old, d.qo, hm, d.qn, ov, w, QB)
            out["joint_weight"] = w
            out["joint_val"] = up["report"].get("joint_query", {}).get(ov)
            out["m_joint_old"] = self.m_old(q_joint)  # both floats, old codes only
            tmp = Path(tempfile.mkdtemp(prefix="bebr-eval-coll-")) / "c"
            shutil.copytree(path, tmp)
            base = bebr.Collection.open(tmp, mmap=False)
            pair_ids = n + np.arange(len(d.fit))
            base.add_codes(self.old_pair, pair_ids, version=ov)
            t_cal = time.perf_counter()
            cal_rep = base.calibrate(d.xn_t[d.fit], pair_ids, older={ov: d.xo_t[d.fit]})
            out["calibrate_s"] = time.perf_counter() - t_cal
            out["memory"] = cal_rep["query_memory"].get(ov)
            base.remove(pair_ids)
            base.save()
            own_cal = base._manifest["own_calibration"][ov]
            table = base._manifest.get("merge_calibration", {}).get(ov)
            out["cal_old"], out["cal_head"] = list(own_cal), list(hm.cross_calibration(ov))
            out["merge_table"] = table
            out["merge_val"] = cal_rep.get("merge_calibration", {}).get(ov, {}).get("val")

            def cal_at(r):  # what Collection.search applies at re-encoded share r
                if not table:
                    return tuple(own_cal)
                return tuple(min(table, key=lambda e: (abs(e[0] - r), e[0]))[1:])
            for strategy in ("random", "uncertainty"):
                coll = bebr.Collection.open(tmp, mmap=False)
                order = coll.backfill_order(n, strategy)
                done = 0
                cur = {"old queries given": ([], []), "new queries only": ([], [])}
                for r in FRACTIONS:
                    upto = int(round(r * n))
                    if upto > done:
                        sel = order[done:upto]
                        coll.upsert(d.gn[sel], sel)
                        done = upto
                    for key, older in (("old queries given", {ov: d.qo}),
                                       ("new queries only", None)):
                        ids = coll.search(d.qn, 10, older=older if r < 1 else None)[1]
                        cur[key][0].append(ev.recall(ids))
                        cur[key][1].append(M.negative_flip_rate(old_ok, ev.correct(ids)))
                ref = backfill_curves(
                    self.spec, d.truth, old_ok, q_new=hm.encode_query_codes(d.qn, QB),
                    q_old=q_old, q_head=hm.encode_query_codes(d.qn, QB, target=ov),
                    old_g=self.old_g, new_g=hm.encode(d.gn), cal_old=cal_at,
                    cal_head=hm.cross_calibration(ov), order=order)
                curves = {k: {"fractions": list(FRACTIONS), "values": v, "flips": f,
                              "area": M.curve_area(FRACTIONS, v)} for k, (v, f) in cur.items()}
                curves["naive merge"] = ref["naive merge"]
                curves["RRF (k=60)"] = ref["RRF (k=60)"]
                # the Index path with the collection's calibration must agree with it
                curves["check: Index, old queries given"] = ref["old queries given"]
                out["orders"][strategy] = curves
            out["curves"] = out["orders"]["random"]
            shutil.rmtree(tmp.parent, ignore_errors=True)
            return out
        r = self.record("independent + head: Collection backfill", fn,
                        f"{hname}/{COLLECTION_CODE}")
        ih = self.rows.get("independent + head", {})

        def memory_row():  # Collection.search of new queries alone before any re-encoding
            no = r["orders"]["random"]["new queries only"]["values"][0]
            nn = ih.get("m_new_new")
            return {"m_new_old": no, "m_new_new": nn, "m_old_old": self.m_oo,
                    "gain": gain(no, self.m_oo, nn) if nn is not None else None,
                    "criterion": no > self.m_oo, "memory": r.get("memory"),
                    "train_s": ih.get("train_s", 0), "head_s": ih.get("head_s", 0),
                    "calibrate_s": r.get("calibrate_s")}
        self.record("independent + head + query memory (Collection)", memory_row,
                    f"{hname}/{COLLECTION_CODE}")
        return r

    # ---- (d) upgrader
    def upgrader_row(self, kind: str = "compatible"):
        d = self.d
        name, model = self.new_model(kind)
        uname = f"{name}_upgrader_e{self.args.upgrade_epochs}"
        up = self.s.model(uname, lambda: train_upgrader(
            self.old_pair, model, d.xn_t[d.fit], epochs=self.args.upgrade_epochs,
            progress=False, threads=THREADS, seed=0), kind=CodeUpgrader)

        def fn():
            t = time.perf_counter()
            upg = up.upgrade(self.old_g)
            up_s = time.perf_counter() - t
            q = model.encode_query_codes(d.qn, QB)
            m_up = recall_of(self.spec, q, upg, d.truth)
            m_left = self.m_old(q)
            m_nn = recall_of(self.spec, q, model.encode(d.gn), d.truth)
            return {"m_new_upgraded": m_up, "m_new_old": m_left, "m_new_new": m_nn,
                    "m_old_old": self.m_oo, "upgrader_beats_left_old": m_up > m_left,
                    "gain": gain(m_up, self.m_oo, m_nn), "train_s": self.s.times[uname],
                    "upgrade_gallery_s": up_s}
        return self.record(f"{kind} + upgrader (gallery upgraded)", fn)


# ---------------------------------------------------------------------------- backfill
V_OLD, V_NEW = 1, 2
FRACTIONS = tuple(round(0.1 * i, 1) for i in range(11))


def fit_calibration(spec, q_a, g_a, q_b, g_b, truth, query_bits=QB) -> tuple:
    """(scale, shift) putting the scores of packed queries ``q_a`` over codes ``g_a`` on the
    scale of ``q_b`` over ``g_b`` (the same queries and items under two versions; logistic
    fits of their top-50 scores labelled by ``truth``, as ``bebr.compat.fit_head_calibration``
    does for a head)."""
    from bebr.compat import CALIBRATION_TOP, _fit_calibration
    qspec = bebr.CodeSpec(spec.dim, query_bits)
    sets = [(torch.from_numpy(qspec.values(q)), torch.from_numpy(spec.values(g)))
            for q, g in ((q_a, g_a), (q_b, g_b))]
    return _fit_calibration(sets, torch.from_numpy(np.asarray(truth, np.int64)),
                            CALIBRATION_TOP, "cosine")


def rrf(lists, k: int = 10, c: int = 60) -> np.ndarray:
    """Reciprocal-rank fusion of per-query id lists (-1 = none): sum of 1 / (c + rank)."""
    out = np.full((lists[0].shape[0], k), -1, dtype=np.int64)
    for i in range(out.shape[0]):
        score: dict = {}
        for ids in lists:
            for rank, j in enumerate(ids[i]):
                if j >= 0:
                    score[int(j)] = score.get(int(j), 0.0) + 1.0 / (c + rank + 1)
        best = sorted(score.items(), key=lambda t: (-t[1], t[0]))[:k]
        out[i, :len(best)] = [j for j, _ in best]
    return out


def backfill_curves(spec, truth, old_ok, *, q_new, q_old, q_head, old_g, new_g, cal_old,
                    cal_head, order=None, fractions=FRACTIONS, rrf_depth=100,
                    q_given=None) -> dict:
    """Hot refresh in one ``bebr.Index`` per fraction r: the first ``round(r n)`` items of
    ``order`` (default: nested random subsets, ``metrics.backfill_subset``) carry new codes,
    the rest old ones. Curves (R10@10 and negative flips against ``old_ok``):
    "old queries given" (old items scored by ``q_given``, default the old model's own
    queries, calibrated by ``cal_old``; the collection passes its joint query),
    "naive merge" (the same pass uncalibrated; ``cal_old`` may be a function of r), "RRF" (two indexes, k=60), and
    "new queries only" (old items scored by the head's codes, calibrated)."""
    n = old_g.shape[0]
    ev = Evaluator(spec, truth)
    curves = {k: ([], []) for k in ("old queries given", "naive merge", "RRF (k=60)",
                                    "new queries only")}
    for r in fractions:
        if order is None:
            mask = M.backfill_subset(n, r, seed=0)
        else:
            mask = np.zeros(n, dtype=bool)
            mask[order[:int(round(r * n))]] = True
        idx = bebr.Index(spec, metric="cosine")
        ids_all = np.arange(n)
        if (~mask).any():
            idx.add(np.ascontiguousarray(old_g[~mask]), ids_all[~mask], version=V_OLD)
        if mask.any():
            idx.add(np.ascontiguousarray(new_g[mask]), ids_all[mask], version=V_NEW)
        has_old = bool((~mask).any())

        def s(vq, cal, qb=QB, q=q_new, index=idx, k=10):
            return index.search(q, k, query_bits=qb, version_queries=vq if has_old else None,
                                version_calibration=cal if has_old else None)[1]
        c_old = cal_old(r) if callable(cal_old) else cal_old
        res = {"old queries given": s({V_OLD: q_old if q_given is None else q_given},
                                      {V_OLD: c_old}),
               "naive merge": s({V_OLD: q_old}, None),
               "new queries only": s({V_OLD: q_head}, {V_OLD: cal_head})}
        parts = []
        for sel, q in ((~mask, q_old), (mask, q_new)):
            if sel.any():
                sub = bebr.Index(spec, metric="cosine")
                sub.add(np.ascontiguousarray((old_g if q is q_old else new_g)[sel]), ids_all[sel])
                parts.append(sub.search(q, rrf_depth, query_bits=QB)[1])
        res["RRF (k=60)"] = rrf(parts)
        for k, ids in res.items():
            curves[k][0].append(ev.recall(ids))
            curves[k][1].append(M.negative_flip_rate(old_ok, ev.correct(ids)))
    return {k: {"fractions": list(fractions), "values": v, "flips": f,
                "area": M.curve_area(fractions, v)} for k, (v, f) in curves.items()}


# ---------------------------------------------------------------------------- chain
CHAIN = "glove-minilm-mpnet"


#: Hash of bebr/collection.py as imported: rows measured through a Collection depend on it.
COLLECTION_CODE = hashlib.sha256((ROOT / "bebr" / "collection.py").read_bytes()).hexdigest()[:8]
CHAIN_STATES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)


def _cached(store: Store, name: str, kind=bebr.Binarizer):
    """A model the chain reuses from the single upgrades' stores (never trained here)."""
    def missing():
        raise Skip(f"{store.prefix}/{name} (run the single upgrade at this budget first)")
    return store.model(name, missing, kind)


class Chain:
    """GloVe -> MiniLM -> MPNet through one ``bebr.Collection`` (three versions coexisting).

    Gallery and queries: those of MiniLM -> MPNet's ``gallery`` source (2,000 queries, the
    58,000 gallery words outside its 40,000-word paired sample); truth: MPNet's float top-10.
    Models, all cached by the single upgrades: GloVe and the MiniLM model + its head into the
    GloVe codes (GloVe -> MiniLM, trained on the 40k extra words), the independent MPNet
    model (MiniLM -> MPNet, trained on its paired sample). The collection starts as the
    GloVe -> MiniLM collection (GloVe codes of the 98,000 non-query words, MiniLM current),
    recalibrated for the default ``search(older=)`` (the GloVe model's own queries;
    ``Collection.calibrate`` on the extra words); ``r1`` of its items are re-encoded by
    MiniLM (``backfill_order("random")``), then ``Collection.upgrade`` to MPNet from
    MPNet's paired sample (its items of either version: heads of MPNet into the GloVe and
    the MiniLM codes, own-query calibrations of both); then the paired-sample items are
    removed, and the 58,000 gallery items are re-encoded by MPNet in random order."""

    def __init__(self, dim: int, bits: int, args):
        self.dim, self.bits, self.args, self.tag = dim, bits, args, f"{dim}x{bits}"
        self.r1 = args.chain_reencoded
        self.gm = Store("glove-minilm", "extra")
        self.mp = Store("minilm-mpnet", "gallery")
        self.s = Store(CHAIN, "gallery")
        ep, nep, cap = args.epochs, args.new_epochs or args.epochs, args.head_max_s
        self.glove = _cached(self.gm, f"old_glove_{self.tag}_e{ep}")
        self.mini_name = (f"ind_minilm_{self.tag}_e{nep}_head_members3_teacherneighbors"
                          + (f"_max{cap:g}" if cap else ""))
        self.minilm = _cached(self.gm, self.mini_name)
        self.gm_coll = self.gm.root / f"collection_{self.mini_name}_{self.gm.code}"
        if not (self.gm_coll / "collection.json").exists():
            raise Skip(f"{self.gm.prefix}/collection_{self.mini_name}")
        self.mpnet = _cached(self.mp, f"ind_mpnet_{self.tag}_e{nep}")
        self.gv, self.mv, self.pv = self.glove.version, self.minilm.version, self.mpnet.version
        # floats: the benchmark words under all three models, the extra words under two
        xg = _embed_cached("glove", 0, N_BENCH)
        xm = _embed_cached("minilm", 0, N_BENCH)
        xp = _embed_cached("mpnet", 0, N_BENCH)
        qi, bi = ds.query_split(N_BENCH, NQ, seed=0)
        rng = np.random.default_rng(11)  # MiniLM -> MPNet's "gallery" source, as in Data
        take = np.zeros(len(bi), dtype=bool)
        take[rng.choice(len(bi), N_EXTRA, replace=False)] = True
        perm = np.random.default_rng(5).permutation(N_EXTRA)
        self.pair_ids = np.flatnonzero(take)[np.sort(perm[VAL:])]  # MPNet's fit rows
        self.take_ids = np.flatnonzero(take)
        self.gal_ids = np.flatnonzero(~take)
        self.words = bi                                    # collection id j <-> word bi[j]
        self.xg, self.xm, self.xp = xg[bi], xm[bi], xp[bi]
        self.qg, self.qm, self.qp = xg[qi], xm[qi], xp[qi]
        t = ds.exact_topk(self.qp, xp[bi[~take]], 10)
        self.truth = self.gal_ids[t]                       # as collection ids
        # GloVe -> MiniLM's paired sample (the extra words), for the recalibration
        self.ex_g = _embed_cached("glove", N_BENCH, N_BENCH + N_EXTRA)
        self.ex_m = _embed_cached("minilm", N_BENCH, N_BENCH + N_EXTRA)
        self.ex_fit = np.sort(np.random.default_rng(5).permutation(N_EXTRA)[VAL:])
        self.path = self.s.root / (f"collection_{self.tag}_r{self.r1:g}_{self.mini_name}_"
                                   f"max{2 * cap:g}_{self.s.code}")
        self.rows: dict = {}

    def recall(self, ids):
        return M.recall_at_k(ids, self.truth)

    def correct(self, ids):
        return M.top1_correct(ids, self.truth)

    def own_index_recall(self, model, x_items, x_queries, q_codes=None):
        """R10@10 of one model's queries over its own codes of the evaluation gallery."""
        idx = bebr.Index(model.spec, metric="cosine")
        idx.add(model.encode(x_items[self.gal_ids]), self.gal_ids)
        q = model.encode_query_codes(x_queries, QB) if q_codes is None else q_codes
        return self.recall(idx.search(q, 10, query_bits=QB)[1])

    def build(self):
        """The chain collection after the MPNet upgrade (cached), and the pre-MPNet system's
        results (recorded in ``pre.json`` beside it)."""
        import shutil
        pre_file = self.path.parent / f"{self.path.name}.pre.json"
        if (self.path / "collection.json").exists() and pre_file.exists():
            return json.loads(pre_file.read_text())
        if CACHED_ONLY:
            raise Skip(self.path.name)
        tmp = self.path.parent / f".tmp-{self.path.name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        shutil.copytree(self.gm_coll, tmp)
        coll = bebr.Collection.open(tmp, mmap=False)
        # the default search(older=) setting: GloVe's own queries, recalibrated
        ex_ids = len(self.words) + np.arange(len(self.ex_fit))
        coll.add_codes(self.glove.encode(self.ex_g[self.ex_fit]), ex_ids, version=self.gv)
        cal1 = coll.calibrate(self.ex_m[self.ex_fit], ex_ids,
                              older={self.gv: self.ex_g[self.ex_fit]})
        coll.remove(ex_ids)
        n = len(coll)
        order = coll.backfill_order(n, "random")
        sel = np.sort(order[:int(round(self.r1 * n))])
        coll.upsert(self.xm[sel], sel)
        # the system the day before MPNet ships: MiniLM queries (+ GloVe's own queries)
        excl = self.take_ids
        ids_pre = coll.search(self.qm, 10, older={self.gv: self.qg}, exclude=excl)[1]
        ids_pre_new = coll.search(self.qm, 10, exclude=excl)[1]
        pre = {"versions_before": coll.versions(), "calibration_minilm_stage": cal1,
               "m_pre": self.recall(ids_pre), "m_pre_new_only": self.recall(ids_pre_new),
               "pre_ok": self.correct(ids_pre).tolist()}
        t = time.perf_counter()
        rep = coll.upgrade(copy.deepcopy(self.mpnet), self.xp[self.pair_ids], self.pair_ids,
                           older={self.gv: self.xg[self.pair_ids],
                                  self.mv: self.xm[self.pair_ids]},
                           members=3, seed=0, max_time_s=2 * self.args.head_max_s or None,
                           progress=False,
                           head_options={"threads": THREADS, "teacher": "neighbors"})
        pre["upgrade_s"] = time.perf_counter() - t
        pre["upgrade_rows"] = {v: int(c["rows"]) for v, c in rep["heads"].items()}
        pre["report"] = rep
        pre["versions_after"] = coll.versions()  # the paired items stay in the saved copy
        if self.path.exists():
            shutil.rmtree(self.path)
        os.replace(tmp, self.path)
        atomic_write_bytes(pre_file, json.dumps(pre, default=str).encode())
        print(f"  chain: Collection.upgrade to MPNet on {len(self.pair_ids)} pairs: "
              f"{pre['upgrade_s']:.0f} s", flush=True)
        return pre

    def run(self) -> dict:
        pre = self.build()

        def fn():
            import shutil
            import tempfile
            tmp = Path(tempfile.mkdtemp(prefix="bebr-eval-chain-")) / "c"
            shutil.copytree(self.path, tmp)  # calibrate() saves: never into the cache
            coll = bebr.Collection.open(tmp, mmap=False)
            mp = coll.model
            # the own-query calibrations as this bebr fits them (Collection.calibrate, the
            # same rows as upgrade used), then the paired items leave the gallery
            of = np.asarray(coll.index.versions_of(self.pair_ids), dtype=object)
            coll.calibrate(self.xp[self.pair_ids], self.pair_ids,
                           older={v: x[self.pair_ids] for v, x in ((self.gv, self.xg),
                                                                  (self.mv, self.xm))
                                  if (of == v).any()})
            coll.remove(self.take_ids)
            base = {"m_glove_glove": self.own_index_recall(self.glove, self.xg, self.qg),
                    "m_minilm_minilm": self.own_index_recall(self.minilm, self.xm, self.qm),
                    "m_mpnet_mpnet": self.own_index_recall(self.mpnet, self.xp, self.qp),
                    "m_pre": pre["m_pre"], "m_pre_new_only": pre["m_pre_new_only"]}
            for v, x in ((self.gv, self.xg), (self.mv, self.xm)):
                model = self.glove if v == self.gv else self.minilm
                base[f"m_mpnet_head_{v}"] = self.own_index_recall(
                    model, x, None, mp.encode_query_codes(self.qp, QB, target=v))
            pre_ok = np.array(pre["pre_ok"], dtype=bool)
            n = len(coll)
            order = coll.backfill_order(n, "random")
            qspec_q = {v: m.encode_query_codes(q, QB) for v, m, q in (
                (self.gv, self.glove, self.qg), (self.mv, self.minilm, self.qm))}
            q_new = mp.encode_query_codes(self.qp, QB)
            cur = {k: ([], []) for k in ("old queries given", "new queries only",
                                         "naive merge", "RRF (k=60)")}
            counts, done = [], 0
            for r in CHAIN_STATES:
                upto = int(round(r * n))
                if upto > done:
                    sel = order[done:upto]
                    coll.upsert(self.xp[sel], sel)
                    done = upto
                counts.append(coll.versions())
                live = {v: c for v, c in coll.versions().items() if c and v != coll.current}
                res = {"old queries given": coll.search(
                           self.qp, 10, older={v: {self.gv: self.qg, self.mv: self.qm}[v]
                                               for v in live})[1],
                       "new queries only": coll.search(self.qp, 10)[1],
                       "naive merge": coll.index.search(
                           q_new, 10, query_bits=QB,
                           version_queries={v: qspec_q[v] for v in live} or None)[1]}
                parts = []
                for v, c in coll.versions().items():
                    if not c:
                        continue
                    vid = coll.index.ids_of_version(v)
                    sub = bebr.Index(coll.spec, metric="cosine")
                    sub.add(coll.index.get_codes(vid), vid)
                    parts.append(sub.search(qspec_q.get(v, q_new), 100, query_bits=QB)[1])
                res["RRF (k=60)"] = rrf(parts)
                for k, ids in res.items():
                    cur[k][0].append(self.recall(ids))
                    cur[k][1].append(M.negative_flip_rate(pre_ok, self.correct(ids)))
            curves = {k: {"fractions": list(CHAIN_STATES), "values": v, "flips": f,
                          "area": M.curve_area(CHAIN_STATES, v)} for k, (v, f) in cur.items()}
            shutil.rmtree(tmp.parent, ignore_errors=True)
            return base | {"curves": curves, "counts": counts, "r1": self.r1,
                           "upgrade_s": pre["upgrade_s"], "upgrade_rows": pre["upgrade_rows"],
                           "versions_before": pre["versions_before"],
                           "own_calibration": coll._manifest["own_calibration"],
                           "merge_table": coll._manifest.get("merge_calibration", {}),
                           "head_calibration": {v: list(mp.cross_calibration(v))
                                                for v in (self.gv, self.mv)},
                           "head_val": {v: h["val_r10@10"]
                                        for v, h in pre["report"]["heads"].items()}}
        r = self.s.row(self.tag, f"chain r1={self.r1:g}", fn,
                       f"{self.path.name}/{COLLECTION_CODE}")
        self.rows["chain"] = r
        for k, c in r["curves"].items():
            print(f"    chain {k}: R10@10 {np.round(c['values'], 4).tolist()} flips "
                  f"{np.round(c['flips'], 4).tolist()}", flush=True)
        return r


def chain_section(r: dict, tag: str) -> list:
    cs = r["curves"]
    fr = cs["old queries given"]["fractions"]
    out = [f"#### {tag} ({int(tag.split('x')[0]) * int(tag.split('x')[1])} bits/vector)\n",
           f"Before MPNet ships: the collection holds GloVe and MiniLM codes "
           f"({r['versions_before']}; r1 = {r['r1']:g} of its items re-encoded by MiniLM), "
           f"MiniLM current. That system (MiniLM queries, GloVe's own queries given for the "
           f"GloVe items) scores R10@10 **{fmt(r['m_pre'])}** against MPNet's truth "
           f"({fmt(r['m_pre_new_only'])} with MiniLM queries only); one model alone over "
           f"its own codes of the gallery: M(glove,glove) {fmt(r['m_glove_glove'])}, "
           f"M(minilm,minilm) {fmt(r['m_minilm_minilm'])}, M(mpnet,mpnet) "
           f"{fmt(r['m_mpnet_mpnet'])}. MPNet's heads alone: into the GloVe codes "
           + ", ".join(f"{fmt(v)}" for k, v in r.items() if k.startswith("m_mpnet_head_")
                       and "glove" in k) + ", into the MiniLM codes "
           + ", ".join(f"{fmt(v)}" for k, v in r.items() if k.startswith("m_mpnet_head_")
                       and "minilm" in k)
           + f" (each over that model's codes of the whole gallery). `Collection.upgrade` "
           f"to MPNet (two 3-member heads + two own-query calibrations, paired items per "
           f"version {r['upgrade_rows']}): {r['upgrade_s']:.0f} s.\n",
           "Then the gallery is re-encoded by MPNet (fraction r, `backfill_order(random)`, "
           "from both older versions); new (MPNet) queries; flips against the pre-MPNet "
           "system above:\n",
           "| r (MPNet share) | " + " | ".join(f"{f:g}" for f in fr) + " | area |",
           "|---|" + "---:|" * (len(fr) + 1)]
    for k, c in cs.items():
        out.append(f"| R10@10, {k} | " + " | ".join(fmt(v) for v in c["values"])
                   + f" | {fmt(c['area'])} |")
    for k, c in cs.items():
        out.append(f"| flips, {k} | " + " | ".join(f"{v:.3f}" for v in c["flips"]) + " | |")
    g = cs["old queries given"]
    v = np.array(g["values"])
    fl = np.array(g["flips"])[:-1]
    below = {k: bool(np.all(fl < np.array(cs[k]["flips"])[:-1]))
             for k in ("naive merge", "RRF (k=60)")}
    out.append("")
    out.append(f"Older queries given: at or above the pre-MPNet system {fmt(r['m_pre'])} at "
               f"every r: **{'yes' if bool(np.all(v >= r['m_pre'])) else 'no'}**; monotone: "
               f"**{'yes' if bool(np.all(np.diff(v) >= 0)) else 'no'}**; negative flips below "
               f"the naive merge at every r < 1: **{'yes' if below['naive merge'] else 'no'}**,"
               f" below RRF: **{'yes' if below['RRF (k=60)'] else 'no'}** (own-query "
               f"calibrations onto MPNet's scale: "
               + ", ".join(f"{k} {c[0]:.3f} x {c[1]:+.3f}" for k, c in
                           r["own_calibration"].items()) + ").")
    return out


# ---------------------------------------------------------------------------- report
def table(budget_rows: dict, m_oo: float) -> list:
    out = ["| query path | M(new,new) | M(new,old) | criterion | update gain | val M(new,old) | "
           "train s |", "|---|---:|---:|:-:|---:|---:|---:|"]
    ind_nn = budget_rows.get("independent codes alone", {}).get("m_new_new")
    for name, r in budget_rows.items():
        if name == "old":
            continue
        no = r.get("m_new_upgraded", r.get("m_new_old"))
        nn = r.get("m_new_new")
        g = r.get("gain")
        if "adapter" in name and ind_nn is not None:
            g = gain(no, m_oo, ind_nn)
        crit = no > m_oo
        ts = r.get("head_s", r.get("fit_s", r.get("train_s", 0)))
        if "head_s" in r:
            ts = f"{r['train_s']:.0f} + head {r['head_s']:.0f}"
        else:
            ts = f"{ts:.0f}"
        out.append(f"| {name} | {'-' if nn is None else fmt(nn)} | {fmt(no)} | "
                   f"{'yes' if crit else 'no'} | {'-' if g is None else f'{g:.3f}'} | "
                   f"{fmt(r['val_new_old']) if 'val_new_old' in r else '-'} | {ts} |")
    return out


def verdicts(rows: dict, m_oo: float) -> list:
    """Which path beats its simpler alternative, from the rows of one budget."""
    out = []
    ih, ch = rows.get("independent + head"), rows.get("compatible + head")
    if ih and ch:
        out.append(f"- Independent + head vs compatible + head: M(new,old) {fmt(ih['m_new_old'])} "
                   f"vs {fmt(ch['m_new_old'])}, M(new,new) {fmt(ih['m_new_new'])} vs "
                   f"{fmt(ch['m_new_new'])}.")
    up = rows.get("compatible + upgrader (gallery upgraded)")
    if up:
        out.append(f"- Forward upgrader vs leaving the codes old (compatible model's queries): "
                   f"{fmt(up['m_new_upgraded'])} vs {fmt(up['m_new_old'])}: "
                   f"**{'beats' if up['m_new_upgraded'] > up['m_new_old'] else 'loses'}**.")
    ads = {k: v for k, v in rows.items() if "adapter" in k}
    if ih and ads:
        best = max(ads.items(), key=lambda kv: kv[1]["m_new_old"])
        out.append(f"- Head vs the Drift-Adapter baselines over the same old codes: "
                   f"{fmt(ih['m_new_old'])} vs {best[0]} {fmt(best[1]['m_new_old'])}: "
                   f"**{'beats' if ih['m_new_old'] > best[1]['m_new_old'] else 'loses'}**.")
    mem = rows.get("independent + head + query memory (Collection)")
    if mem and ih:
        ch = (mem.get("memory") or {}).get("chosen")
        how = (f"k {ch['k']}, tau {ch['tau']:g}, weight {ch['weight']:g}, chosen on the "
               f"held-out paired rows" if ch else "none fitted: no setting beat the head on "
               "the held-out paired rows")
        line = (f"- Head + query memory (`Collection.search`, new queries only; {how}) vs "
                f"the head alone: {fmt(mem['m_new_old'])} vs {fmt(ih['m_new_old'])}: "
                f"**{'beats' if mem['m_new_old'] > ih['m_new_old'] else 'does not beat'}**")
        if ads:
            best_ad = max(v["m_new_old"] for v in ads.values())
            line += (f"; vs the best Drift-Adapter baseline {fmt(best_ad)}: "
                     f"**{'beats' if mem['m_new_old'] > best_ad else 'loses'}**")
        out.append(line + ".")
    paths = {k: v["m_new_old"] for k, v in rows.items() if "m_new_old" in v and
             ("head" in k or "adapter" in k) and "curves" not in v}
    if paths:
        best = max(paths.items(), key=lambda kv: kv[1])
        out.append(f"- New-query-only criterion M(new,old) > M(old,old) = {fmt(m_oo)}: best path "
                   f"{best[0]} {fmt(best[1])}: **{'met' if best[1] > m_oo else 'not met'}**.")
    return out


def backfill_table(r: dict) -> list:
    cs = r["curves"]
    fr = next(iter(cs.values()))["fractions"]
    out = ["| r | " + " | ".join(f"{f:g}" for f in fr) + " | area |",
           "|---|" + "---:|" * (len(fr) + 1)]
    for k, c in cs.items():
        out.append(f"| R10@10, {k} | " + " | ".join(fmt(v) for v in c["values"])
                   + f" | {fmt(c['area'])} |")
    for k, c in cs.items():
        out.append(f"| flips, {k} | " + " | ".join(f"{v:.3f}" for v in c["flips"]) + " | |")
    g = cs["old queries given"]
    v = np.array(g["values"])
    mono = bool(np.all(np.diff(v) >= 0))
    above = bool(np.all(v >= r["m_old_old"]))
    fl = np.array(g["flips"])[1:-1]  # 0 < r < 1 (at r = 0 every path is the old system)
    below = {k: bool(np.all(fl < np.array(cs[k]["flips"])[1:-1]))
             for k in ("naive merge", "RRF (k=60)")}
    out.append("")
    out.append(f"Old queries given: at or above M(old,old) {fmt(r['m_old_old'])} at every r: "
               f"**{'yes' if above else 'no'}**; monotone: **{'yes' if mono else 'no'}**; "
               f"negative flips below the naive merge at every 0 < r < 1: "
               f"**{'yes' if below['naive merge'] else 'no'}**, below RRF: "
               f"**{'yes' if below['RRF (k=60)'] else 'no'}**, at or below it at every r: "
               f"**{'yes' if np.all(fl <= np.array(cs['naive merge']['flips'])[1:-1]) else 'no'}"
               f"** (" + (f"calibration of the old queries' scores: the merge table "
                          f"fitted by `Collection.calibrate` on held-out paired rows, per r "
                          + ", ".join(f"{e[0]:g}: {e[1]:g} x {e[2]:+g}"
                                      for e in r["merge_table"])
                          + f"; the single logistic fit was {r['cal_old'][0]:.3f} x "
                            f"{r['cal_old'][1]:+.3f}" if r.get("merge_table") else
                          f"calibration of the old queries' scores {r['cal_old'][0]:.3f} x "
                          f"{r['cal_old'][1]:+.3f}, fitted on the held-out training rows")
               + f"; the head's {r['cal_head'][0]:.3f} x {r['cal_head'][1]:+.3f}; via "
               f"{r['via']}).")
    if "orders" in r:
        o = r["orders"]
        out.append("")
        out.append("Backfill order (`Collection.backfill_order`), area under the R10@10 curve: "
                   + "; ".join(f"{k}: uncertainty {fmt(o['uncertainty'][k]['area'])} vs random "
                               f"{fmt(o['random'][k]['area'])}"
                               for k in ("old queries given", "new queries only")) + ".")
        if "m_joint_old" in r:
            out.append(f"Joint query over the old codes (opt-in, `upgrade(joint_query="
                       f"True)`, which the cached upgrade fitted; the curves above use the "
                       f"default, the old queries alone, recalibrated; `Collection.search(older=)`: "
                       f"unit(old query) + {r['joint_weight']:g} x unit(head), the weight "
                       f"chosen on held-out rows, validation {r.get('joint_val') or {}}): "
                       f"R10@10 **{fmt(r['m_joint_old'])}** against M(old,old) "
                       f"{fmt(r['m_old_old'])} for the old queries alone.")
        out.append(f"`Collection.upgrade` (3-member head + calibrations from "
                   f"{r['upgrade_rows']:,} paired items): {r['upgrade_s']:.0f} s.")
    return out


PARTS = {"a": "independent new model + head", "b": "train_compatible codes alone",
         "c": "train_compatible + head", "d": "forward upgrader", "e": "Drift-Adapter baselines",
         "f": "hot refresh", "r": "research variants"}

SOURCES = {
    "extra": f"the {N_EXTRA:,} next GloVe words (outside the benchmark)",
    "gallery": f"a random {N_EXTRA:,} of the gallery words, removed from the gallery",
    "first40k": (f"**reduced protocol**: the first {FIRST:,} benchmark words only (MPNet of all "
                 f"100k takes hours on this shared CPU): {NQ:,} queries "
                 f"(`query_split({FIRST}, {NQ}, seed=0)`), the other {FIRST - NQ:,} split "
                 f"(seeded) into a {FIRST_TRAIN:,}-word training sample and a "
                 f"{FIRST - NQ - FIRST_TRAIN:,}-word gallery"),
}


def run(args):
    lines = []
    parts = set(args.parts.split(","))
    for up in args.upgrades.split(","):
        if up == CHAIN:
            lines.append("### glove -> minilm -> mpnet (chain)\n")
            lines.append(Chain.__doc__.split("\n\n", 1)[1].replace("\n    ", " ").strip()
                         + "\n")
            for b in args.budgets.split(","):
                dim, bits = (int(v) for v in b.lower().split("x"))
                try:
                    lines.extend(chain_section(Chain(dim, bits, args).run(), b))
                except Skip as e:
                    lines.append(f"#### {b}\n")
                    lines.append(f"Not measured (nothing stored: {e}).")
                lines.append("")
            continue
        old_name, new_name = UPGRADES[up]
        source = args.train_source
        if source == "auto":
            # MiniLM of the extra words is cheap to embed, MPNet only from a cache; without
            # MPNet of all 100k words, the first-40k protocol
            source = "extra" if new_name != "mpnet" or has_cached(
                new_name, N_BENCH, N_BENCH + N_EXTRA) else "gallery" if has_cached(
                new_name, 0, N_BENCH) else "first40k"
        nb = FIRST if source == "first40k" else N_BENCH
        if new_name == "mpnet" and not ALLOW_MPNET and not has_cached("mpnet", 0, nb):
            msg = (f"### {old_name} -> {new_name}\n\nNot measured in this run: the MPNet "
                   f"floats of the first {nb:,} benchmark words are not cached yet "
                   f"(`bebr.datasets.mpnet_embeddings`; hours on the shared 2-core CPU); "
                   f"rerun the command once they are.\n")
            print(msg, flush=True)
            lines.append(msg)
            if "old" in parts:  # train the old models meanwhile (they need no new floats)
                pre = Data(up, source, need_new=False)
                st = Store(up, source)
                for b in args.budgets.split(","):
                    dim, bits = (int(v) for v in b.lower().split("x"))
                    Budget.old_model(pre, st, dim, bits, args)
            continue
        data = Data(up, source)
        store = Store(up, source)
        ov = store.row("floats", "overlap", lambda: {"overlap": data.overlap()})["overlap"]
        lines.append(f"### {old_name} -> {new_name}\n")
        lines.append(f"Old {old_name}, new {new_name}; float top-10 overlap {ov:.2f}. "
                     f"Training sample: {SOURCES[source]}"
                     f" ({len(data.fit):,} fit rows, {len(data.val):,} held out as research "
                     f"validation); gallery {data.n_gallery:,} words, {NQ:,} queries.\n")
        for b in args.budgets.split(","):
            dim, bits = (int(v) for v in b.lower().split("x"))
            try:
                bud = Budget(data, store, dim, bits, args)
            except Skip as e:  # --cached-only and this budget's old model was never trained
                lines.append(f"#### {dim}x{bits} ({dim * bits} bits/vector)\n")
                lines.append(f"Not measured (nothing stored: {e}).\n")
                continue
            bud.base()
            steps = [("e", bud.adapter_rows),  # cheap: before the models
                     ("a", lambda: bud.new_row("independent")),
                     ("a", lambda: bud.head_row("independent")),
                     ("bc", lambda: bud.new_row("compatible")),
                     ("c", lambda: bud.head_row("compatible")),
                     ("d", lambda: bud.upgrader_row("compatible")),
                     ("f", lambda: bud.backfill_row("independent")),
                     ("f", bud.collection_row),
                     ("r", lambda: bud.research_row("independent"))]
            for keys, step in steps:
                if set(keys) & parts:
                    try:
                        step()
                    except Skip as e:
                        print(f"  (not stored, skipped: {e})", flush=True)
                        parts.discard(keys[0]) if keys != "bc" else None
            lines.append(f"#### {dim}x{bits} ({dim * bits} bits/vector)\n")
            lines.append(f"M(old,old) = {fmt(bud.m_oo)} (old model's {QB}-bit queries over "
                         f"the old codes; research validation {fmt(bud.val_oo)}).\n")
            rank = ["old", "independent codes alone", "independent + head",
                    "independent + head + query memory (Collection)",
                    "LS adapter + old query encoder", "MLP adapter + old query encoder",
                    "compatible codes alone", "compatible + head"]
            main_rows = {k: bud.rows[k] for k in sorted(
                (k for k, v in bud.rows.items() if "curves" not in v and "research" not in k),
                key=lambda k: rank.index(k) if k in rank else len(rank))}
            lines.extend(table(main_rows, bud.m_oo))
            lines.append("")
            lines.extend(verdicts(main_rows, bud.m_oo))
            lines.append("")
            for k, v in bud.rows.items():
                if "research" in k:
                    lines.append(f"Research variants of the new-query path ({k.split(' ')[0]} "
                                 f"model's head; {len(data.val):,} held-out training rows as queries, "
                                 f"never the reported ones; A: over the old codes of the "
                                 f"{len(data.fit):,} fit rows, B: memory variants, the fit "
                                 f"rows halved into a memory pool and a gallery):\n")
                    lines.append("| variant | val R10@10 |")
                    lines.append("|---|---:|")
                    for vk, vv in v.items():
                        if vk not in ("code", "val_old_old", "dep"):
                            lines.append(f"| {vk} | {fmt(vv)} |")
                    lines.append("")
                if "curves" in v:
                    lines.append(f"Hot refresh, {k} (new queries; fraction r of "
                                 f"the gallery re-encoded, nested: "
                                 f"{'Collection.backfill_order(random)' if 'Collection' in k else 'metrics.backfill_subset'}):\n")
                    lines.extend(backfill_table(v))
                    lines.append("")
    missing = [f"{k} ({v})" for k, v in PARTS.items() if k not in parts]
    if missing:
        lines.append("Not in this run (parts left out by `--parts`): " + "; ".join(missing) + ".")
        lines.append("")
    print("\n".join(lines))
    return lines


SECTION = "<!-- section: upgrade (tools/eval_upgrade.py) -->"
HEADING = ("## 3b. Realistic upgrade: MiniLM -> MPNet (and GloVe -> MiniLM, and the chain "
           "GloVe -> MiniLM -> MPNet)")


def write_section(cmd: str, body: list) -> None:
    """Replace (or insert before section 4) the BENCHMARKS.md section of this script, and
    copy the results JSON to docs/upgrade_eval_results.json."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text()
    intro = (f"{SECTION}\n{HEADING}\n\nCommand: `{cmd}` (every model, head and adapter cached "
             f"under the data dir, rows in `<data dir>/upgrade_eval/results.json`, copied to "
             f"`docs/upgrade_eval_results.json`; CPU, 2 cores shared with other jobs; torch "
             f"threads {THREADS}). Data: the {N_BENCH:,} words of section 2, {NQ:,} query "
             f"words (`query_split(seed=0)`), truth the NEW model's exact float top-10 over the "
             f"gallery, R10@10, `bebr.Index` SDC cosine, {QB}-bit query codes everywhere. "
             f"No query or gallery word is in any training sample (of models, heads, adapters, "
             f"calibrations) unless the upgrade says so. M(new,old): new query floats through "
             f"the row's query path over the OLD model's stored gallery codes; criterion "
             f"M(new,old) > M(old,old); update gain (M(new,old) - M(old,old)) / "
             f"(M(new,new) - M(old,old)) with the row's model's M(new,new) (adapters: the "
             f"independent model's). Negative flip: top-1 in the truth under old -> old and not "
             f"under the new system. Train s: seconds on this machine.\n\n")
    block = intro + "\n".join(body).rstrip() + "\n\n"
    if SECTION in text:
        a = text.index(SECTION)
        b = text.find("<!-- section:", a + len(SECTION))
        text = text[:a] + block + (text[b:] if b >= 0 else "")
    else:
        b = text.index("<!-- section: jobs")
        text = text[:b] + block + text[b:]
    atomic_write_bytes(path, text.encode())
    res = ds.data_dir() / STORE_DIR / "results.json"
    if res.exists():
        atomic_write_bytes(ROOT / "docs" / "upgrade_eval_results.json", res.read_bytes())


def main(argv=None):
    global ALLOW_MPNET, N_BENCH, N_EXTRA, NQ, VAL, STORE_DIR, CACHED_ONLY, THREADS
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--upgrades", default="minilm-mpnet,glove-minilm")
    ap.add_argument("--budgets", default="128x2,256x2")
    ap.add_argument("--parts", default="a,e,b,c,d,f",
                    help="a: independent + head, e: adapters, b: compatible codes, "
                         "c: compatible + head, d: upgrader, f: hot-refresh backfill, "
                         "r: research variants on the validation rows")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--new-epochs", type=int, default=0,
                    help="epochs of the independent new model (0: --epochs)")
    ap.add_argument("--upgrade-epochs", type=int, default=6)
    ap.add_argument("--head-epochs", type=int, default=0,
                    help="epochs of each head member (0: train_cross_queries' default)")
    ap.add_argument("--head-max-s", type=float, default=0,
                    help="bound on a head's training, all members together (Collection."
                         "upgrade(max_time_s=)); 0: none")
    ap.add_argument("--chain-reencoded", type=float, default=0.5,
                    help=f"{CHAIN}: share of the items re-encoded by MiniLM when MPNet ships")
    ap.add_argument("--train-source", default="auto", choices=("auto", "extra", "gallery"))
    ap.add_argument("--threads", type=int, default=THREADS,
                    help="torch threads of training and heads (1 while others share the CPU)")
    ap.add_argument("--write", action="store_true")
    ap.add_argument("--cached-only", action="store_true",
                    help="report only what is stored (train and measure nothing new)")
    ap.add_argument("--embed-mpnet", action="store_true",
                    help="compute missing MPNet floats (slow on CPU; cached afterwards)")
    ap.add_argument("--dev", type=int, default=0,
                    help="development run on the first N words (N/2 training words, N/10 "
                         "queries), stored apart (upgrade_eval_dev)")
    args = ap.parse_args(argv)
    THREADS = args.threads
    ALLOW_MPNET = args.embed_mpnet
    CACHED_ONLY = args.cached_only
    if args.dev:
        N_BENCH, N_EXTRA, NQ, VAL = args.dev, args.dev // 2, args.dev // 10, args.dev // 20
        STORE_DIR = f"upgrade_eval_dev{args.dev}"
    torch.set_num_threads(THREADS)
    lines = run(args)
    if args.write:
        cmd = "python tools/eval_upgrade.py " + " ".join(argv if argv is not None else sys.argv[1:])
        write_section(cmd.strip(), lines)


if __name__ == "__main__":
    main()
