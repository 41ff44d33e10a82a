"""Resolve job inputs: files, directories and globs -> the sorted list of input shards."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import List, Optional, Sequence, Union

from .readers import SUFFIXES, Source, open_source

__all__ = ["InputError", "expand_inputs", "open_inputs"]

PathOrPaths = Union[str, Path, Sequence[Union[str, Path]]]


class InputError(ValueError):
    """Job input that cannot be used: nothing matched, empty, or shards that disagree."""


def expand_inputs(inputs: PathOrPaths) -> List[Path]:
    """Files named by ``inputs``: each item a file, a directory (its files with a known
    extension, sorted) or a glob pattern (its matches, sorted). Order of items is kept."""
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise InputError("no input given")
    out: List[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files = sorted(f for f in p.iterdir()
                           if f.is_file() and f.suffix.lower() in SUFFIXES)
            if not files:
                raise InputError(f"{p}: directory holds no input shards "
                                 f"({', '.join(SUFFIXES)})")
            out.extend(files)
        elif p.exists():
            out.append(p)
        elif glob.has_magic(str(item)):
            files = sorted(Path(f) for f in glob.glob(str(item)) if Path(f).is_file())
            if not files:
                raise InputError(f"{item}: glob matches no files")
            out.extend(files)
        else:
            raise FileNotFoundError(f"{p}: no such file or directory")
    return out


def open_inputs(inputs: PathOrPaths, *, column: Optional[str] = None,
                id_column: Optional[str] = None, dim: Optional[int] = None) -> List[Source]:
    """Open every input shard; check they share one dimension (``dim`` if given) and that
    there is at least one row in all."""
    sources = [open_source(p, column=column, id_column=id_column)
               for p in expand_inputs(inputs)]
    nonempty = [s for s in sources if s.n]
    if not nonempty:
        names = ", ".join(str(s.path) for s in sources[:3])
        raise InputError(f"empty input: no rows in {names}{' ...' if len(sources) > 3 else ''}")
    want = dim if dim is not None else nonempty[0].d
    for s in nonempty:
        if s.d != want:
            what = "the model's input dim" if dim is not None else f"the dim of {nonempty[0].path}"
            raise InputError(f"{s.path}: embeddings have dim {s.d}, expected {want} ({what})")
    has_ids = {s.has_ids for s in nonempty}
    if len(has_ids) > 1:
        raise InputError("some input shards have an id column and others do not; give ids "
                         "everywhere or nowhere")
    return sources
