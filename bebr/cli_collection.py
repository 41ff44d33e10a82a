"""``bebr collection ...``: the CLI verbs over a :class:`bebr.Collection` directory.

Each verb does what the Python method of the same name does (``Collection.create``,
``add``, ``upsert``, ``remove``, ``upgrade``, ``search``, ``versions``, ``backfill_order``,
``retire``) and every changing verb commits the collection atomically before it exits.
Float inputs are any EMB inputs of the other verbs; an item's id is the input's id column
(``--id-column``, parquet) or else its row number across the inputs, as in ``bebr encode``.
"""

from __future__ import annotations

import argparse
import json
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["register"]


def _say(args, msg: str) -> None:
    from .cli import _say as say

    say(args, msg)


def _rows_with_ids(inputs: Sequence[str], *, dim: Optional[int], column: Optional[str],
                   id_column: Optional[str]) -> Tuple[np.ndarray, np.ndarray]:
    """All float rows of the inputs and their ids (id column, else the row number across
    the inputs); NaN/inf rows are refused naming the shard and row."""
    from .io import check_rows, open_inputs

    sources = open_inputs(list(inputs), column=column, id_column=id_column, dim=dim)
    xs, ids, base = [], [], 0
    for s in sources:
        for ch in s.read(0, s.n, 65536):
            check_rows(ch.x, where=str(s.path), first_row=ch.offset, skip_bad=False)
            xs.append(ch.x)
            ids.append(ch.ids if ch.ids is not None else
                       np.arange(base + ch.offset, base + ch.offset + len(ch.x), dtype=np.int64))
        base += s.n
    return np.concatenate(xs), np.concatenate(ids).astype(np.int64)


def _older_pairs(values: Optional[List[str]]) -> Dict[str, str]:
    from .cli import CliError

    out: Dict[str, str] = {}
    for item in values or ():
        version, sep, path = item.partition("=")
        if not sep or not version or not path:
            raise CliError(f"--older takes VERSION=FILE, got {item!r}")
        if version in out:
            raise CliError(f"--older names version {version!r} twice")
        out[version] = path
    return out


def _open(args, mmap: bool = True):
    from .collection import Collection

    return Collection.open(args.collection, mmap=mmap)


def cmd_create(args) -> int:
    from .collection import Collection
    from .jobs import load_model

    c = Collection.create(args.collection, load_model(args.model), metric=args.metric,
                          query_bits=args.query_bits, nlist=args.nlist, nprobe=args.nprobe,
                          spill_lambda=args.spill_lambda)
    layout = f", IVF {c.nlist} lists, nprobe {c.nprobe}" if c.nlist else ""
    _say(args, f"created collection {args.collection} serving {c.current!r} ({c.spec}, "
               f"{c.metric}, {c.query_bits}-bit queries{layout})")
    return 0


def cmd_add(args, upsert: bool = False) -> int:
    c = _open(args, mmap=False)
    x, ids = _rows_with_ids(args.inputs, dim=c.model.in_dim, column=args.column,
                            id_column=args.id_column)
    if upsert:
        c.upsert(x, ids)
    else:
        c.add(x, ids)
    c.save()
    _say(args, f"{'upserted' if upsert else 'added'} {len(ids)} items as {c.current!r}; "
               f"collection holds {c.versions()}")
    return 0


def cmd_remove(args) -> int:
    from .cli import CliError

    if (args.ids is None) == (args.ids_file is None):
        raise CliError("give the ids to remove with exactly one of --ids or --ids-file")
    if args.ids_file:
        ids = np.load(args.ids_file, allow_pickle=False)
        if ids.dtype.kind not in "iu":
            raise CliError(f"{args.ids_file}: ids must be integers, got dtype {ids.dtype}")
    else:
        try:
            ids = np.array([int(t) for t in args.ids.split(",") if t.strip()], dtype=np.int64)
        except ValueError:
            raise CliError(f"--ids must be comma-separated integers, got {args.ids!r}") from None
    c = _open(args, mmap=False)
    c.remove(ids.astype(np.int64).ravel())
    c.save()
    _say(args, f"removed {ids.size} items; collection holds {c.versions()}")
    return 0


def cmd_upgrade(args) -> int:
    from .cli import CliError
    from .jobs import load_model

    c = _open(args, mmap=False)
    new = load_model(args.model)
    x, ids = _rows_with_ids(args.inputs, dim=new.in_dim, column=args.column,
                            id_column=args.id_column)
    older = {}
    for v, path in _older_pairs(args.older).items():
        xo, oids = _rows_with_ids([path], dim=c._model(v).in_dim, column=args.column,
                                  id_column=args.id_column)
        if not np.array_equal(oids, ids):
            raise CliError(f"--older {v}={path}: its rows must be the same items as the new "
                           f"inputs, row for row (ids differ)")
        older[v] = xo
    opts = {k: v for k, v in (("epochs", args.head_epochs), ("threads", args.threads))
            if v is not None}
    report = c.upgrade(new, x, ids, older=older, max_time_s=args.max_time,
                       members=args.members, seed=args.seed, progress=not args.quiet,
                       head_options=opts)
    _say(args, f"upgraded to {report['version']!r} in {report['seconds']:.0f} s; heads: "
               + ", ".join(f"{v} (val R10@10 {h['val_r10@10']:.3f})"
                           for v, h in report["heads"].items()))
    return 0


def cmd_search(args) -> int:
    from .cli import _read_queries, _write_results
    import time

    c = _open(args)
    x = _read_queries(args.queries, dim=c.model.in_dim, column=args.column)
    older = {}
    for v, path in _older_pairs(args.older).items():
        older[v] = _read_queries(path, dim=c._model(v).in_dim, column=args.column)
    t0 = time.perf_counter()
    scores, ids = c.search(x, args.k, older=older, threads=args.threads, nprobe=args.nprobe)
    dt = time.perf_counter() - t0
    _write_results(args, scores, ids)
    _say(args, f"searched {x.shape[0]} queries, k={args.k}, over {len(c)} items of "
               f"{ {v: n for v, n in c.versions().items() if n} } in {dt * 1e3:.1f} ms")
    return 0


def cmd_info(args) -> int:
    c = _open(args)
    print(json.dumps({"path": str(args.collection), "current": c.current, "count": len(c),
                      "versions": c.versions(), "lineage": list(c.lineage()),
                      "spec": c.spec.to_dict(), "metric": c.metric,
                      "query_bits": c.query_bits, "nlist": c.nlist, "nprobe": c.nprobe}))
    return 0


def cmd_backfill_order(args) -> int:
    from .fileio import atomic_writer

    c = _open(args)
    ids = c.backfill_order(args.n, args.strategy, seed=args.seed)
    if args.out:
        with atomic_writer(args.out) as f:
            np.save(f, ids, allow_pickle=False)
    else:
        print(",".join(str(int(i)) for i in ids))
    _say(args, f"{len(ids)} ids to re-encode next ({args.strategy} order)")
    return 0


def cmd_retire(args) -> int:
    c = _open(args, mmap=False)
    c.retire(args.version)
    _say(args, f"retired {args.version!r}; collection holds {c.versions()}")
    return 0


def register(sub, fmt, add_common) -> None:
    """Add the ``collection`` command group to the ``bebr`` parser's subcommands."""
    p = sub.add_parser(
        "collection", formatter_class=fmt, help="a collection across model upgrades",
        description="A bebr.Collection directory: one index of the codes of several model "
                    "versions, the models it needs, a manifest. New queries search every "
                    "version in one pass; items are re-encoded gradually after an upgrade.",
        epilog="example:\n  bebr collection create coll --model v1\n"
               "  bebr collection add coll emb_v1.npy\n"
               "  bebr collection upgrade coll --model v2 sample_v2.parquet --id-column id\n"
               "  bebr collection search coll queries_v2.npy -k 10\n"
               "  bebr collection backfill-order coll -n 10000 -o todo.npy")
    p.set_defaults(help_parser=p)
    csub = p.add_subparsers(dest="collection_command", metavar="ACTION")

    def verb(name, func, help_, inputs=False, ids_col=False):
        q = csub.add_parser(name, formatter_class=fmt, help=help_, description=help_)
        q.add_argument("collection", help="collection directory")
        if inputs:
            q.add_argument("inputs", nargs="+", help="embedding files, directories or globs")
            q.add_argument("--column", default=None, help="parquet embedding column")
        if ids_col:
            q.add_argument("--id-column", default=None,
                           help="parquet id column (default: ids are row numbers)")
        add_common(q)
        q.set_defaults(func=func)
        return q

    q = verb("create", cmd_create, "create an empty collection serving a model")
    q.add_argument("--model", required=True, help="trained model directory (bebr train)")
    q.add_argument("--metric", choices=("cosine", "ip"), default="cosine",
                   help="score (default cosine)")
    q.add_argument("--query-bits", type=int, default=None,
                   help="bits of every search's query codes (default: the finest exact)")
    q.add_argument("--nlist", type=int, default=None,
                   help="hold the items in an IVF index of this many lists (trained on the "
                        "first add; default: a flat index)")
    q.add_argument("--nprobe", type=int, default=None,
                   help="IVF: lists a search probes by default (default nlist / 16)")
    q.add_argument("--spill-lambda", type=float, default=None,
                   help="IVF: SOAR spilled assignment with this lambda (default: none)")
    verb("add", cmd_add, "encode float rows of the current model and add them", True, True)
    verb("upsert", lambda a: cmd_add(a, upsert=True),
         "encode float rows of the current model and replace (or add) their ids", True, True)
    q = verb("remove", cmd_remove, "remove items by id")
    q.add_argument("--ids", default=None, help="comma-separated ids, e.g. 3,17,42")
    q.add_argument("--ids-file", default=None, help=".npy file of integer ids")
    q = verb("upgrade", cmd_upgrade, "make a new model current; fit its query heads into "
             "every older version from a paired sample (the new floats of stored items)",
             True, True)
    q.add_argument("--model", required=True, help="the new model directory")
    q.add_argument("--older", action="append", metavar="VERSION=EMB",
                   help="the same sample items' floats from an older model (repeatable): "
                        "fits that version's own-query calibration for search --older")
    q.add_argument("--max-time", type=float, default=None, help="bound the whole upgrade (s)")
    q.add_argument("--members", type=int, default=3, help="query-head ensemble members")
    q.add_argument("--head-epochs", type=int, default=None,
                   help="query-head training epochs (default: train_cross_queries' auto)")
    q.add_argument("--threads", type=int, default=None, help="torch threads while fitting")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    q = verb("search", cmd_search, "top-k of float queries of the current model over every "
             "version")
    q.add_argument("queries", help="query embeddings of the current model")
    q.add_argument("-k", type=int, default=10, help="results per query (default 10)")
    q.add_argument("--older", action="append", metavar="VERSION=EMB",
                   help="the same queries embedded by an older model (repeatable)")
    q.add_argument("--column", default=None, help="parquet embedding column")
    q.add_argument("--threads", type=int, default=None, help="search threads")
    q.add_argument("--nprobe", type=int, default=None,
                   help="IVF collections: lists to probe (default: the collection's nprobe)")
    q.add_argument("-o", "--out", default=None, help="JSON lines file (default: stdout)")
    q.add_argument("--ids-out", default=None, help="write ids (nq, k) int64 to this .npy")
    q.add_argument("--scores-out", default=None, help="write scores (nq, k) float32 .npy")
    verb("info", cmd_info, "what a collection holds (JSON)")
    q = verb("backfill-order", cmd_backfill_order, "the ids to re-encode next")
    q.add_argument("-n", type=int, required=True, help="how many ids")
    q.add_argument("--strategy", choices=("random", "uncertainty"), default="random",
                   help="random, or least certain stored codes first (default random)")
    q.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    q.add_argument("-o", "--out", default=None, help="write the ids to this .npy")
    q = verb("retire", cmd_retire, "drop an older version once none of its items is left")
    q.add_argument("version", help="the version string to retire")
