"""Ray plumbing shared by the Ray engine of ``bebr.jobs`` and ``bebr.distributed``.

Ray is an optional extra (``pip install "bebr[ray]"``); nothing here is imported unless a
Ray engine is asked for. Tasks travel as small picklable descriptions (paths and row ranges,
never torch modules); each Ray worker loads the model from its file, writes its shard to the
shared output directory, and returns the shard's manifest entry to the driver.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

__all__ = ["require_ray", "ensure_ray", "run_tasks_ray"]


def require_ray():
    """Import ray, or raise ImportError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError('the Ray engine needs Ray: pip install "bebr[ray]" '
                          '(or pip install "ray[data]")') from None
    return ray


def ensure_ray(address: Optional[str] = None, **kwargs):
    """Connect to the Ray cluster at ``address`` (None: reuse the running instance, or start
    a local one) and return the ray module."""
    ray = require_ray()
    if not ray.is_initialized():
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("log_to_driver", False)
        kwargs.setdefault("configure_logging", False)
        ray.init(address=address, **kwargs)
    return ray


def _error_class(name: str) -> type:
    """The exception class a worker error is raised as on the driver (by its name)."""
    from .fileio import CorruptFileError
    from .io.inputs import InputError
    from .io.validate import BadRowError

    known = {c.__name__: c for c in (BadRowError, CorruptFileError, InputError, ValueError,
                                     TypeError, FileNotFoundError, PermissionError, OSError)}
    return known.get(name, RuntimeError)


def run_tasks_ray(tasks: Sequence[Any], rows: Sequence[int], fn: Callable[[Any], Any], *,
                  address: Optional[str] = None,
                  num_cpus: Optional[int] = None) -> Iterator[Tuple[Any, int]]:
    """Run ``fn(task)`` for every task with Ray Data, one block per task; yield
    ``(result, rows[i])`` as tasks finish (any order). ``fn`` returns a ShardEntry."""
    if not tasks:
        return
    ray = ensure_ray(address, **({"num_cpus": num_cpus} if num_cpus else {}))
    import ray.data

    with warnings.catch_warnings():  # Ray Data's own default config trips its deprecations
        warnings.filterwarnings("ignore", message=".*is deprecated", category=DeprecationWarning,
                                module="ray")
        ctx = ray.data.DataContext.get_current()
    saved = (ctx.enable_progress_bars, ctx.execution_options.preserve_order,
             ctx.print_on_execution_start)
    ctx.enable_progress_bars = False  # bebr's own bar counts vectors
    ctx.execution_options.preserve_order = False  # results as they finish
    ctx.print_on_execution_start = False
    try:
        yield from _run(ray, tasks, rows, fn)
    finally:  # the driver's DataContext is the user's too: put it back
        (ctx.enable_progress_bars, ctx.execution_options.preserve_order,
         ctx.print_on_execution_start) = saved


def _run(ray, tasks, rows, fn):
    """The Ray Data pipeline of ``run_tasks_ray``: one block per task, results as rows."""
    from .io.manifest import ShardEntry

    task_list: List[Any] = list(tasks)

    def work(row):  # errors travel back as data: Ray Data does not keep exception types
        try:
            entry = json.dumps(asdict(fn(task_list[row["i"]])))
            return {"i": row["i"], "entry": entry, "error_type": "", "error": ""}
        except (ValueError, TypeError, OSError) as e:
            return {"i": row["i"], "entry": "", "error_type": type(e).__name__,
                    "error": str(e)}

    ds = ray.data.from_items([{"i": i} for i in range(len(task_list))],
                             override_num_blocks=len(task_list))
    for row in ds.map(work, num_cpus=getattr(task_list[0], "threads", 1)).iter_rows():
        if row["error_type"]:
            raise _error_class(row["error_type"])(row["error"])
        yield ShardEntry.from_dict(json.loads(row["entry"])), rows[int(row["i"])]
