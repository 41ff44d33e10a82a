"""Model directories: ``config.json`` header + ``model.safetensors`` weights, never pickle.

Shared by every saved torch model (``bebr.Binarizer``; tools/compat_lab.py's
``CodeUpgrader``). The header carries the file kind (``format``), its ``format_version``,
the registered model name, the model's own fields, the weights' byte count and SHA-256, and
the SHA-256 of the header itself (``header_sha256``, over its canonical JSON without that
key); each file is written atomically.
Loading checks all of that and loads the weights strictly (names missing or unexpected keys
and wrong shapes), raising :class:`bebr.fileio.CorruptFileError` for anything off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Union

from .fileio import (HEADER_SHA_KEY, CorruptFileError, atomic_write_bytes, check_header_digest,
                     header_digest, sha256_bytes)

if TYPE_CHECKING:  # torch is imported only by the functions that take or make torch objects
    import numpy as np
    import torch
    from torch import nn

__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "write_model_dir", "read_header", "read_weights",
           "read_weights_numpy", "load_state_strict"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def write_model_dir(path, module: "nn.Module", model_name: str, header: dict) -> Path:
    """Write ``module``'s weights and ``header`` (plus the weights' size and SHA-256) into
    the directory ``path``; each file atomically. Returns the directory."""
    from safetensors.torch import save as st_save

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{p} exists and is not a directory")
    p.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    blob = st_save(state, metadata={"format": "pt", "model": model_name})
    full = dict(header, weights=WEIGHTS_NAME, weights_sha256=sha256_bytes(blob),
                weights_bytes=len(blob))
    full[HEADER_SHA_KEY] = header_digest(full)
    atomic_write_bytes(p / WEIGHTS_NAME, blob)
    atomic_write_bytes(p / CONFIG_NAME, (json.dumps(full, indent=2) + "\n").encode())
    return p


def read_header(path, fmt: str, format_version: int, what: str) -> dict:
    """Read and check ``path/config.json``: a JSON object of kind ``fmt`` at
    ``format_version``. ``what`` names the model kind in error messages."""
    p = Path(path)
    if not p.is_dir():
        raise FileNotFoundError(f"{p} is not a saved {what} directory")
    cfg_path = p / CONFIG_NAME
    try:
        header = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CorruptFileError(f"{cfg_path}: not valid JSON ({e})") from e
    if not isinstance(header, dict) or header.get("format") != fmt:
        raise CorruptFileError(f"{cfg_path}: not a bebr {what} header")
    if header.get("format_version") != format_version:
        raise CorruptFileError(f"{cfg_path}: format_version {header.get('format_version')!r}"
                               f" is not supported (this bebr reads {format_version})")
    check_header_digest(header, cfg_path)
    return header


def read_weights(path, header: dict) -> Dict[str, "torch.Tensor"]:
    """Read ``path/model.safetensors``, checking its size and SHA-256 against ``header``."""
    from safetensors.torch import load as st_load

    return _load_blob(path, header, st_load)


def read_weights_numpy(path, header: dict) -> Dict[str, "np.ndarray"]:
    """:func:`read_weights` as numpy arrays (``safetensors.numpy``; no torch)."""
    from safetensors.numpy import load as st_load

    return _load_blob(path, header, st_load)


def _load_blob(path, header: dict, st_load):
    cfg_path = Path(path) / CONFIG_NAME
    try:
        want_sha = str(header["weights_sha256"])
        want_bytes = int(header["weights_bytes"])
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptFileError(f"{cfg_path}: bad header field ({e})") from e
    wpath = Path(path) / WEIGHTS_NAME
    blob = wpath.read_bytes()
    if len(blob) != want_bytes:
        raise CorruptFileError(f"{wpath}: {len(blob)} bytes, header says {want_bytes} "
                               "(truncated or replaced file)")
    if sha256_bytes(blob) != want_sha:
        raise CorruptFileError(f"{wpath}: SHA-256 mismatch (corrupted file)")
    try:
        return st_load(blob)
    except Exception as e:  # safetensors raises its own error types
        raise CorruptFileError(f"{wpath}: unreadable safetensors ({e})") from e


def load_state_strict(module: "Union[nn.Module, Callable[[], nn.Module]]",
                      state: Dict[str, "torch.Tensor"], path, name: str) -> "nn.Module":
    """Load ``state`` into ``module`` and return it, refusing missing/unexpected keys, and any
    tensor whose shape or dtype is not the one the module (built from the header's config)
    has, or whose float values are not all finite: CorruptFileError naming the tensor.
    Nothing is cast.

    ``module`` may be a zero-argument callable building the module: it is then first built
    on the ``meta`` device (no memory) and checked, so a header whose sizes were edited
    (``hidden: 10**9``) is refused before anything that large is allocated.
    """
    import torch
    from torch import nn

    if callable(module) and not isinstance(module, nn.Module):
        with torch.device("meta"):
            _check_state(module().state_dict(), state, path, name)
        module = module()
    _check_state(module.state_dict(), state, path, name)
    module.load_state_dict(state, strict=True)
    return module


def _check_state(expected: Dict[str, "torch.Tensor"], state: Dict[str, "torch.Tensor"], path,
                 name: str) -> None:
    import torch

    wpath = Path(path) / WEIGHTS_NAME
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CorruptFileError(f"{wpath}: weights do not match {name}: missing keys "
                               f"{missing}, unexpected keys {unexpected}")
    for k in sorted(state):
        v, want = state[k], expected[k]
        if v.shape != want.shape:
            raise CorruptFileError(f"{wpath}: {k} has shape {tuple(v.shape)}, expected "
                                   f"{tuple(want.shape)} (from {CONFIG_NAME})")
        if v.dtype != want.dtype:
            raise CorruptFileError(f"{wpath}: {k} has dtype {v.dtype}, expected {want.dtype}")
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise CorruptFileError(f"{wpath}: {k} holds NaN or inf values")
