"""The ``manifest.json`` of a code-shard directory (docs/FORMAT.md, "Code shards and
manifest").

The manifest is the only authority on what is complete: a shard file counts only when the
manifest lists it with a matching SHA-256. It is rewritten atomically after every finished
shard, so a killed job leaves a manifest that lists exactly the shards that were complete.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..codes import CodeSpec
from ..fileio import CorruptFileError, atomic_write_bytes, sha256_file

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_NAME", "Manifest", "ShardEntry",
           "shard_names"]

FORMAT_NAME = "bebr.codeshards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"


def shard_names(index: int) -> tuple:
    """File names of shard ``index``: ``("codes-00000.npy", "ids-00000.npy")``."""
    return f"codes-{index:05d}.npy", f"ids-{index:05d}.npy"


@dataclass
class ShardEntry:
    """One complete shard: its files, row count, checksums and where its rows came from."""

    index: int
    codes: str
    ids: str
    count: int
    sha256: str
    ids_sha256: str
    source: Optional[int] = None   # index into Manifest.inputs
    start: int = 0                 # first source row (inclusive)
    stop: int = 0                  # last source row (exclusive)
    skipped: int = 0               # bad rows dropped (skip_bad)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "ShardEntry":
        return cls(**d)


@dataclass
class Manifest:
    """Everything about a code-shard directory. ``units`` is the planned shard count;
    ``complete`` is True once every unit has an entry."""

    model_version: Any
    spec: CodeSpec
    job: Dict[str, Any]
    inputs: List[Dict[str, Any]]
    units: int
    shards: Dict[int, ShardEntry] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return len(self.shards) == self.units and set(self.shards) == set(range(self.units))

    @property
    def count(self) -> int:
        return sum(e.count for e in self.shards.values())

    @property
    def skipped(self) -> int:
        return sum(e.skipped for e in self.shards.values())

    def to_dict(self) -> Dict[str, Any]:
        return {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "model_version": self.model_version, "spec": self.spec.to_dict(),
            "job": self.job, "inputs": self.inputs, "units": self.units,
            "complete": self.complete, "count": self.count, "skipped": self.skipped,
            "shards": [asdict(self.shards[i]) for i in sorted(self.shards)],
        }

    def save(self, directory: Union[str, Path]) -> None:
        """Write ``directory/manifest.json`` atomically."""
        data = json.dumps(self.to_dict(), indent=1, sort_keys=False).encode() + b"\n"
        atomic_write_bytes(Path(directory) / MANIFEST_NAME, data)

    @classmethod
    def load(cls, directory: Union[str, Path]) -> "Manifest":
        """Read and validate ``directory/manifest.json``; CorruptFileError if it is not one."""
        path = Path(directory) / MANIFEST_NAME
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"{directory}: no such code-shard directory")
        if not path.exists():
            raise FileNotFoundError(f"{path}: no manifest (not a bebr code-shard directory, "
                                    "or the job never finished a shard)")
        try:
            d = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CorruptFileError(f"{path}: corrupted manifest (invalid JSON: {e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise CorruptFileError(f"{path}: not a bebr code-shard manifest")
        if d.get("format_version") != FORMAT_VERSION:
            raise CorruptFileError(f"{path}: manifest format version {d.get('format_version')!r}"
                                   f" is not supported (this bebr reads {FORMAT_VERSION})")
        try:
            shards = {}
            for s in d["shards"]:
                e = ShardEntry.from_dict(s)
                shards[e.index] = e
            m = cls(model_version=d["model_version"], spec=CodeSpec.from_dict(d["spec"]),
                    job=dict(d["job"]), inputs=list(d["inputs"]), units=int(d["units"]),
                    shards=shards)
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(f"{path}: corrupted manifest ({type(e).__name__}: {e})") \
                from None
        if d.get("complete") != m.complete or d.get("count") != m.count:
            raise CorruptFileError(f"{path}: corrupted manifest (totals disagree with the "
                                   "shard list)")
        return m

    def verify_entry(self, directory: Union[str, Path], entry: ShardEntry) -> Optional[str]:
        """None if both files of ``entry`` exist with matching checksums, else the reason."""
        directory = Path(directory)
        for name, digest in ((entry.codes, entry.sha256), (entry.ids, entry.ids_sha256)):
            p = directory / name
            if not p.is_file():
                return f"{p}: missing"
            if sha256_file(p) != digest:
                return f"{p}: checksum mismatch (corrupted or modified shard)"
        return None

    def verify(self, directory: Union[str, Path]) -> None:
        """Check every listed shard's files; CorruptFileError naming the first bad one."""
        for i in sorted(self.shards):
            why = self.verify_entry(directory, self.shards[i])
            if why:
                raise CorruptFileError(why)
