"""Offline jobs over shards: encode float embeddings into code shards.

A job is cut into *units* before it starts: each input shard is split into row ranges of at
most ``shard_rows`` rows, and unit ``u`` becomes output shard ``u`` (``codes-{u:05d}.npy``).
A unit reads its rows in chunks of exactly ``chunk_rows`` rows, encodes each chunk with the
model under ``torch.inference_mode`` with ``threads`` torch threads, and writes its shard
atomically; the driver then records the shard in ``manifest.json`` (atomically). The plan,
the chunking and the model are the same for every engine, so the local engine (in process or
N worker processes) and the Ray engine write byte-identical directories.

Resuming: a rerun with the same model, inputs and job settings verifies the shards the
manifest lists (SHA-256), skips them, and runs only the rest. A different job in the same
directory is refused (``JobMismatchError``) unless ``overwrite=True``.

Ids: an input with an id column (parquet) keeps its ids; otherwise an item's id is its row
number across all inputs in order (input 0 rows first). Ids an index would refuse (negative,
the sentinel, duplicates within or across shards) are refused naming the input row
(bebr/io/idcheck.py).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .versions import version_tag  # noqa: F401  (re-exported: jobs' tag of a version)
from .fileio import CorruptFileError, sha256_file
from .io.codeshards import write_code_shard
from .io.inputs import open_inputs
from .io.manifest import MANIFEST_NAME, Manifest, ShardEntry
from .io.readers import open_source
from .io.validate import check_rows
from .io.idcheck import check_ids, find_duplicate_id, row_of_id

__all__ = ["JobMismatchError", "JobResult", "version_tag", "encode_shards",
           "load_model", "plan_units",
           "DEFAULT_CHUNK_ROWS", "DEFAULT_SHARD_ROWS"]

DEFAULT_CHUNK_ROWS = 65536
DEFAULT_SHARD_ROWS = 1 << 20
ENCODE_BATCH = 4096  # rows per model forward pass inside a chunk (bounds activation memory)

PathLike = Union[str, "os.PathLike[str]"]


class JobMismatchError(ValueError):
    """The output directory holds a different job (other model, inputs or settings)."""


@dataclass
class JobResult:
    """What a job did: the final manifest, shards found complete and skipped (``resumed``),
    shards written by this run, and wall-clock seconds."""

    manifest: "Manifest"
    out_dir: Path
    resumed: int
    written: int
    seconds: float


# --------------------------------------------------------------------------- models
_MODEL_CACHE: Dict[Tuple[str, str, str], Any] = {}


def load_model(path: PathLike, kind: str = "binarizer"):
    """Load a saved model (``bebr.Binarizer.load``, or the torch-free ``bebr.Encoder.load``
    for ``kind="encoder"``); cached per process so a worker loads each model once."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such model file")
    key = (str(Path(path).resolve()), model_digest(path), kind)  # rewritten: reload
    if key not in _MODEL_CACHE:
        if kind == "encoder":
            from .encoder import Encoder

            _MODEL_CACHE[key] = Encoder.load(path)
        elif kind == "binarizer":
            from . import model as _model

            _MODEL_CACHE[key] = _model.Binarizer.load(path)
        else:
            raise ValueError(f"unknown model kind {kind!r} (expected 'binarizer' or 'encoder')")
    return _MODEL_CACHE[key]


def model_digest(path: PathLike) -> str:
    """SHA-256 identifying a saved model: of its ``config.json`` (which holds the weights'
    checksum) for a model directory, else of the file."""
    p = Path(path)
    return sha256_file(p / "config.json" if p.is_dir() else p)


def model_input_dim(model) -> Optional[int]:
    """The float input dimension a model expects, if it says."""
    for name in ("input_dim", "in_dim", "d_in"):
        v = getattr(model, name, None)
        if isinstance(v, (int, np.integer)):
            return int(v)
    return None


@contextmanager
def _torch_threads(threads: int):
    try:
        import torch
    except ImportError:  # serving without torch: the Encoder runs its own threads
        torch = None
    if torch is None:
        yield
        return

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class Unit:
    """Output shard ``index``: rows ``[start, stop)`` of input ``source``; ``id_base`` is the
    id of the source's row 0 when the source has no id column."""

    index: int
    source: int
    start: int
    stop: int
    id_base: int


def plan_units(rows: Sequence[int], shard_rows: int) -> List[Unit]:
    """Cut inputs with ``rows[i]`` rows into units of at most ``shard_rows`` rows, in order.
    Empty inputs get no unit."""
    if shard_rows < 1:
        raise ValueError(f"shard_rows must be >= 1, got {shard_rows}")
    units, base = [], 0
    for s, n in enumerate(rows):
        for a in range(0, n, shard_rows):
            units.append(Unit(len(units), s, a, min(a + shard_rows, n), base))
        base += n
    return units


# --------------------------------------------------------------------------- unit work
@dataclass(frozen=True)
class EncodeTask:
    """Everything a worker needs to run one encode unit (picklable, no torch objects)."""

    model_path: str
    source_path: str
    column: Optional[str]
    id_column: Optional[str]
    unit: Unit
    out_dir: str
    chunk_rows: int
    skip_bad: bool
    threads: int


def _encode_unit(task: EncodeTask, model=None,
                 on_chunk: Optional[Callable[[int], None]] = None) -> ShardEntry:
    model = model if model is not None else load_model(task.model_path, "encoder")
    src = open_source(task.source_path, column=task.column, id_column=task.id_column)
    u = task.unit
    codes, ids, skipped, rows = [], [], 0, []
    with _torch_threads(task.threads):
        for ch in src.read(u.start, u.stop, task.chunk_rows):
            keep, bad = check_rows(ch.x, where=str(src.path), first_row=ch.offset,
                                   skip_bad=task.skip_bad)
            x = ch.x
            chunk_ids = ch.ids if ch.ids is not None else \
                np.arange(u.id_base + ch.offset, u.id_base + ch.offset + x.shape[0],
                          dtype=np.int64)
            chunk_rows = np.arange(ch.offset, ch.offset + x.shape[0])
            if keep is not None:
                x, chunk_ids, skipped = x[keep], chunk_ids[keep], skipped + bad
                chunk_rows = chunk_rows[keep]
            if ch.ids is not None:  # ids of an id column: checked before anything is encoded
                check_ids(chunk_ids, chunk_rows, f"{src.path} (id column {src.id_column!r})")
                rows.append(chunk_rows)
            if x.shape[0]:
                codes.append(np.asarray(model.encode(x, batch_size=ENCODE_BATCH)))
                ids.append(chunk_ids)
            if on_chunk is not None:
                on_chunk(ch.x.shape[0])
    spec = model.spec
    c = np.concatenate(codes) if codes else np.empty((0, spec.code_bytes), np.uint8)
    i = np.concatenate(ids) if ids else np.empty(0, np.int64)
    if len(rows) > 1:  # duplicates across chunks of the shard
        check_ids(i, np.concatenate(rows), f"{src.path} (id column {src.id_column!r})")
    return write_code_shard(task.out_dir, u.index, c, i, source=u.source, start=u.start,
                            stop=u.stop, skipped=skipped)


def _run_task(task) -> ShardEntry:
    """Worker entry point (process pool and Ray): run one encode task."""
    return _encode_unit(task)


# --------------------------------------------------------------------------- driver
def _clean_temp_files(out_dir: Path) -> None:
    for p in out_dir.glob(".*.tmp"):
        p.unlink(missing_ok=True)


def _prepare(out_dir: Path, fresh: Manifest, overwrite: bool) -> Tuple[Manifest, int]:
    """Open or start the job's manifest; returns it and the number of verified done shards."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean_temp_files(out_dir)
    mpath = out_dir / MANIFEST_NAME
    if overwrite:
        mpath.unlink(missing_ok=True)
        for p in list(out_dir.glob("codes-*.npy")) + list(out_dir.glob("ids-*.npy")):
            p.unlink()
    if not mpath.exists():
        fresh.save(out_dir)
        return fresh, 0
    try:
        old = Manifest.load(out_dir)
    except CorruptFileError as e:
        raise CorruptFileError(f"{e}; pass --overwrite to start the job again") from None
    # skip_bad may change between runs (the suggested rerun of a job that met a NaN row):
    # a shard that dropped no row is the same either way
    same_job = {k: v for k, v in old.job.items() if k != "skip_bad"}
    for what, a, b in (("model version", old.model_version, fresh.model_version),
                       ("code spec", old.spec, fresh.spec),
                       ("job settings", same_job,
                        {k: v for k, v in fresh.job.items() if k != "skip_bad"}),
                       ("inputs", old.inputs, fresh.inputs), ("plan", old.units, fresh.units)):
        if a != b:
            raise JobMismatchError(
                f"{out_dir} holds a different job ({what} differ: {_difference(a, b)}); use "
                "another output directory or --overwrite")
    done = {}
    for i, e in old.shards.items():
        if e.skipped and not fresh.job.get("skip_bad"):
            continue  # dropped rows this run would refuse
        if old.verify_entry(out_dir, e) is None:
            done[i] = e
    fresh.shards = done
    fresh.save(out_dir)
    return fresh, len(done)


def _difference(a: Any, b: Any) -> str:
    """What differs between two values of a job, old first: for dicts (and lists of dicts)
    only the differing keys."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        return ", ".join(f"{k}: {_short(a.get(k), 60)} vs {_short(b.get(k), 60)}"
                         for k in keys[:4]) + (" ..." if len(keys) > 4 else "")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            if x != y:
                return f"[{i}] {_difference(x, y)}"
    if isinstance(a, list) and isinstance(b, list):
        return f"{len(a)} vs {len(b)} entries"
    return f"{_short(a)} vs {_short(b)}"


def _short(v: Any, n: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= n else s[:n - 3] + "..."


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not enabled,
                dynamic_ncols=True, file=sys.stderr, mininterval=0.5)


# --------------------------------------------------------------------------- worker processes
def _watch_parent(parent_pid: int) -> None:
    """Worker initializer: die with the parent. Linux: the kernel sends SIGKILL when the
    parent exits (prctl PR_SET_PDEATHSIG); everywhere: a daemon thread polls the parent pid.
    A parent already gone by now (a race with the prctl call) ends the worker at once."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            import signal

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # no libc prctl: the polling thread still runs
            pass
    if os.getppid() != parent_pid:
        os._exit(1)

    def poll() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                os._exit(1)

    import threading

    threading.Thread(target=poll, name="bebr-parent-watch", daemon=True).start()


@contextmanager
def _worker_pool(workers: int):
    """A spawn-context process pool whose workers die with this process (:func:`_watch_parent`).
    While it runs in the main thread, SIGTERM (default action) raises SystemExit here so the
    workers are terminated instead of left running; on any error the queued shards are dropped
    and the running ones terminated."""
    import multiprocessing as mp
    import signal
    import threading
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                               initializer=_watch_parent, initargs=(os.getpid(),))
    restore = None
    if threading.current_thread() is threading.main_thread() \
            and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        def on_term(signum, frame):
            raise SystemExit(128 + signum)

        restore = signal.signal(signal.SIGTERM, on_term)
    ok = False
    try:
        yield pool
        ok = True
    finally:
        if restore is not None:
            signal.signal(signal.SIGTERM, restore)
        if not ok:
            for proc in list((getattr(pool, "_processes", None) or {}).values()):
                proc.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _execute(tasks: List[Any], rows: List[int], manifest: Manifest, out_dir: Path, *,
             engine: str, workers: int, address: Optional[str], progress: bool,
             desc: str, model=None, ray_cpus: Optional[int] = None,
             resumed: int = 0) -> JobResult:
    """Run ``tasks`` (rows[i] input rows each) on the engine, recording each finished shard."""
    bar = _progress(sum(rows), desc, progress)
    t0 = time.perf_counter()

    def record(entry: ShardEntry) -> None:
        manifest.shards[entry.index] = entry
        manifest.save(out_dir)

    try:
        if engine == "local" and workers <= 1:
            for t in tasks:
                record(_encode_unit(t, model=model, on_chunk=bar.update))
        elif engine == "local":
            from concurrent.futures import as_completed

            with _worker_pool(workers) as pool:
                futs = {pool.submit(_run_task, t): r for t, r in zip(tasks, rows)}
                for f in as_completed(futs):
                    record(f.result())
                    bar.update(futs[f])
        elif engine == "ray":
            from .raytools import run_tasks_ray

            for entry, r in run_tasks_ray(tasks, rows, _run_task, address=address,
                                          num_cpus=ray_cpus):
                record(entry)
                bar.update(r)
        else:
            raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    finally:
        bar.close()
    return JobResult(manifest, out_dir, resumed, len(tasks), time.perf_counter() - t0)


def encode_shards(model: Union[PathLike, Any], inputs, out_dir: PathLike, *,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS, shard_rows: int = DEFAULT_SHARD_ROWS,
                  skip_bad: bool = False, engine: str = "local", address: Optional[str] = None,
                  workers: int = 1, threads: int = 1, progress: bool = True,
                  column: Optional[str] = None, id_column: Optional[str] = None,
                  overwrite: bool = False, ray_cpus: Optional[int] = None) -> JobResult:
    """Encode float embedding shards into a code-shard directory (see ``JobResult``).

    ``model`` is a saved Binarizer file (required for ``workers > 1`` and Ray: each worker
    loads it from the path) or a loaded Binarizer (in-process local engine only).
    ``inputs``: a file, directory, glob or list of them (.npy, .fvecs, .bvecs, parquet).
    ``ray_cpus``: CPUs of the local Ray instance started when no ``address`` is given and
    none is running. Raises BadRowError on a NaN/inf row unless ``skip_bad`` (then they are
    dropped and counted in the manifest), InputError on empty or inconsistent input.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if workers < 1 or threads < 1:
        raise ValueError(f"workers and threads must be >= 1, got {workers}, {threads}")
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if isinstance(model, (str, os.PathLike)):
        model_path = str(Path(model).resolve())
        model_obj = load_model(model_path, "encoder")
        model_sha = model_digest(model_path)
    else:
        if engine != "local" or workers > 1:
            raise ValueError("workers > 1 and the Ray engine load the model in each worker: "
                             "pass the saved model file's path, not a model object")
        model_path, model_obj, model_sha = "", model, None
    sources = open_inputs(inputs, column=column, id_column=id_column,
                          dim=model_input_dim(model_obj))
    out_dir = Path(out_dir)
    units = plan_units([s.n for s in sources], shard_rows)
    job = {"kind": "encode", "chunk_rows": chunk_rows, "shard_rows": shard_rows,
           "skip_bad": bool(skip_bad), "model_sha256": model_sha}
    fresh = Manifest(model_version=_version_of(model_obj), spec=model_obj.spec, job=job,
                     inputs=[_abs_fingerprint(s) for s in sources], units=len(units))
    manifest, resumed = _prepare(out_dir, fresh, overwrite)
    todo = [u for u in units if u.index not in manifest.shards]
    tasks = [EncodeTask(model_path, str(sources[u.source].path.resolve()), column, id_column,
                        u, str(out_dir.resolve()), chunk_rows, bool(skip_bad), threads)
             for u in todo]
    res = _execute(tasks, [u.stop - u.start for u in todo], manifest, out_dir, engine=engine,
                   workers=workers, address=address, progress=progress, desc="encode",
                   model=model_obj, ray_cpus=ray_cpus, resumed=resumed)
    if any(s.has_ids for s in sources) and manifest.units > 1:
        _check_unique_ids(manifest, out_dir, sources)
    return res


def _check_unique_ids(manifest: Manifest, out_dir: Path, sources) -> None:
    """Refuse an id held by two shards (each shard is checked as it is written): the later
    shard leaves the manifest, so the directory is incomplete, and the error names both
    input rows. Bounded memory (bebr/io/idcheck.py)."""
    entries = [manifest.shards[i] for i in range(manifest.units)]
    found = find_duplicate_id([out_dir / e.ids for e in entries])
    if found is None:
        return
    value, i, j = found
    where = []
    for e in (entries[i], entries[j]):
        src = sources[e.source]
        where.append(f"{src.path} row {row_of_id(src, e.start, e.stop, value)}")
    del manifest.shards[entries[j].index]
    manifest.save(out_dir)
    raise ValueError(f"id {value} is given twice: {where[0]} and {where[1]}; ids must be "
                     "unique (the job is left incomplete)")


def _version_of(model) -> Any:
    v = getattr(model, "version", None)
    if v is None:
        raise ValueError("model has no version id (expected a bebr.Binarizer)")
    return v if isinstance(v, (int, str)) else str(v)


def _abs_fingerprint(src) -> dict:
    fp = src.fingerprint()
    fp["path"] = str(Path(fp["path"]).resolve())
    fp["has_ids"] = bool(src.has_ids)
    return fp
