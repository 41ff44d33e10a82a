"""Atomic file writes and checksums: the one place every bebr file goes through.

A file is written to a temporary sibling, flushed and fsynced, then renamed over the target
(``os.replace`` is atomic on POSIX and Windows), so a crash mid-write leaves either the old
file or the complete new one, never a half-written file under the final name. The temporary
file is created with mode ``0o666`` filtered by the process umask, as ``open()`` would create
the target (``tempfile.mkstemp`` would make every output ``0o600``: the mode survives the
rename); directories are made with ``0o777`` filtered by the umask (``Path.mkdir``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator, Union

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["atomic_writer", "atomic_write_bytes", "sha256_bytes", "sha256_file",
           "CorruptFileError", "HEADER_SHA_KEY", "header_digest", "check_header_digest"]


class CorruptFileError(ValueError):
    """A bebr file is truncated, corrupted, or not the format (or version) it claims to be."""


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not supported on this platform / filesystem
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _create_temp(directory: Path, name: str):
    """A new, exclusively created ``directory/.name.XXXX.tmp``: (fd, path). Mode 0o666 & ~umask
    (the kernel applies the umask, so no process-wide ``os.umask`` call is needed)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) \
        | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {directory / name}")


@contextmanager
def atomic_writer(path: PathLike) -> Iterator[BinaryIO]:
    """Context manager yielding a binary file; on clean exit it atomically becomes ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    directory = target.parent if str(target.parent) else Path(".")
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(directory, target.name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_writer(path) as f:
        f.write(data)


def sha256_bytes(data: Union[bytes, bytearray, memoryview]) -> str:
    """Hex SHA-256 of a bytes-like object."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: PathLike, chunk_bytes: int = 1 << 22) -> str:
    """Hex SHA-256 of a file, streamed in chunks (bounded memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_bytes)
            if not chunk:
                break
            h.update(chunk)
    return h.hexdigest()


HEADER_SHA_KEY = "header_sha256"


def header_digest(header: dict) -> str:
    """SHA-256 of a JSON header's canonical form (sorted keys, no spaces), without its own
    ``header_sha256`` key: a header carries it so that an edited or bit-flipped field
    (``"dim": 30`` -> ``31``, a changed version id) is refused, not silently believed."""
    body = {k: v for k, v in header.items() if k != HEADER_SHA_KEY}
    return sha256_bytes(json.dumps(body, sort_keys=True, separators=(",", ":"),
                                   ensure_ascii=True).encode())


def check_header_digest(header: dict, path) -> None:
    """Refuse ``header`` (read from ``path``) if its ``header_sha256`` does not match; files
    from before the key existed (no key) pass."""
    want = header.get(HEADER_SHA_KEY)
    if want is None:
        return
    if not isinstance(want, str) or header_digest(header) != want:
        raise CorruptFileError(f"{path}: header checksum mismatch (edited or corrupted "
                               "header)")
