"""Offline jobs over shards: encode float embeddings into code shards, upgrade code shards.

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
number across all inputs in order (input 0 rows first).
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from .versions import version_tag  # noqa: F401  (re-exported: jobs' tag of a version)
from .fileio import CorruptFileError, sha256_file
from .io.codeshards import CodeShards, write_code_shard
from .io.inputs import open_inputs
from .io.manifest import MANIFEST_NAME, Manifest, ShardEntry
from .io.readers import open_source
from .io.validate import check_rows

__all__ = ["JobMismatchError", "JobResult", "version_tag", "encode_shards", "upgrade_shards",
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
    """Load a saved model (``bebr.Binarizer.load``, or ``bebr.compat.CodeUpgrader.load`` for
    ``kind="upgrader"``); cached per process so a worker loads each model once."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such model file")
    key = (str(Path(path).resolve()), model_digest(path), kind)  # rewritten: reload
    if key not in _MODEL_CACHE:
        if kind == "binarizer":
            from . import model as _model

            _MODEL_CACHE[key] = _model.Binarizer.load(path)
        else:
            from .compat import CodeUpgrader

            _MODEL_CACHE[key] = CodeUpgrader.load(path)
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
    import torch

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
    model = model if model is not None else load_model(task.model_path)
    src = open_source(task.source_path, column=task.column, id_column=task.id_column)
    u = task.unit
    codes, ids, skipped = [], [], 0
    with _torch_threads(task.threads):
        for ch in src.read(u.start, u.stop, task.chunk_rows):
            keep, bad = check_rows(ch.x, where=str(src.path), first_row=ch.offset,
                                   skip_bad=task.skip_bad)
            x = ch.x
            chunk_ids = ch.ids if ch.ids is not None else \
                np.arange(u.id_base + ch.offset, u.id_base + ch.offset + x.shape[0],
                          dtype=np.int64)
            if keep is not None:
                x, chunk_ids, skipped = x[keep], chunk_ids[keep], skipped + bad
            if x.shape[0]:
                codes.append(np.asarray(model.encode(x, batch_size=ENCODE_BATCH)))
                ids.append(chunk_ids)
            if on_chunk is not None:
                on_chunk(ch.x.shape[0])
    spec = model.spec
    c = np.concatenate(codes) if codes else np.empty((0, spec.code_bytes), np.uint8)
    i = np.concatenate(ids) if ids else np.empty(0, np.int64)
    return write_code_shard(task.out_dir, u.index, c, i, source=u.source, start=u.start,
                            stop=u.stop, skipped=skipped)


@dataclass(frozen=True)
class UpgradeTask:
    """One upgrade unit: old shard ``unit.index`` of ``in_dir`` -> new shard in ``out_dir``."""

    model_path: str
    in_dir: str
    codes_name: str
    ids_name: str
    count: int
    code_bytes: int
    unit: Unit
    out_dir: str
    chunk_rows: int
    threads: int


def _upgrade_unit(task: UpgradeTask, model=None,
                  on_chunk: Optional[Callable[[int], None]] = None) -> ShardEntry:
    model = model if model is not None else load_model(task.model_path, "upgrader")
    old = np.load(Path(task.in_dir) / task.codes_name, mmap_mode="r")
    old_ids = np.load(Path(task.in_dir) / task.ids_name, mmap_mode="r")
    out = []
    with _torch_threads(task.threads):
        for a in range(0, task.count, task.chunk_rows):
            b = min(a + task.chunk_rows, task.count)
            out.append(np.asarray(model.upgrade(np.array(old[a:b]), batch_size=task.chunk_rows)))
            if on_chunk is not None:
                on_chunk(b - a)
    c = np.concatenate(out) if out else np.empty((0, model.out_spec.code_bytes), np.uint8)
    return write_code_shard(task.out_dir, task.unit.index, c, np.asarray(old_ids),
                            source=task.unit.source, start=0, stop=task.count)


def _run_task(task) -> ShardEntry:
    """Worker entry point (process pool and Ray): run one task by its type."""
    if isinstance(task, EncodeTask):
        return _encode_unit(task)
    return _upgrade_unit(task)


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
    for what, a, b in (("model version", old.model_version, fresh.model_version),
                       ("code spec", old.spec, fresh.spec), ("job settings", old.job, fresh.job),
                       ("inputs", old.inputs, fresh.inputs), ("plan", old.units, fresh.units)):
        if a != b:
            raise JobMismatchError(
                f"{out_dir} holds a different job ({what} differ: {_short(a)} vs "
                f"{_short(b)}); use another output directory or --overwrite")
    done = {}
    for i, e in old.shards.items():
        if old.verify_entry(out_dir, e) is None:
            done[i] = e
    fresh.shards = done
    fresh.save(out_dir)
    return fresh, len(done)


def _short(v: Any, n: int = 80) -> str:
    s = repr(v)
    return s if len(s) <= n else s[:n - 3] + "..."


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="vec", unit_scale=True, disable=not enabled,
                dynamic_ncols=True, file=sys.stderr, mininterval=0.5)


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
                run = _encode_unit if isinstance(t, EncodeTask) else _upgrade_unit
                record(run(t, model=model, on_chunk=bar.update))
        elif engine == "local":
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"))
            try:
                futs = {pool.submit(_run_task, t): r for t, r in zip(tasks, rows)}
                for f in as_completed(futs):
                    record(f.result())
                    bar.update(futs[f])
            finally:  # on an error, drop the queued shards instead of running them all
                pool.shutdown(wait=True, cancel_futures=True)
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
        model_obj = load_model(model_path)
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
    return _execute(tasks, [u.stop - u.start for u in todo], manifest, out_dir, engine=engine,
                    workers=workers, address=address, progress=progress, desc="encode",
                    model=model_obj, ray_cpus=ray_cpus, resumed=resumed)


def upgrade_shards(upgrader: PathLike, in_dir: PathLike, out_dir: PathLike, *,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS, engine: str = "local",
                   address: Optional[str] = None, workers: int = 1, threads: int = 1,
                   progress: bool = True, overwrite: bool = False,
                   ray_cpus: Optional[int] = None) -> JobResult:
    """Upgrade a complete code-shard directory to a new model version with a saved upgrader
    (old codes -> new codes, no floats needed); one output shard per input shard, same ids."""
    src = CodeShards(in_dir)
    model_path = str(Path(upgrader).resolve())
    up = load_model(model_path, "upgrader")
    if up.from_version and up.from_version != str(src.model_version):
        raise ValueError(f"{in_dir}: codes are model version {src.model_version!r}, but the "
                         f"upgrader converts version {up.from_version!r}")
    if up.in_spec != src.spec:
        raise ValueError(f"{in_dir}: codes are {src.spec}, the upgrader expects {up.in_spec}")
    if not up.to_version:
        raise ValueError(f"{upgrader}: the upgrader does not name the version it makes")
    m = src.manifest
    units = [Unit(i, i, 0, m.shards[i].count, 0) for i in range(m.units)]
    job = {"kind": "upgrade", "chunk_rows": chunk_rows, "model_sha256": model_digest(model_path),
           "from_version": m.model_version}
    inputs = [{"path": str((src.directory / m.shards[i].codes).resolve()),
               "sha256": m.shards[i].sha256, "rows": m.shards[i].count}
              for i in range(m.units)]
    fresh = Manifest(model_version=up.to_version, spec=up.out_spec, job=job, inputs=inputs,
                     units=len(units))
    out_dir = Path(out_dir)
    manifest, resumed = _prepare(out_dir, fresh, overwrite)
    todo = [u for u in units if u.index not in manifest.shards]
    tasks = [UpgradeTask(model_path, str(src.directory.resolve()), m.shards[u.index].codes,
                         m.shards[u.index].ids, m.shards[u.index].count, src.spec.code_bytes,
                         u, str(out_dir.resolve()), chunk_rows, threads) for u in todo]
    return _execute(tasks, [u.stop for u in todo], manifest, out_dir, engine=engine,
                    workers=workers, address=address, progress=progress, desc="upgrade",
                    model=up, ray_cpus=ray_cpus, resumed=resumed)


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
