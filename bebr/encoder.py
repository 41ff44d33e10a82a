"""Torch-free serving of a trained Binarizer: ``Encoder``, ``load_model``, ``BinarizerConfig``.

An :class:`Encoder` holds a Binarizer's weights exported once into contiguous float32 arrays
and runs its inference in compiled code (``bebr._C.InferModel``: SIMD, the GIL released):
the stored codes (``encode``), the query projection (``encode_query``), the cross-version
query heads and the exact max-cosine query quantizer (``encode_query_codes``). It has the
serving API of :class:`bebr.Binarizer` (``spec``, ``version``, ``in_dim``, ``dim``, ``bits``,
``config``, ``compatible_with``, ``encode*``, ``cross_calibration``), so callers take either;
``Binarizer.encode*`` on the CPU run through it. Importing this module never imports torch.

What is computed (the guarantee). A code's sign bits are the signs of the model's
pre-activations evaluated in float64 (weights and inputs are float32, so every product is
exact; BatchNorm in eval mode with its running statistics). Small batches (and any pre-activation
the fast pass flags) are evaluated so directly, with one fixed summation order at every SIMD
level (8 float64 lanes with fused multiply-add, reduced in a fixed tree: the same bits at
every level). Batches of ``FAST_MIN_ROWS`` rows or more first take a compiled float32 pass
(register-tiled GEMMs over weights packed once at construction; a B stage without hidden
blocks multiplies its sign inputs by tables of 4-input sign patterns), step by step: a
pre-activation's sign is kept from it only if it lies more than ``FAST_MARGIN`` (2^-12)
times its step's RMS (in that row) away from 0, about 100 times the largest float32 error
(relative to that RMS) measured on random and trained models (2e-6); any other
pre-activation (in 2% of the rows on the GloVe 50x2 model, 6% on MiniLM 192x2) is evaluated
alone in float64, from its row's float64 state at that step (which the signs kept so far
determine), before the next step. So codes
are the same whatever the batch, the batch size or the SIMD level. Torch's float32 forward
(``Binarizer`` on a GPU: ``device=``) is refined the same way and gives the same codes; a
float64 torch forward (``model.double()``) agrees except where a pre-activation is within
float64 rounding (~1e-15 relative) of 0 (tests/test_inference.py). Query codes quantize the
float64 projection with the same arithmetic as :meth:`bebr.CodeSpec.quantize_angle`
(bit-identical to it). ``encode_query`` returns that projection as float32.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from . import _C
from .codes import MAX_BITS, MAX_DIM, MAX_QUERY_BITS, CodeSpec
from .fileio import CorruptFileError
from .modelfile import CONFIG_NAME, read_header, read_weights_numpy

__all__ = ["Encoder", "BinarizerConfig", "load_model", "as_float_rows", "expected_state_shapes",
           "CALIBRATION_METRICS", "IDENTITY_CALIBRATION", "FORMAT_VERSION", "MODEL_NAME",
           "FAST_MIN_ROWS", "FAST_MARGIN"]

#: format version of a saved model directory's header (``config.json``)
FORMAT_VERSION = 1
#: registered name of the recurrent binarizer in saved headers
MODEL_NAME = "recurrent_binarizer"
#: Index metrics a query head's score calibration is fitted for, in its buffer's row order.
CALIBRATION_METRICS = ("cosine", "ip")
IDENTITY_CALIBRATION = [[1.0, 0.0], [1.0, 0.0]]
#: batches of at least this many rows take the float32 pass first (module docstring)
FAST_MIN_ROWS = 16
#: a pre-activation of the float32 pass is trusted if |pre| >= FAST_MARGIN * RMS of its step
FAST_MARGIN = 2.0 ** -12
_BN_EPS = 1e-5  # nn.BatchNorm1d's default, what every bebr block uses


class UncalibratedHeadWarning(UserWarning):
    """A loaded model's cross-version query heads have no fitted score calibration (the file
    predates calibration): mixed-version rankings with those heads are uncalibrated."""


@dataclass
class BinarizerConfig:
    """Everything needed to rebuild a Binarizer's architecture."""

    in_dim: int
    dim: int
    bits: int
    hidden: int = 512
    depth: int = 1
    version: str = ""
    compatible_with: str = ""  # version id of the parent this model was trained compatible with
    # version ids of older code versions this model has a cross-version query head for
    cross_versions: List[str] = field(default_factory=list)
    cross_hidden: int = 1024
    cross_depth: int = 2
    # ensemble members of each head, aligned with cross_versions (empty: one member each)
    cross_members: List[int] = field(default_factory=list)

    def validate(self) -> None:
        for name in ("in_dim", "dim", "bits", "hidden", "depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(v).__name__}")
        if self.in_dim < 1:
            raise ValueError(f"in_dim must be >= 1, got {self.in_dim}")
        if not 1 <= self.dim <= MAX_DIM:
            raise ValueError(f"dim must be in [1, {MAX_DIM}], got {self.dim}")
        if not 1 <= self.bits <= MAX_BITS:
            raise ValueError(f"bits must be in [1, {MAX_BITS}], got {self.bits}")
        if self.hidden < 1 or self.depth < 0:
            raise ValueError(f"need hidden >= 1 and depth >= 0, got {self.hidden}, {self.depth}")
        if not isinstance(self.version, str):
            raise TypeError(f"version must be a str, got {type(self.version).__name__}")
        if not isinstance(self.compatible_with, str):
            raise TypeError(f"compatible_with must be a str, got "
                            f"{type(self.compatible_with).__name__}")
        if not isinstance(self.cross_versions, list) or not all(
                isinstance(v, str) and v for v in self.cross_versions) \
                or len(set(self.cross_versions)) != len(self.cross_versions):
            raise ValueError(f"cross_versions must be a list of distinct non-empty str, got "
                             f"{self.cross_versions!r}")
        for name in ("cross_hidden", "cross_depth"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not isinstance(self.cross_members, list) or not all(
                isinstance(m, int) and not isinstance(m, bool) and m >= 1
                for m in self.cross_members) \
                or len(self.cross_members) not in (0, len(self.cross_versions)):
            raise ValueError(f"cross_members must be empty or one positive int per "
                             f"cross_versions entry, got {self.cross_members!r}")

    def members_of(self, i: int) -> int:
        """Ensemble members of head ``i``."""
        return self.cross_members[i] if self.cross_members else 1


def as_float_rows(x, in_dim: Optional[int], name: str = "x") -> np.ndarray:
    """Validate an (n, D) real array-like (memmaps stay memmaps, torch tensors are copied to
    numpy); raises TypeError/ValueError."""
    if hasattr(x, "detach") and type(x).__module__.startswith("torch"):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype.kind not in "fiu" or x.dtype == np.bool_:
        raise TypeError(f"{name} must be a real numeric array, got dtype {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-d (n, D), got shape {x.shape}")
    if in_dim is not None and x.shape[1] != in_dim:
        raise ValueError(f"{name} has {x.shape[1]} columns, the model expects in_dim={in_dim}")
    return x


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def _check_threads(threads) -> int:
    if threads is None:
        return 1
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be a positive int or None, got {threads!r}")
    return int(threads)


def _batches(arr: np.ndarray, batch_size: int):
    """(start, float32 C-contiguous finite chunk) over the rows of a validated array."""
    for s in range(0, arr.shape[0], batch_size):
        chunk = np.ascontiguousarray(arr[s:s + batch_size], dtype=np.float32)
        if not _C.all_finite(chunk):
            raise ValueError(f"x has NaN or inf values in rows [{s}, {s + len(chunk)})")
        yield s, chunk


# --------------------------------------------------------------------------- weights
def _mlp_keys(prefix: str, a: int, c: int, hidden: int, depth: int) -> Dict[str, tuple]:
    out = {f"{prefix}skip.weight": (c, a)}
    for i in range(depth):
        b = f"{prefix}blocks.{i}."
        ain = a if i == 0 else c
        out.update({b + "fc1.weight": (hidden, ain), b + "fc1.bias": (hidden,),
                    b + "bn.weight": (hidden,), b + "bn.bias": (hidden,),
                    b + "bn.running_mean": (hidden,), b + "bn.running_var": (hidden,),
                    b + "bn.num_batches_tracked": (), b + "fc2.weight": (c, hidden),
                    b + "fc2.bias": (c,)})
    return out


def expected_state_shapes(cfg: BinarizerConfig) -> Dict[str, tuple]:
    """The state dict keys of a Binarizer of config ``cfg`` and their shapes."""
    out = {"in_mean": (cfg.in_dim,)}
    out.update(_mlp_keys("W.", cfg.in_dim, cfg.dim, cfg.hidden, cfg.depth))
    for t in range(cfg.bits - 1):
        out.update(_mlp_keys(f"B.{t}.", cfg.dim, cfg.in_dim, cfg.hidden, cfg.depth))
        out.update(_mlp_keys(f"R.{t}.", cfg.in_dim, cfg.dim, cfg.hidden, cfg.depth))
    for i in range(len(cfg.cross_versions)):
        out[f"cross.{i}.mean"] = (cfg.in_dim,)
        out[f"cross.{i}.calibration"] = (len(CALIBRATION_METRICS), 2)
        for k in range(cfg.members_of(i)):
            out.update(_mlp_keys(f"cross.{i}.nets.{k}.", cfg.in_dim, cfg.dim, cfg.cross_hidden,
                                 cfg.cross_depth))
    return out


def read_config(path: Path, header: dict) -> Tuple[BinarizerConfig, List[str]]:
    """The checked config of a saved Binarizer's header (``read_header`` of ``path``) and its
    ``uncalibrated_heads`` mark; CorruptFileError for a bad or inconsistent field. Shared by
    ``Encoder.load`` and ``Binarizer.load``."""
    cfg_path = Path(path) / CONFIG_NAME
    try:
        config = BinarizerConfig(**header["config"])
        config.validate()
        spec = CodeSpec.from_dict(header["code_spec"])
    except (KeyError, TypeError, ValueError) as e:
        raise CorruptFileError(f"{cfg_path}: bad header field ({e})") from e
    if spec != CodeSpec(config.dim, config.bits) or header.get("version") != config.version:
        raise CorruptFileError(f"{cfg_path}: code_spec/version disagree with the config")
    marked = header.get("uncalibrated_heads", [])
    if not isinstance(marked, list) or not all(
            isinstance(v, str) and v in config.cross_versions for v in marked):
        raise CorruptFileError(f"{cfg_path}: uncalibrated_heads {marked!r} must list "
                               f"versions of cross_versions {config.cross_versions}")
    return config, marked


def uncalibrated_message(path, versions) -> str:
    """The warning text for heads of ``versions`` loaded without a calibration."""
    return (f"{path}: the query heads for versions {list(versions)} have no score "
            "calibration (written before heads were calibrated): their scores use the "
            "identity calibration, so a search mixing those versions with this one ranks "
            "them on different scales; retrain the heads (bebr.train_cross_queries) to "
            "calibrate them")


def _upgrade_legacy(state: Dict[str, np.ndarray], cfg: BinarizerConfig) -> None:
    """Files from before head ensembles / calibration (as ``Binarizer.load``)."""
    for i in range(len(cfg.cross_versions)):
        state.setdefault(f"cross.{i}.calibration",
                         np.asarray(IDENTITY_CALIBRATION, dtype=np.float32))
        legacy = f"cross.{i}.net."
        for key in [k for k in state if k.startswith(legacy)]:
            state[f"cross.{i}.nets.0." + key[len(legacy):]] = state.pop(key)


def _check_state(state: Mapping[str, np.ndarray], cfg: BinarizerConfig, where: str) -> None:
    want = expected_state_shapes(cfg)
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    if missing or unexpected:
        raise CorruptFileError(f"{where}: weights do not match {MODEL_NAME}: missing keys "
                               f"{missing}, unexpected keys {unexpected}")
    for k, shape in want.items():
        if tuple(np.shape(state[k])) != shape:
            raise CorruptFileError(f"{where}: {k} has shape {tuple(np.shape(state[k]))}, "
                                   f"expected {shape}")


def _mlp_args(state, prefix: str, depth: int) -> tuple:
    f32 = lambda k: np.ascontiguousarray(state[prefix + k], dtype=np.float32)
    blocks = []
    for i in range(depth):
        b = f"blocks.{i}."
        blocks.append((f32(b + "fc1.weight"), f32(b + "fc1.bias"), f32(b + "bn.running_mean"),
                       f32(b + "bn.running_var"), f32(b + "bn.weight"), f32(b + "bn.bias"),
                       f32(b + "fc2.weight"), f32(b + "fc2.bias"), _BN_EPS))
    return (f32("skip.weight"), blocks)


def _row_margins(pre: np.ndarray) -> np.ndarray:
    """Per row: True where some pre-activation is closer to 0 than FAST_MARGIN x its RMS."""
    rms = np.sqrt(np.einsum("ij,ij->i", pre, pre, dtype=np.float64) / pre.shape[1])
    return (np.abs(pre) < (FAST_MARGIN * rms)[:, None].astype(np.float32)).any(axis=1)


# --------------------------------------------------------------------------- Encoder
class ConfigView:
    """What :class:`Encoder` and ``bebr.Binarizer`` read the same way from their ``config``
    (a :class:`BinarizerConfig`): the shape and version properties, the repr, and the lookup
    of a query head by the version it searches."""

    config: BinarizerConfig

    @property
    def in_dim(self) -> int:
        return self.config.in_dim

    @property
    def dim(self) -> int:
        return self.config.dim

    @property
    def bits(self) -> int:
        return self.config.bits

    @property
    def version(self) -> str:
        """The version id of the codes this model makes (uuid hex by default, or the name
        given at construction)."""
        return self.config.version

    @property
    def compatible_with(self) -> str:
        """Version id of the model whose code space this one was trained to share ("" if none)."""
        return self.config.compatible_with

    def __repr__(self) -> str:
        c = self.config
        return (f"{type(self).__name__}(in_dim={c.in_dim}, dim={c.dim}, bits={c.bits}, "
                f"hidden={c.hidden}, depth={c.depth}, version={c.version!r})")

    def _head_index(self, target_version: str) -> int:
        """Position of the query head into ``target_version``'s code space in
        ``config.cross_versions``; ValueError if there is none."""
        if target_version not in self.config.cross_versions:
            raise ValueError(f"model {self.version!r} has no query head for version "
                             f"{target_version!r}; it has {self.config.cross_versions}")
        return self.config.cross_versions.index(target_version)


class Encoder(ConfigView):
    """A trained Binarizer for serving: the same encoding API, compiled, without torch.

    Build one with :meth:`load` (a directory saved by ``Binarizer.save``) or
    :meth:`from_binarizer` (``Binarizer.to_encoder()``). Immutable; thread-safe.
    ``threads`` (keyword, default 1) is the number of compiled workers of one call (the
    caller and helper threads, which take work items of 48 rows as they come free).
    """

    model_name = MODEL_NAME

    def __init__(self, config: BinarizerConfig, state: Mapping[str, np.ndarray], *,
                 where: str = "state") -> None:
        if not isinstance(config, BinarizerConfig):
            raise TypeError(f"config must be a BinarizerConfig, got {type(config).__name__}")
        config.validate()
        state = {k: np.asarray(v) for k, v in state.items()}
        _upgrade_legacy(state, config)
        _check_state(state, config, where)
        for k, v in state.items():
            if not k.endswith("num_batches_tracked") and not np.isfinite(v).all():
                raise CorruptFileError(f"{where}: {k} has NaN or inf weights")
        self.config = BinarizerConfig(**asdict(config))
        self._state = state  # for pickling (__reduce__)
        self.uncalibrated_heads: List[str] = []  # set by load for files without calibrations
        self.spec = CodeSpec(config.dim, config.bits)
        cfg = self.config
        self._in_mean = np.ascontiguousarray(state["in_mean"], dtype=np.float32)
        self._calibration = [np.asarray(state[f"cross.{i}.calibration"], dtype=np.float64)
                             for i in range(len(cfg.cross_versions))]
        heads = [(np.ascontiguousarray(state[f"cross.{i}.mean"], dtype=np.float32),
                  [_mlp_args(state, f"cross.{i}.nets.{k}.", cfg.cross_depth)
                   for k in range(cfg.members_of(i))])
                 for i in range(len(cfg.cross_versions))]
        self._core = _C.InferModel(
            cfg.in_dim, cfg.dim, cfg.bits, self._in_mean,
            _mlp_args(state, "W.", cfg.depth),
            [_mlp_args(state, f"B.{t}.", cfg.depth) for t in range(cfg.bits - 1)],
            [_mlp_args(state, f"R.{t}.", cfg.depth) for t in range(cfg.bits - 1)], heads)

    def __reduce__(self):
        return (_rebuild_encoder, (asdict(self.config), self._state))

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(cls, path) -> "Encoder":
        """Load a directory saved by ``Binarizer.save`` (config.json + model.safetensors):
        checksummed, strict about keys and shapes; raises :class:`CorruptFileError`
        (a ValueError) for anything off and FileNotFoundError for a missing directory."""
        p = Path(path)
        header = read_header(p, "bebr.binarizer", FORMAT_VERSION, "Binarizer")
        cfg_path = p / CONFIG_NAME
        if header.get("model") != MODEL_NAME:
            raise CorruptFileError(f"{cfg_path}: unknown model name {header.get('model')!r}; "
                                   f"this bebr serves {MODEL_NAME!r}")
        config, marked = read_config(p, header)
        state = read_weights_numpy(p, header)
        missing = {v for i, v in enumerate(config.cross_versions)
                   if f"cross.{i}.calibration" not in state}
        enc = cls(config, state, where=str(p / "model.safetensors"))
        enc.uncalibrated_heads = [v for v in config.cross_versions
                                  if v in missing or v in marked]
        if enc.uncalibrated_heads:  # as Binarizer.load: loadable, marked and named
            warnings.warn(UncalibratedHeadWarning(uncalibrated_message(p, enc.uncalibrated_heads)),
                          stacklevel=2)
        return enc

    @classmethod
    def from_binarizer(cls, model) -> "Encoder":
        """Export a (torch) ``Binarizer``'s current weights (copied; later training of the
        model does not change this encoder)."""
        state = {k: v.detach().cpu().numpy().copy() for k, v in model.state_dict().items()}
        return cls(model.config, state, where=f"{model!r}")

    # ------------------------------------------------------------------ heads
    def _head(self, target: Optional[str]) -> int:
        return -1 if target is None else self._head_index(target)

    def cross_calibration(self, target_version: str, metric: str = "cosine") -> Tuple[float, float]:
        """``(scale, shift)`` of the query head into ``target_version`` for an index of
        ``metric`` ("cosine" or "ip"), as ``Binarizer.cross_calibration``."""
        if metric not in CALIBRATION_METRICS:
            raise ValueError(f"metric must be one of {CALIBRATION_METRICS}, got {metric!r}")
        a, b = self._calibration[self._head(target_version)][CALIBRATION_METRICS.index(metric)]
        return float(a), float(b)

    # ------------------------------------------------------------------ encode
    def encode_levels(self, x, batch_size: int = 8192, *, threads: Optional[int] = None) -> np.ndarray:
        """Levels (n, dim) uint8 in [0, 2^bits): level = sum_t beta_t 2^(bits-1-t)."""
        arr = as_float_rows(x, self.in_dim)
        bs = _check_batch_size(batch_size)
        th = _check_threads(threads)
        out = np.empty((arr.shape[0], self.dim), dtype=np.uint8)
        for s, chunk in _batches(arr, bs):
            out[s:s + len(chunk)] = self._levels(chunk, th)
        return out

    def _levels(self, x: np.ndarray, threads: int) -> np.ndarray:
        margin = FAST_MARGIN if x.shape[0] >= FAST_MIN_ROWS else 0.0
        return self._core.encode_levels(x, threads, margin)

    def encode(self, x, batch_size: int = 8192, *, threads: Optional[int] = None) -> np.ndarray:
        """Packed uint8 codes (n, spec.code_bytes) in ``CodeSpec.pack`` format, streamed in
        batches of ``batch_size`` rows (x may be a memmap)."""
        arr = as_float_rows(x, self.in_dim)
        bs = _check_batch_size(batch_size)
        th = _check_threads(threads)
        out = np.empty((arr.shape[0], self.spec.code_bytes), dtype=np.uint8)
        for s, chunk in _batches(arr, bs):
            margin = FAST_MARGIN if chunk.shape[0] >= FAST_MIN_ROWS else 0.0
            out[s:s + len(chunk)] = self._core.encode_codes(chunk, th, margin)
        return out

    def encode_values(self, x, batch_size: int = 8192, *, threads: Optional[int] = None) -> np.ndarray:
        """Float32 code values (n, dim), i.e. ``spec.values(encode(x))``."""
        return self.spec.level_values()[self.encode_levels(x, batch_size, threads=threads)]

    def encode_query(self, x, batch_size: int = 8192, *, threads: Optional[int] = None,
                     target: Optional[str] = None) -> np.ndarray:
        """The asymmetric query representation (n, dim) float32: the first-step projection
        ``W(x - in_mean)`` before the sign (``target``: a query head's direction instead),
        evaluated in float64."""
        return self._query(x, batch_size, threads, target).astype(np.float32)

    def _query(self, x, batch_size, threads, target) -> np.ndarray:
        arr = as_float_rows(x, self.in_dim)
        bs = _check_batch_size(batch_size)
        th = _check_threads(threads)
        head = self._head(target)
        out = np.empty((arr.shape[0], self.dim), dtype=np.float64)
        for s, chunk in _batches(arr, bs):
            out[s:s + len(chunk)] = self._core.encode_query(chunk, head, th)
        return out

    def encode_query_codes(self, x, bits: Optional[int] = None, batch_size: int = 8192,
                           target: Optional[str] = None, *,
                           threads: Optional[int] = None) -> np.ndarray:
        """Packed query codes at ``bits`` bits per dimension (default: the model's), for
        ``Index.search(codes, k, query_bits=bits)``: the code closest in angle to the query
        projection (``CodeSpec.quantize_angle``), or with ``target`` to the direction of the
        query head into that older version's code space (``Binarizer.encode_query_codes``)."""
        bits = self.bits if bits is None else bits
        if (type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 2
                and type(bits) is int and 1 <= bits <= MAX_QUERY_BITS
                and type(batch_size) is int and 0 < x.shape[0] <= batch_size
                and x.shape[1] == self.in_dim and x.flags.c_contiguous
                and (threads is None or (type(threads) is int and threads >= 1))):
            # the common call (float32 rows, one batch): the checks below, cheaply
            if not _C.all_finite(x):
                raise ValueError(f"x has NaN or inf values in rows [0, {len(x)})")
            return self._core.encode_query_codes(x, bits, self._head(target), threads or 1)
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) \
                or not 1 <= bits <= MAX_QUERY_BITS:
            raise ValueError(f"bits must be an int in [1, {MAX_QUERY_BITS}], got {bits!r}")
        arr = as_float_rows(x, self.in_dim)
        bs = _check_batch_size(batch_size)
        th = _check_threads(threads)
        head = self._head(target)
        if 0 < arr.shape[0] <= bs:  # one batch (a single query): the core's array is the result
            chunk = np.ascontiguousarray(arr, dtype=np.float32)
            if not _C.all_finite(chunk):  # as _batches checks, without numpy's temporaries
                raise ValueError(f"x has NaN or inf values in rows [0, {len(chunk)})")
            return self._core.encode_query_codes(chunk, int(bits), head, th)
        out = np.empty((arr.shape[0], int(bits) * self.spec.plane_bytes), dtype=np.uint8)
        for s, chunk in _batches(arr, bs):
            out[s:s + len(chunk)] = self._core.encode_query_codes(chunk, int(bits), head, th)
        return out


def _rebuild_encoder(config: dict, state: dict) -> Encoder:
    return Encoder(BinarizerConfig(**config), state)


def load_model(path) -> Encoder:
    """The torch-free :class:`Encoder` of a model directory saved by ``Binarizer.save``."""
    return Encoder.load(path)
