"""The ``bebr`` command line: train, encode, index, collection, search, eval, bench, demo.

Every subcommand has ``--help``. Errors in the input (missing files, wrong dims, NaN/inf rows,
empty input, corrupted shards, manifests or models, version or code-spec mismatches) print one
line ``bebr: error: ...`` on stderr and exit with status 1; ``--debug`` shows the traceback.
Usage errors (unknown options, missing arguments, out-of-range values such as ``--dim 0``)
print one line ``bebr CMD: error: ...`` and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .codes import MAX_BITS, MAX_DIM

__all__ = ["main", "build_parser"]

FORMATS_HELP = """\
input formats (embeddings):
  .npy              2-D numeric array (n, dim), read chunk by chunk (never whole)
  .fvecs / .bvecs   ANN-benchmark vector files (int32 dim header + float32 / uint8 values)
  .parquet / .pq    a list<float> or fixed_size_list<float> column (--column, default: the
                    first list column) and an optional integer id column (--id-column,
                    default: a column named "id")
  DIR or GLOB       every such file in a directory, or matching a quoted glob; sorted by name,
                    each file one shard
Without an id column an item's id is its row number across all inputs, in order."""

SHARDS_HELP = """\
code shards (output of encode; docs/FORMAT.md, "Code shards and manifest"): a
directory with codes-NNNNN.npy (uint8 packed codes), ids-NNNNN.npy (int64) and
manifest.json (model version, code spec, per-shard counts and SHA-256 checksums)."""


class CliError(Exception):
    """A usage error detected by the CLI itself (printed as ``bebr: error: ...``)."""


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line: ``bebr CMD: error: ... (see bebr CMD --help)``,
    exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} "
                     "--help)\n")


def _int_range(lo: int, hi: Optional[int] = None):
    """argparse type: an int in ``[lo, hi]`` (no upper bound if ``hi`` is None)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < lo or (hi is not None and v > hi):
            want = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"must be {want}, got {v}")
        return v
    parse.__name__ = "int"
    return parse


def _positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (np.isfinite(v) and v > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return v


def _code_spec_arg(text: str):
    """argparse type: ``DIMxBITS`` (e.g. ``32x2``) -> CodeSpec."""
    from .codes import CodeSpec

    try:
        dim, bits = (int(t) for t in text.lower().split("x"))
        return CodeSpec(dim, bits)
    except (TypeError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"expected DIMxBITS such as 32x2, got {text!r} "
                                         f"({e})") from None


# ----------------------------------------------------------------------------- helpers
def _api(name: str):
    """``bebr.<name>``, or a clear error if this build does not have it (yet)."""
    import bebr

    obj = getattr(bebr, name, None)
    if obj is None:
        raise CliError(f"this bebr build has no bebr.{name}; the command needs it")
    return obj


def _say(args, msg: str) -> None:
    if not getattr(args, "quiet", False):
        print(msg, file=sys.stderr)


def _load_model(path: str, kind: str = "encoder"):
    """A saved model: the torch-free bebr.Encoder for encoding and search ("encoder"), the
    torch Binarizer where training needs one ("binarizer")."""
    from .jobs import load_model

    return load_model(path, kind)


@contextmanager
def _one_line_warnings():
    """bebr's own warnings about the user's files (``UncalibratedHeadWarning``) as one line
    ``bebr: warning: ...`` on stderr, like the errors; other warnings as Python shows them."""
    from .encoder import UncalibratedHeadWarning

    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            if issubclass(category, UncalibratedHeadWarning):
                print(f"bebr: warning: {' '.join(str(message).split())}", file=sys.stderr)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        warnings.simplefilter("always", UncalibratedHeadWarning)
        yield


def _read_rows(inputs: Sequence[str], *, max_rows: Optional[int], skip_bad: bool,
               column: Optional[str] = None, dim: Optional[int] = None,
               sample_seed: Optional[int] = None, with_ids: bool = False):
    """Read float rows from the inputs into memory (for training/eval), streaming.

    At most ``max_rows`` rows: the first ones, or with ``sample_seed`` a uniform random
    sample (sorted row numbers drawn with that seed from the total row count, so two inputs
    with the same row count give the same rows: paired samples stay paired).
    ``with_ids``: return ``(rows, ids)``, the ids being those ``bebr encode`` gives the same
    rows (the id column, else the row number across all inputs).
    """
    from .io import check_rows, open_inputs

    sources = open_inputs(list(inputs), column=column, dim=dim)
    id_parts: List[np.ndarray] = []
    total = sum(s.n for s in sources)
    chosen = None
    if sample_seed is not None and max_rows is not None and total > max_rows:
        rng = np.random.default_rng(sample_seed)
        chosen = np.sort(rng.choice(total, size=max_rows, replace=False))
    parts, have, base = [], 0, 0
    for s in sources:
        for ch in s.read(0, s.n, 65536):
            x = ch.x
            keep, _ = check_rows(x, where=str(s.path), first_row=ch.offset,
                                 skip_bad=skip_bad)
            sel = np.ones(x.shape[0], bool) if keep is None else keep
            if chosen is not None:
                g0 = base + ch.offset
                lo, hi = np.searchsorted(chosen, [g0, g0 + x.shape[0]])
                picked = np.zeros(x.shape[0], bool)
                picked[chosen[lo:hi] - g0] = True
                sel &= picked
            ids = ch.ids if ch.ids is not None else np.arange(
                base + ch.offset, base + ch.offset + x.shape[0], dtype=np.int64)
            if not sel.all():
                x, ids = x[sel], ids[sel]
            if chosen is None and max_rows is not None:
                x, ids = x[:max_rows - have], ids[:max_rows - have]
            parts.append(x)
            id_parts.append(ids)
            have += x.shape[0]
            if chosen is None and max_rows is not None and have >= max_rows:
                break
        if chosen is None and max_rows is not None and have >= max_rows:
            break
        base += s.n
    if not have:
        raise ValueError("empty input: no valid rows left")
    rows = np.concatenate(parts)
    return (rows, np.concatenate(id_parts)) if with_ids else rows


def _read_queries(path: str, *, dim: Optional[int] = None, column: Optional[str] = None):
    return _read_rows([path], max_rows=None, skip_bad=False, column=column, dim=dim)


def _check_versions(model, index, allow: bool) -> None:
    """Refuse a query model whose version (or a version it is compatible with or has a
    query head for) the index does not hold, unless allowed. Versions are model version
    strings (``bebr.versions``); files with bare int tags resolve through their hashes."""
    from .versions import version_tag

    versions = getattr(index, "versions", None)
    if allow or versions is None:
        return
    held = {version_tag(v) for v, c in dict(versions()).items() if c}
    if not held:
        return
    names = [model.version]
    names += list(getattr(model, "compatible_versions", None) or ())
    names += list(getattr(getattr(model, "config", None), "cross_versions", None) or ())
    lineage = getattr(getattr(model, "config", None), "compatible_with", None)
    if lineage:
        names += list(lineage) if isinstance(lineage, (list, tuple)) else [lineage]
    if not {version_tag(v) for v in names} & held:
        raise CliError(f"model version {model.version!r} is not compatible with the index's "
                       f"versions {sorted(map(str, versions()))}; pass --any-version to "
                       "search anyway")


def _index_load(path: str, mmap: bool = True):
    from .distributed import load_index

    if not Path(path).exists():
        raise FileNotFoundError(f"{path}: no such index file")
    return load_index(path, mmap=mmap)


def _add_shards(index, dirs: Sequence[str], args) -> int:
    """Add every complete, verified code-shard directory to ``index``; returns items added."""
    import inspect

    from .io import CodeShards

    takes_version = "version" in inspect.signature(index.add).parameters
    added = 0
    for d in dirs:
        cs = CodeShards(d)
        if cs.spec != index.spec:
            raise CliError(f"{d}: codes are {cs.spec}, the index holds {index.spec}")
        for entry, codes, ids in cs.shards():
            if not entry.count:
                continue
            kw = {"version": str(cs.model_version)} if takes_version else {}
            try:
                index.add(np.ascontiguousarray(codes), np.ascontiguousarray(ids), **kw)
            except (ValueError, IndexError) as e:  # duplicate, negative or held ids
                raise type(e)(f"{cs.directory / entry.ids} (shard {entry.index}): {e}") \
                    from None
            added += entry.count
        _say(args, f"added {len(cs)} codes of model version {cs.model_version} from {d}")
    return added


def _spec_text(spec) -> str:
    return f"{spec.dim}x{spec.bits}"


def _write_results(args, scores: np.ndarray, ids: np.ndarray) -> None:
    if args.ids_out or args.scores_out:
        from .fileio import atomic_writer

        for path, arr in ((args.ids_out, ids), (args.scores_out, scores)):
            if path:
                with atomic_writer(path) as f:
                    np.save(f, arr, allow_pickle=False)
        _say(args, f"wrote {ids.shape[0]} x {ids.shape[1]} results")
        return
    def lines():
        for q in range(ids.shape[0]):
            keep = ids[q] >= 0
            yield json.dumps({"query": q, "ids": ids[q][keep].tolist(),
                              "scores": [float(s) for s in scores[q][keep]]}) + "\n"

    if args.out:
        from .fileio import atomic_writer

        with atomic_writer(args.out) as f:
            for line in lines():
                f.write(line.encode())
    else:
        for line in lines():
            sys.stdout.write(line)


# ----------------------------------------------------------------------------- commands
def cmd_train(args) -> int:
    t_start = time.monotonic()  # --max-time bounds the whole command, reading included
    train_binarizer = _api("train_binarizer")
    x = _read_rows(args.inputs, max_rows=args.max_rows, skip_bad=args.skip_bad,
                   column=args.column, sample_seed=args.seed)
    kw = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size),
                            ("lr", args.lr), ("version", args.version), ("threads", args.threads))
          if v is not None}
    t0 = time.perf_counter()
    progress = not (args.no_progress or args.quiet)
    if args.max_time is not None:
        kw["max_time_s"] = max(0.0, args.max_time - (time.monotonic() - t_start))
    model = train_binarizer(x, 64 if args.dim is None else args.dim,
                            2 if args.bits is None else args.bits, seed=args.seed,
                            progress=progress, **kw)
    for cut in (getattr(model, "train_info", None) or {}).get("time_budget", {}).get("cuts", []):
        _say(args, f"bebr: --max-time {args.max_time:g} s cut {cut}")
    model.save(args.out)
    _say(args, f"trained {model.spec} on {x.shape[0]} x {x.shape[1]} rows in "
               f"{time.perf_counter() - t0:.1f} s; model version {model.version} -> {args.out}")
    return 0


def _engine_kw(args) -> dict:
    return dict(chunk_rows=args.chunk_rows, engine=args.engine, address=args.address,
                workers=args.workers, threads=args.threads, progress=not args.no_progress,
                overwrite=args.overwrite, ray_cpus=args.ray_cpus)


def _job_summary(args, verb: str, res) -> None:
    m = res.manifest
    rate = m.count / res.seconds if res.seconds > 0 and res.written else 0.0
    extra = f", {m.skipped} bad rows skipped" if m.skipped else ""
    _say(args, f"{verb} {m.count} vectors ({m.spec}, model version {m.model_version}) into "
               f"{m.units} shards: {res.written} written, {res.resumed} already complete"
               f"{extra}; {res.seconds:.1f} s ({rate:,.0f} vec/s) -> {res.out_dir}")


def cmd_encode(args) -> int:
    from .jobs import encode_shards

    res = encode_shards(args.model, list(args.inputs), args.out, shard_rows=args.shard_rows,
                        skip_bad=args.skip_bad, column=args.column, id_column=args.id_column,
                        **_engine_kw(args))
    _job_summary(args, "encoded", res)
    return 0


def _train_sample(dirs: Sequence[str], spec, size: int) -> np.ndarray:
    """Up to ``size`` codes from the shards, in shard order (IVF training sample)."""
    from .io import CodeShards

    parts, have = [], 0
    for d in dirs:
        for entry, codes, _ in CodeShards(d).shards():
            if have >= size:
                break
            parts.append(np.asarray(codes)[: size - have])
            have += parts[-1].shape[0]
    return np.ascontiguousarray(np.concatenate(parts)) if parts else np.zeros((0, spec.code_bytes), np.uint8)


def cmd_index_build(args) -> int:
    from .io import CodeShards

    first = CodeShards(args.shards[0], verify=False)
    if args.hamming and args.nlist:
        raise CliError("--hamming and --nlist exclude each other (an IVF index is SDC)")
    if args.hamming:
        if first.spec.bits != 1:
            raise CliError(f"--hamming needs 1-bit codes, {args.shards[0]} holds {first.spec}")
        index = _api("HammingIndex")(first.spec.dim)
    elif args.nlist:
        index = _api("IVFIndex")(first.spec, args.nlist, metric=args.metric)
        sample = _train_sample(args.shards, first.spec, args.train_size)
        if sample.shape[0] < args.nlist:
            raise CliError(f"--nlist {args.nlist} needs at least that many codes to train on, "
                           f"the shards hold {sample.shape[0]}")
        index.train(sample)
        _say(args, f"trained {args.nlist} coarse centroids on {sample.shape[0]} codes")
    else:
        index = _api("Index")(first.spec, metric=args.metric)
    n = _add_shards(index, args.shards, args)
    index.save(args.out)
    _say(args, f"built index of {n} codes ({first.spec}) -> {args.out}")
    return 0


def cmd_index_add(args) -> int:
    index = _index_load(args.index, mmap=False)
    n = _add_shards(index, args.shards, args)
    index.save(args.index)
    _say(args, f"added {n} codes; index now holds {len(index)} -> {args.index}")
    return 0


def cmd_index_remove(args) -> int:
    if (args.ids is None) == (args.ids_file is None):
        raise CliError("give the ids to remove with exactly one of --ids or --ids-file")
    if args.ids_file:
        from .io.readers import load_npy

        ids = load_npy(args.ids_file, "ids")
        if ids.dtype.kind not in "iu":
            raise CliError(f"{args.ids_file}: ids must be integers, got dtype {ids.dtype}")
        ids = ids.astype(np.int64).ravel()
    else:
        try:
            ids = np.array([int(t) for t in args.ids.split(",") if t.strip()], dtype=np.int64)
        except ValueError:
            raise CliError(f"--ids must be comma-separated integers, got {args.ids!r}") from None
    index = _index_load(args.index, mmap=False)
    before = len(index)
    index.remove(ids)
    index.save(args.index)
    _say(args, f"removed {before - len(index)} of {ids.size} ids; index now holds "
               f"{len(index)} -> {args.index}")
    return 0


def cmd_index_info(args) -> int:
    index = _index_load(args.index, mmap=True)
    info = {"path": args.index, "kind": type(index).__name__, "count": len(index)}
    spec = getattr(index, "spec", None)
    if spec is not None:
        info["spec"] = spec.to_dict()
    for name in ("metric", "nlist"):
        if hasattr(index, name):
            info[name] = getattr(index, name)
    if hasattr(index, "versions"):
        v = index.versions()
        info["versions"] = {str(k): int(c) for k, c in dict(v).items()}
    print(json.dumps(info))
    return 0


def cmd_search(args) -> int:
    if (args.model is None) == (not args.codes):
        raise CliError("give float queries with --model MODEL, or packed code queries "
                       "with --codes (exactly one)")
    if args.codes_spec is not None and not args.codes:
        raise CliError("--codes-spec is only used with --codes")
    from .codes import CodeSpec

    index = _index_load(args.index, mmap=True)
    spec = index.spec
    qspec = spec if args.query_bits is None else CodeSpec(spec.dim, args.query_bits)
    if args.model:
        model = _load_model(args.model)
        if model.spec != spec:
            raise CliError(f"model {args.model} makes {model.spec} codes, the index holds {spec}")
        _check_versions(model, index, args.any_version)
        x = _read_queries(args.queries, dim=model.in_dim, column=args.column)
        heads = [] if args.no_heads else _head_versions(model, index)
        if heads and args.query_bits is None:
            # the heads' calibrations are fitted for train_cross_queries' 4-bit query codes
            args.query_bits = HEAD_QUERY_BITS
            qspec = CodeSpec(spec.dim, HEAD_QUERY_BITS)
        elif heads and args.query_bits != HEAD_QUERY_BITS:
            _say(args, f"warning: the query heads' calibrations were fitted for "
                       f"{HEAD_QUERY_BITS}-bit query codes, not {args.query_bits}")
        _check_covered(model, index, heads, args)
        q = model.encode(x) if args.query_bits is None else \
            model.encode_query_codes(x, args.query_bits)
        version_queries, calibration = _head_queries(model, index, x, qspec.bits, heads, args)
    else:
        p = Path(args.queries)
        if args.codes_spec is not None and args.codes_spec != qspec:
            raise CliError(f"--codes-spec {_spec_text(args.codes_spec)}: the queries must be "
                           f"{_spec_text(qspec)} codes for this index ({spec}"
                           f"{'' if args.query_bits is None else ', --query-bits'})")
        if p.is_dir():
            from .io import CodeShards

            cs = CodeShards(p)
            if cs.spec != qspec:
                raise CliError(f"{p}: codes are {cs.spec}, the queries must be {qspec}")
            q, _ = cs.load_all()
        else:
            from .io.readers import load_npy

            # a bare .npy carries no spec: only its byte width (and padding bits) can be
            # checked, so 16x4 codes pass for 32x2; --codes-spec states what they are
            q = qspec.check_packed(load_npy(p, "packed codes"), f"{p}")
        version_queries, calibration = None, None
    t0 = time.perf_counter()
    extra = {} if args.query_bits is None else {"query_bits": args.query_bits}
    if version_queries:
        extra["version_queries"] = version_queries
    if calibration:
        extra["version_calibration"] = calibration
    if args.nprobe is not None:
        if not hasattr(index, "nlist"):
            raise CliError(f"--nprobe applies to IVF indexes; {args.index} is a "
                           f"{type(index).__name__}")
        extra["nprobe"] = args.nprobe
    scores, ids = index.search(q, args.k, threads=args.threads, **extra)
    dt = time.perf_counter() - t0
    _write_results(args, scores, ids)
    _say(args, f"searched {q.shape[0]} queries, k={args.k}, over {len(index)} codes in "
               f"{dt * 1e3:.1f} ms ({dt / max(q.shape[0], 1) * 1e6:.0f} us/query)")
    return 0


#: Query bits of the heads' calibration (``train_cross_queries``' default query_bits).
HEAD_QUERY_BITS = 4


def _held(index) -> dict:
    """``{version_tag: version}`` of the versions with items in ``index``."""
    from .versions import version_tag

    return {version_tag(v): v for v, c in dict(index.versions()).items() if c}


def _head_versions(model, index) -> list:
    """The model's cross-version heads whose target versions the index holds."""
    from .versions import version_tag

    if not hasattr(index, "versions"):
        return []
    held = _held(index)
    return [v for v in model.config.cross_versions if version_tag(v) in held]


def _check_covered(model, index, heads, args) -> None:
    """Refuse (unless --any-version) items of versions that are neither the model's own,
    nor a version its codes were trained compatible with, nor served by a head: they would
    be scored with the model's own query codes and merged in silently."""
    from .versions import version_tag

    if not hasattr(index, "versions"):
        return
    ok = {version_tag(v) for v in [model.version, *heads] if v}
    if getattr(model, "compatible_with", ""):
        ok.add(version_tag(model.compatible_with))
    left = sorted(str(v) for t, v in _held(index).items() if t not in ok)
    if not left:
        return
    if not args.any_version:
        raise CliError(f"the index holds items of versions {left} that model "
                       f"{model.version!r} has no query head for; pass --any-version to score "
                       "them with the model's own query codes")
    _say(args, f"warning: items of versions {left} are scored with the model's own query "
               "codes (no query head)")


def _head_queries(model, index, x, bits: int, heads, args):
    """Query codes of the model's cross-version ``heads`` (``{version: codes}``) and their
    score calibrations for the index's metric (``{version: (scale, shift)}``); (None, None)
    if none."""
    out, cal = {}, {}
    for ver in heads:
        out[ver] = model.encode_query_codes(x, bits, target=ver)
        cal[ver] = model.cross_calibration(ver, index.metric)
        _say(args, f"items of version {ver} are searched with the model's query head "
                   f"into that version's codes")
    return out or None, cal or None


def cmd_eval(args) -> int:
    from .datasets import exact_topk, l2_normalize, query_split
    from .metrics import recall_at_k

    model = _load_model(args.model)
    # ids as `bebr encode` gives them (the id column, else row numbers), so that an index
    # built from BASE and the float ground truth name items alike
    base, base_ids = _read_rows(args.base, max_rows=args.max_rows, skip_bad=False,
                                column=args.column, dim=model.in_dim, with_ids=True)
    if args.index and not args.queries:
        raise CliError("--index needs --queries (held-out queries would be in the index)")
    if args.queries:
        queries = _read_queries(args.queries, dim=model.in_dim, column=args.column)
    else:
        if args.num_queries >= base.shape[0]:
            raise CliError(f"--num-queries {args.num_queries} leaves no base rows (BASE has "
                           f"{base.shape[0]} rows)")
        qi, keep = query_split(base.shape[0], args.num_queries, seed=args.seed)
        queries, base, base_ids = base[qi], base[keep], base_ids[keep]
    if args.k > base.shape[0]:
        raise CliError(f"-k {args.k} is larger than the base ({base.shape[0]} rows)")
    truth = base_ids[exact_topk(l2_normalize(queries), l2_normalize(base), args.k)]
    if args.index:
        index = _index_load(args.index, mmap=True)
        if index.spec != model.spec:
            raise CliError(f"model {args.model} makes {model.spec} codes, the index holds "
                           f"{index.spec}")
        _check_versions(model, index, False)
        if len(index) != base.shape[0]:
            raise CliError(f"{args.index} holds {len(index)} items but BASE has "
                           f"{base.shape[0]} rows; eval needs the index built from exactly "
                           "BASE (all of it: no --max-rows)")
    else:
        index = _api("Index")(model.spec, metric=args.metric)
        index.add(model.encode(base), base_ids.astype(np.int64))
    qc = model.encode(queries)
    rows = []
    for r in sorted({args.k, *args.recall_at}):
        if r < args.k:
            continue
        _, found = index.search(qc, r)
        if args.index:
            stray = found[(found >= 0) & ~np.isin(found, base_ids)]
            if stray.size:
                raise CliError(f"{args.index} returned id {int(stray[0])}, which is not an id "
                               "of BASE (its id column, else its row numbers): the index was "
                               "not built from BASE")
        rows.append({"metric": f"R{args.k}@{r}", "value": round(recall_at_k(found, truth), 4)})
    out = {"model": args.model, "index": args.index, "version": model.version,
           "spec": model.spec.to_dict(), "n_base": int(base.shape[0]),
           "n_queries": int(queries.shape[0]), "recall": rows}
    print(json.dumps(out))
    return 0


def _tools_dir() -> Path:
    d = Path(__file__).resolve().parent.parent / "tools"
    if not d.is_dir():
        raise CliError("`bebr bench NAME` runs a research script of tools/ in a bebr source "
                       f"checkout (none found at {d}); the benchmark suite ships in the "
                       "package: `bebr bench [--quick] [--study NAME] --out DIR`")
    return d


def cmd_bench(args, extra: List[str]) -> int:
    if not args.study:  # the whole suite (bebr/bench/suite.py): studies, plots, report
        cmd = [sys.executable, "-m", "bebr.bench", *extra]
        _say(args, "running: " + " ".join(cmd))
        return subprocess.call(cmd)
    tools = _tools_dir()
    studies = {p.stem[len("bench_"):]: p for p in sorted(tools.glob("bench_*.py"))}
    studies.update({p.stem[len("eval_"):]: p for p in sorted(tools.glob("eval_*.py"))})
    if args.study == "list":
        for name, p in sorted(studies.items()):
            print(f"{name:12s} {p.relative_to(tools.parent)}")
        return 0
    if args.study not in studies:
        raise CliError(f"unknown study {args.study!r}; available: {', '.join(sorted(studies))}")
    cmd = [sys.executable, str(studies[args.study]), *extra]
    _say(args, "running: " + " ".join(cmd))
    return subprocess.call(cmd)


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(n_words=args.words, dim=args.dim, bits=args.bits, epochs=args.epochs,
                    max_time=args.max_time, train_rows=args.train_rows,
                    queries=args.words_query,
                    progress=not args.no_progress, workdir=args.workdir)


# ----------------------------------------------------------------------------- parser
def _add_common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("general")
    g.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    g.add_argument("-q", "--quiet", action="store_true", help="no summary lines on stderr")


def _add_engine(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("job engine")
    g.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this machine (in process, or --workers processes); ray: Ray "
                        "Data tasks over the shards on a Ray cluster (needs bebr[ray]); both "
                        "write byte-identical output (default: local)")
    g.add_argument("--address", default=None,
                   help="Ray cluster address (e.g. auto, ray://head:10001); default: start a "
                        "local Ray instance. Workers must see the same filesystem paths")
    g.add_argument("--ray-cpus", type=_int_range(1), default=None,
                   help="CPUs of the local Ray instance started when --address is not given "
                        "(default: all)")
    g.add_argument("--workers", type=_int_range(1), default=1,
                   help="local engine: number of worker processes (default: 1, in process)")
    g.add_argument("--threads", type=_int_range(1), default=1,
                   help="torch threads per worker (default: 1; fixed so output is "
                        "deterministic)")
    g.add_argument("--chunk-rows", type=_int_range(1), default=65536,
                   help="rows encoded at a time; bounds memory (default: 65536)")
    g.add_argument("--overwrite", action="store_true",
                   help="start over in an output directory that holds a different job")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    ap = _Parser(
        prog="bebr", formatter_class=fmt,
        description="bebr: binary embedding compression with versioned compatibility.\n"
                    "Train a Binarizer on float embeddings, encode them into compact "
                    "multi-bit codes\n(sharded, resumable, locally or on Ray), index and "
                    "search them.",
        epilog="Start with `bebr demo`. Every command has --help.\n\n" + FORMATS_HELP)
    _add_common(ap)
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", formatter_class=fmt, help="train a Binarizer on embeddings",
                       description="Train a Binarizer (float embeddings -> dim x bits codes) "
                                   "and save it as a model directory (config.json + "
                                   "model.safetensors).\nA new version of an upstream "
                                   "model is trained the same way; `bebr collection upgrade` "
                                   "then fits its query heads into the older versions' codes.",
                       epilog=FORMATS_HELP + "\n\nexample:\n  bebr train emb.npy -o model "
                              "--dim 64 --bits 2")
    p.add_argument("inputs", nargs="+", help="embedding files, directories or globs")
    p.add_argument("-o", "--out", required=True, help="model directory to write")
    p.add_argument("--dim", type=_int_range(1, MAX_DIM), default=None,
                   help="code dimensions (default 64)")
    p.add_argument("--bits", type=_int_range(1, MAX_BITS), default=None,
                   help="bits per dimension, 1..4 (default 2)")
    p.add_argument("--epochs", type=_int_range(1), default=None,
                   help="training epochs (default: auto)")
    p.add_argument("--batch-size", type=_int_range(1), default=None, help="training batch size")
    p.add_argument("--lr", type=_positive_float, default=None, help="learning rate")
    p.add_argument("--seed", type=_int_range(0), default=0, help="random seed (default 0)")
    p.add_argument("--max-rows", type=_int_range(1), default=200_000,
                   help="train on a uniform random sample of at most this many rows (drawn "
                        "with --seed; default 200000)")
    p.add_argument("--max-time", type=_positive_float, default=None,
                   help="time budget of the whole command in seconds: neighbour mining, "
                        "training and query heads are cut to fit (what was cut is printed)")
    p.add_argument("--threads", type=_int_range(1), default=None,
                   help="torch threads while training (default: torch's; 1 is faster on a "
                        "loaded machine)")
    p.add_argument("--version", default=None, help="version id to give the model "
                                                    "(default: a random uuid)")
    p.add_argument("--column", default=None, help="parquet embedding column")
    p.add_argument("--skip-bad", action="store_true", help="drop NaN/inf rows instead of "
                                                           "refusing the input")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_common(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("encode", formatter_class=fmt, help="encode embeddings into code shards",
                       description="Encode float embeddings with a trained model into code "
                                   "shards + manifest.json, streaming in chunks (bounded "
                                   "memory).\nResumable: rerunning the same command skips "
                                   "shards that are complete and verified.",
                       epilog=FORMATS_HELP + "\n\n" + SHARDS_HELP + "\n\nexamples:\n"
                              "  bebr encode --model model emb/ -o codes/\n"
                              "  bebr encode --model model 'emb/*.parquet' -o codes/ "
                              "--workers 2\n"
                              "  bebr encode --model model emb/ -o codes/ --engine ray "
                              "--address auto")
    p.add_argument("inputs", nargs="+", help="embedding files, directories or globs")
    p.add_argument("--model", required=True, help="trained model directory (bebr train)")
    p.add_argument("-o", "--out", required=True, help="output code-shard directory")
    p.add_argument("--shard-rows", type=_int_range(1), default=1 << 20,
                   help="max rows per output shard; each input file is cut into shards of "
                        "at most this many rows (default 1048576)")
    p.add_argument("--skip-bad", action="store_true",
                   help="drop NaN/inf rows (counted in the manifest) instead of refusing")
    p.add_argument("--column", default=None, help="parquet embedding column")
    p.add_argument("--id-column", default=None, help="parquet id column (default: 'id')")
    _add_engine(p)
    _add_common(p)
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("index", formatter_class=fmt, help="build and edit index files",
                       description="Build a bebr.Index file from code shards, add or remove "
                                   "items, show what an index holds.")
    p.set_defaults(help_parser=p)
    isub = p.add_subparsers(dest="index_command", metavar="ACTION")
    q = isub.add_parser("build", formatter_class=fmt, help="new index from code shards",
                        description="Build a new index file from one or more complete code-"
                                    "shard directories (checksums verified).",
                        epilog=SHARDS_HELP)
    q.add_argument("shards", nargs="+", help="code-shard directories")
    q.add_argument("-o", "--out", required=True, help="index file to write")
    q.add_argument("--metric", choices=("ip", "cosine"), default="ip",
                   help="score: inner product of code values, or cosine (default ip)")
    q.add_argument("--hamming", action="store_true",
                   help="build a HammingIndex (1-bit codes only) instead of an SDC Index")
    q.add_argument("--nlist", type=int, default=None,
                   help="build an IVFIndex with this many lists (coarse centroids trained on "
                        "the first --train-size codes) instead of a flat Index")
    q.add_argument("--train-size", type=int, default=262_144,
                   help="codes the IVF centroids are trained on (default 262144)")
    _add_common(q)
    q.set_defaults(func=cmd_index_build)
    q = isub.add_parser("add", help="add code shards to an index",
                        description="Add code-shard directories to an existing index file "
                                    "(rewritten atomically).")
    q.add_argument("index", help="index file")
    q.add_argument("shards", nargs="+", help="code-shard directories")
    _add_common(q)
    q.set_defaults(func=cmd_index_add)
    q = isub.add_parser("remove", help="remove ids from an index",
                        description="Remove items by id from an index file (rewritten "
                                    "atomically).")
    q.add_argument("index", help="index file")
    q.add_argument("--ids", default=None, help="comma-separated ids, e.g. 3,17,42")
    q.add_argument("--ids-file", default=None, help=".npy file of integer ids")
    _add_common(q)
    q.set_defaults(func=cmd_index_remove)
    q = isub.add_parser("info", help="what an index holds (JSON)",
                        description="Print an index's kind, size, code spec, metric and "
                                    "per-version counts as one JSON line.")
    q.add_argument("index", help="index file")
    _add_common(q)
    q.set_defaults(func=cmd_index_info)

    from .cli_collection import register as register_collection

    register_collection(sub, fmt, _add_common)

    p = sub.add_parser("search", formatter_class=fmt, help="search an index",
                       description="Search an index with float queries (encoded by --model) "
                                   "or packed code queries (--codes).\nOutput: JSON lines "
                                   '{"query": i, "ids": [...], "scores": [...]} on stdout or '
                                   "--out, or .npy files with --ids-out/--scores-out.",
                       epilog=FORMATS_HELP + "\n\nCode queries: a .npy of uint8 packed codes "
                                             "(n, code_bytes) or a code-shard directory.\n\n"
                                             "example:\n  bebr search --index idx.bebr "
                                             "--model model queries.npy -k 10")
    p.add_argument("queries", help="query embeddings (with --model) or codes (with --codes)")
    p.add_argument("--index", required=True, help="index file")
    p.add_argument("--model", default=None, help="model that encodes float queries")
    p.add_argument("--codes", action="store_true", help="queries are packed codes")
    p.add_argument("--codes-spec", type=_code_spec_arg, default=None, metavar="DIMxBITS",
                   help="with --codes: the spec the query codes were made with (e.g. 32x2); "
                        "refused unless it is the index's (or --query-bits') spec. A bare "
                        ".npy of codes carries no spec, so without this only its byte width "
                        "is checked (16x4 codes have the width of 32x2); a code-shard "
                        "directory's manifest states its spec and is always checked")
    p.add_argument("-k", type=_int_range(1), default=10, help="results per query (default 10)")
    p.add_argument("--threads", type=_int_range(1), default=None, help="search threads")
    p.add_argument("--nprobe", type=_int_range(1), default=None,
                   help="lists probed per query (IVF indexes; default: the index's default, 8)")
    p.add_argument("--query-bits", type=int, default=None, choices=[1, 2, 3, 4],
                   help="encode the queries at this many bits per dimension (queries are "
                        "never stored; 4 raises recall over 1-2-bit items for a slower "
                        "scan; default: the index's bits)")
    p.add_argument("--no-heads", action="store_true",
                   help="do not use the model's cross-version query heads (by default, items "
                        "of an older version the model has a head for are scored with it)")
    p.add_argument("--column", default=None, help="parquet embedding column")
    p.add_argument("--any-version", action="store_true",
                   help="allow a query model whose version the index does not hold")
    p.add_argument("-o", "--out", default=None, help="JSON lines file (default: stdout)")
    p.add_argument("--ids-out", default=None, help="write ids (nq, k) int64 to this .npy")
    p.add_argument("--scores-out", default=None,
                   help="write scores (nq, k) float32 to this .npy")
    _add_common(p)
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("eval", formatter_class=fmt, help="recall of a model against float search",
                       description="Recall of code search with a model (and optionally a "
                                   "built index) against exact float (cosine) search on "
                                   "given data: R{k}@{r} = the share of "
                                   "the float top-k found in the code top-r. Prints one JSON "
                                   "line.",
                       epilog=FORMATS_HELP)
    p.add_argument("base", nargs="+", help="base embeddings")
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--queries", default=None,
                   help="query embeddings (default: --num-queries rows held out of the base)")
    p.add_argument("--num-queries", type=_int_range(1), default=1000, help="held-out queries")
    p.add_argument("--index", default=None,
                   help="search this index (its ids = row numbers of BASE, as `bebr encode` "
                        "gives without an id column) instead of encoding BASE; needs "
                        "--queries")
    p.add_argument("-k", type=_int_range(1), default=10, help="float top-k ground truth (default 10)")
    p.add_argument("--recall-at", type=_int_range(1), nargs="*", default=[10, 100],
                   help="code result depths r (default 10 100)")
    p.add_argument("--metric", choices=("ip", "cosine"), default="ip")
    p.add_argument("--max-rows", type=_int_range(1), default=None, help="use at most N base rows")
    p.add_argument("--seed", type=_int_range(0), default=0)
    p.add_argument("--column", default=None, help="parquet embedding column")
    _add_common(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("bench", formatter_class=fmt, help="run the benchmark suite",
                       description="Without a study name: the benchmark suite "
                                   "(bebr/bench/, needs bebr[bench]), `bebr bench [--quick] "
                                   "[--study NAME ...] [--out DIR]`, which writes the BENCHMARKS.md"
                                   " sections, docs/*.png plots and the README table. With "
                                   "a name: one benchmark script of tools/ (bench_*.py, "
                                   "eval_*.py) in a source checkout; arguments after the "
                                   "study name go to the study (e.g. --quick). `bebr bench "
                                   "list` lists them.")
    p.add_argument("study", nargs="?", default=None, help="study name, or list")
    _add_common(p)
    p.set_defaults(func=cmd_bench, passthrough=True)

    p = sub.add_parser("demo", formatter_class=fmt, help="the whole job on real GloVe words",
                       description="Train a Binarizer on real GloVe word vectors, encode "
                                   "them into code shards, build an index, answer word "
                                   "queries, and print recall@10 and latency next to exact "
                                   "float search.")
    p.add_argument("--words", type=_int_range(1), default=100_000, help="GloVe words (default 100000)")
    p.add_argument("--dim", type=_int_range(1, MAX_DIM), default=128, help="code dimensions (default 128)")
    p.add_argument("--bits", type=_int_range(1, MAX_BITS), default=2, help="bits per dimension (default 2)")
    p.add_argument("--epochs", type=_int_range(1), default=None,
                   help="training epochs (default auto)")
    p.add_argument("--max-time", type=float, default=30.0,
                   help="training time budget in seconds, neighbour mining included "
                        "(default 30)")
    p.add_argument("--train-rows", type=_int_range(1), default=40_000,
                   help="words sampled for training (default 40000)")
    p.add_argument("--words-query", nargs="*", default=["king", "france", "computer",
                                                        "music", "river"],
                   help="words whose neighbours to show")
    p.add_argument("--workdir", default=None, help="keep model, shards and index here "
                                                   "(default: a temporary directory)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_common(p)
    p.set_defaults(func=cmd_demo)
    return ap


def _one_line(e: BaseException) -> str:
    msg = str(e) or type(e).__name__
    if isinstance(e, KeyError):
        msg = f"missing key {msg}"
    return " ".join(msg.split())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``bebr`` command line; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    extra: List[str] = []
    if argv and argv[0] == "bench":  # everything after the study name goes to the study
        if len(argv) > 1 and (argv[1] in ("-h", "--help") or not argv[1].startswith("-")):
            head, extra = argv[:2], argv[2:]
        else:  # bebr bench [--quick] [--study NAME ...]: options of the whole suite
            head, extra = argv[:1], argv[1:]
        args = parser.parse_args(head)
    else:
        args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False)) or "--debug" in argv
    if not getattr(args, "func", None):  # no command (or `bebr index` without an action)
        getattr(args, "help_parser", parser).print_help(sys.stderr)
        return 2
    try:
        with _one_line_warnings():
            if getattr(args, "passthrough", False):
                return args.func(args, extra)
            return args.func(args)
    except KeyboardInterrupt:
        print("bebr: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into a reader that stopped (e.g. `| head`)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except (CliError, ValueError, TypeError, OSError, ImportError, IndexError, KeyError,
            RuntimeError, MemoryError) as e:
        if debug:
            raise
        print(f"bebr: error: {_one_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # python -m bebr.cli
    sys.exit(main())
