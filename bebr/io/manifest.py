"""The ``manifest.json`` of a code-shard directory (docs/FORMAT.md, "Code shards and
manifest").

The manifest is the only authority on what is complete: a shard file counts only when the
manifest lists it with a matching SHA-256. The manifest carries the SHA-256 of its own
canonical JSON (``header_sha256``), so an edited or bit-flipped field is refused. It is rewritten atomically after every finished
shard, so a killed job leaves a manifest that lists exactly the shards that were complete.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

from ..codes import CodeSpec
from ..fileio import (HEADER_SHA_KEY, CorruptFileError, atomic_write_bytes, check_header_digest,
                      header_digest, sha256_file)

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "MANIFEST_NAME", "Manifest", "ShardEntry",
           "outside_directory", "shard_names"]

FORMAT_NAME = "bebr.codeshards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

_HEX64 = re.compile(r"[0-9a-f]{64}")


def _is_count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def shard_names(index: int) -> tuple:
    """File names of shard ``index``: ``("codes-00000.npy", "ids-00000.npy")``."""
    return f"codes-{index:05d}.npy", f"ids-{index:05d}.npy"


def outside_directory(directory: Union[str, Path], path: Union[str, Path]) -> Optional[str]:
    """None if ``path`` (after following symlinks) lies in ``directory``, else the reason."""
    real, home = Path(path).resolve(), Path(directory).resolve()
    if real.parent != home:
        return f"{path}: resolves to {real}, outside the shard directory {home} (refused)"
    return None


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
        """Build from a manifest's shard record, checking every field's type and range.

        The file names must be exactly this shard's names (``shard_names(index)``): a
        manifest can never point at a file outside its directory (``../x``, absolute paths).
        Raises ValueError/TypeError (``Manifest.load`` turns them into CorruptFileError).
        """
        if not isinstance(d, dict):
            raise TypeError(f"shard record must be an object, got {type(d).__name__}")
        names = {f.name for f in fields(cls)}
        if set(d) - names or {"index", "codes", "ids", "count", "sha256", "ids_sha256"} - set(d):
            raise ValueError(f"shard record keys {sorted(d)} are not {sorted(names)}")
        for k in ("index", "count", "start", "stop", "skipped"):
            if k in d and not _is_count(d[k]):
                raise ValueError(f"shard field {k!r} must be an int >= 0, got {d[k]!r}")
        if d.get("source") is not None and not _is_count(d["source"]):
            raise ValueError(f"shard field 'source' must be an int >= 0, got {d['source']!r}")
        for k in ("sha256", "ids_sha256"):
            if not isinstance(d[k], str) or not _HEX64.fullmatch(d[k]):
                raise ValueError(f"shard field {k!r} must be a hex SHA-256, got {d[k]!r}")
        if d.get("start", 0) > d.get("stop", 0):
            raise ValueError(f"shard {d['index']}: start {d.get('start')} > stop {d.get('stop')}")
        want = shard_names(d["index"])
        for k, name in zip(("codes", "ids"), want):
            if d[k] != name:
                raise ValueError(f"shard {d['index']} names file {d[k]!r} for its {k}, expected "
                                 f"{name!r} (shard files must lie in the manifest's directory)")
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
        d = {
            "format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "model_version": self.model_version, "spec": self.spec.to_dict(),
            "job": self.job, "inputs": self.inputs, "units": self.units,
            "complete": self.complete, "count": self.count, "skipped": self.skipped,
            "shards": [asdict(self.shards[i]) for i in sorted(self.shards)],
        }
        d[HEADER_SHA_KEY] = header_digest(d)
        return d

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
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise CorruptFileError(f"{path}: corrupted manifest (invalid JSON: {e})") from None
        if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
            raise CorruptFileError(f"{path}: not a bebr code-shard manifest")
        if d.get("format_version") != FORMAT_VERSION:
            raise CorruptFileError(f"{path}: manifest format version {d.get('format_version')!r}"
                                   f" is not supported (this bebr reads {FORMAT_VERSION})")
        try:
            check_header_digest(d, path)
        except CorruptFileError as e:
            raise CorruptFileError(f"{e} (corrupted manifest)") from None
        try:
            if not isinstance(d["shards"], list):
                raise TypeError(f"'shards' must be a list, got {type(d['shards']).__name__}")
            if not _is_count(d["units"]):
                raise ValueError(f"'units' must be an int >= 0, got {d['units']!r}")
            if not isinstance(d["model_version"], (int, str)) or isinstance(
                    d["model_version"], bool):
                raise TypeError(f"'model_version' must be a str or int, got "
                                f"{d['model_version']!r}")
            if not isinstance(d["job"], dict) or not isinstance(d["inputs"], list) or not all(
                    isinstance(i, dict) for i in d["inputs"]):
                raise TypeError("'job' must be an object and 'inputs' a list of objects")
            shards = {}
            for s in d["shards"]:
                e = ShardEntry.from_dict(s)
                if e.index in shards or e.index >= d["units"]:
                    raise ValueError(f"shard index {e.index} repeated or not below units "
                                     f"{d['units']}")
                shards[e.index] = e
            m = cls(model_version=d["model_version"], spec=CodeSpec.from_dict(d["spec"]),
                    job=dict(d["job"]), inputs=list(d["inputs"]), units=d["units"],
                    shards=shards)
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFileError(f"{path}: corrupted manifest ({type(e).__name__}: {e})") \
                from None
        if d.get("complete") is not m.complete or d.get("count") != m.count \
                or isinstance(d.get("count"), bool) or d.get("skipped", 0) != m.skipped:
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
            why = outside_directory(directory, p)
            if why:
                return why
            if sha256_file(p) != digest:
                return f"{p}: checksum mismatch (corrupted or modified shard)"
        return None

    def verify(self, directory: Union[str, Path]) -> None:
        """Check every listed shard's files; CorruptFileError naming the first bad one."""
        for i in sorted(self.shards):
            why = self.verify_entry(directory, self.shards[i])
            if why:
                raise CorruptFileError(why)
