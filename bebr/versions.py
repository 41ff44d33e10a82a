"""Version identity: one name for a model version in Python, the CLI and every file.

A version is the model's version string (``Binarizer.version``, e.g. ``"minilm-v1"`` or a
uuid hex id). The C++ index stores a 31-bit int *tag* per item; :func:`version_tag` maps a
version string to its tag (a decimal string to its number, anything else to the first 31
bits of its SHA-256), so a tag never needs a lookup table to be found again, and index
files written by earlier bebr releases (which stored only tags) keep resolving.

A :class:`VersionRegistry` records, per tag, the version string, its lineage (the version
ids it was trained compatible with, parent first) and its code spec; ``bebr.Index`` keeps one
and saves it in the index file header (docs/FORMAT.md, "Index file"). Plain ints keep
working as versions (they are their own tags and have no registry entry).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from .codes import CodeSpec
from .fileio import CorruptFileError

__all__ = ["Version", "VersionInfo", "VersionRegistry", "version_tag"]

#: What the API takes as a version: a model version string, or a plain int tag.
Version = Union[str, int]

MAX_TAG = 2**31


def version_tag(version: Version) -> int:
    """The int tag under which ``bebr.Index`` stores items of model version ``version``:
    the number itself for a non-negative int (or decimal string) below 2**31, else the first
    31 bits of the SHA-256 of the version string (a uuid hex id maps to a stable tag)."""
    if isinstance(version, bool) or not isinstance(version, (str, int, np.integer)):
        raise TypeError(f"version must be a str (the model's version id) or an int tag, got "
                        f"{type(version).__name__}")
    if not isinstance(version, str):
        v = int(version)
        if not 0 <= v < MAX_TAG:
            raise ValueError(f"an int version tag must be in [0, 2**31), got {v}")
        return v
    if not version:
        raise ValueError("version must be a non-empty str")
    if version.isdigit() and int(version) < MAX_TAG:
        return int(version)
    return int(hashlib.sha256(version.encode()).hexdigest()[:8], 16) & 0x7FFFFFFF


@dataclass(frozen=True)
class VersionInfo:
    """One registered version: its string, tag, lineage (parents' version ids, nearest
    first) and the spec of its codes."""

    version: str
    tag: int
    lineage: Tuple[str, ...] = ()
    spec: Optional[CodeSpec] = None

    def to_dict(self) -> dict:
        d = {"version": self.version, "tag": self.tag, "lineage": list(self.lineage)}
        if self.spec is not None:
            d["spec"] = self.spec.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: Any) -> "VersionInfo":
        """Parse one header entry; CorruptFileError names what is wrong."""
        if not isinstance(d, dict) or not {"version", "tag", "lineage"} <= set(d) \
                or not set(d) <= {"version", "tag", "lineage", "spec"}:
            raise CorruptFileError(f"version entry must have keys version, tag, lineage "
                                   f"(and optionally spec), got {d!r}")
        name, tag, lineage = d["version"], d["tag"], d["lineage"]
        if not isinstance(name, str) or not name:
            raise CorruptFileError(f"version entry: version must be a non-empty str, got {name!r}")
        if isinstance(tag, bool) or not isinstance(tag, int) or tag != version_tag(name):
            raise CorruptFileError(f"version entry {name!r}: tag {tag!r} is not "
                                   f"version_tag({name!r}) = {version_tag(name)}")
        if not isinstance(lineage, list) or not all(isinstance(p, str) and p for p in lineage):
            raise CorruptFileError(f"version entry {name!r}: lineage must be a list of "
                                   f"version ids, got {lineage!r}")
        spec = None
        if "spec" in d:
            try:
                spec = CodeSpec.from_dict(d["spec"])
            except (TypeError, ValueError) as e:
                raise CorruptFileError(f"version entry {name!r}: bad spec ({e})") from None
        return cls(name, tag, tuple(lineage), spec)


@dataclass
class VersionRegistry:
    """Version strings of the tags an index holds (tag -> :class:`VersionInfo`)."""

    by_tag: Dict[int, VersionInfo] = field(default_factory=dict)

    def register(self, version: str, *, lineage: Iterable[str] = (),
                 spec: Optional[CodeSpec] = None) -> VersionInfo:
        """Register ``version`` (idempotent; a later call may add lineage). ValueError if
        another version string already holds its tag (a 31-bit hash collision)."""
        if not isinstance(version, str) or not version:
            raise TypeError(f"version must be a non-empty str, got {version!r}")
        lin = tuple(lineage)
        if not all(isinstance(p, str) and p for p in lin):
            raise TypeError(f"lineage must be version id strings, got {lin!r}")
        tag = version_tag(version)
        old = self.by_tag.get(tag)
        if old is not None and old.version != version:
            raise ValueError(f"version {version!r} has the same tag {tag} as the registered "
                             f"version {old.version!r}; rename one of them")
        if old is not None and not lin:
            lin = old.lineage
        info = VersionInfo(version, tag, lin, spec if spec is not None else
                           (old.spec if old is not None else None))
        self.by_tag[tag] = info
        return info

    def tag_of(self, version: Version) -> int:
        """The tag of a version string or int (no registration needed: tags are hashes)."""
        return version_tag(version)

    def name_of(self, tag: int) -> Version:
        """The registered version string of ``tag``, or the int itself if none."""
        info = self.by_tag.get(int(tag))
        return info.version if info is not None else int(tag)

    def drop(self, version: Version) -> None:
        """Forget a version's entry (KeyError-free: absent is fine)."""
        self.by_tag.pop(version_tag(version), None)

    def info(self, version: Version) -> Optional[VersionInfo]:
        return self.by_tag.get(version_tag(version))

    def to_list(self) -> List[dict]:
        return [self.by_tag[t].to_dict() for t in sorted(self.by_tag)]

    @classmethod
    def from_list(cls, entries: Any) -> "VersionRegistry":
        if not isinstance(entries, list):
            raise CorruptFileError(f"versions must be a list of entries, got "
                                   f"{type(entries).__name__}")
        reg = cls()
        for e in entries:
            info = VersionInfo.from_dict(e)
            if info.tag in reg.by_tag:
                raise CorruptFileError(f"version tag {info.tag} is registered twice")
            reg.by_tag[info.tag] = info
        return reg

    def copy(self) -> "VersionRegistry":
        return VersionRegistry(dict(self.by_tag))
