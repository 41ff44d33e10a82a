"""Recurrent binarization model (BEBR, REFERENCE.md section 1): ``Binarizer``.

Forward pass for input x (n, D), output ``bits`` sign vectors of ``dim`` dims:
    b_0 = sign(W(x));  c_0 = b_0
    for t = 1 .. bits-1:
        x_hat_t = normalize(B_t(c_{t-1}))        (reconstruction of x from the code so far)
        r_t     = x - x_hat_t
        b_t     = sign(R_t(r_t))
        c_t     = c_{t-1} + 2^-t b_t
W, B_t, R_t are residual MLP stacks (``ResidualMLP``). sign() is straight-through: forward
sign (0 -> +1), backward passes the gradient where |pre-activation| <= 1.

Code layout: the level of dimension j is ``sum_t beta_t 2^(bits-1-t)`` with ``beta_t = b_t > 0``,
so the code value ``(2 l - (2^bits-1)) / 2^(bits-1)`` equals ``c_{bits-1}``; packed codes are
exactly ``CodeSpec(dim, bits).pack(levels)`` (docs/FORMAT.md section 1).

Saved form (a directory): ``config.json`` (format version, registered model name, config,
code spec, version id, SHA-256 of the weights file) + ``model.safetensors``. No pickle.
"""

from __future__ import annotations

import uuid
import warnings
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .codes import MAX_QUERY_BITS, CodeSpec
from .encoder import (CALIBRATION_METRICS, FORMAT_VERSION, IDENTITY_CALIBRATION, BinarizerConfig,
                      ConfigView, Encoder, UncalibratedHeadWarning, _row_margins)
from .encoder import as_float_rows as _as_float_rows
from .fileio import CorruptFileError
from .modelfile import CONFIG_NAME, load_state_strict, read_header, read_weights, write_model_dir
from .encoder import read_config, uncalibrated_message

__all__ = ["Binarizer", "BinarizerConfig", "BinarizerOutput", "QueryHead", "ResidualMLP", "sign_ste",
           "MODEL_REGISTRY", "register_model", "FORMAT_VERSION", "UncalibratedHeadWarning"]


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * (x.abs() <= 1).to(g.dtype)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Sign with a straight-through gradient (passed where |x| <= 1); sign(0) = +1."""
    return _SignSTE.apply(x)


class MLP(nn.Module):
    """Linear(a, h) -> BatchNorm1d(h) -> ReLU -> Linear(h, c)."""

    def __init__(self, a: int, c: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(a, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, c)

    def forward(self, x):
        return self.fc2(F.relu(self.bn(self.fc1(x))))


class ResidualMLP(nn.Module):
    """Map a -> c: a linear skip plus ``depth`` MLP blocks with skip connections.

    y = skip(x) + MLP_0(x);  y = y + MLP_i(y) for i = 1 .. depth-1.  depth = 0: linear only.
    """

    def __init__(self, a: int, c: int, hidden: int, depth: int):
        super().__init__()
        self.skip = nn.Linear(a, c, bias=False)
        self.blocks = nn.ModuleList(
            [MLP(a if i == 0 else c, c, hidden) for i in range(depth)])
        for blk in self.blocks:  # start close to the linear map: residual branches small
            nn.init.normal_(blk.fc2.weight, std=0.01 / max(1, hidden) ** 0.5)
            nn.init.zeros_(blk.fc2.bias)

    def forward(self, x):
        y = self.skip(x)
        for i, blk in enumerate(self.blocks):
            y = y + blk(x if i == 0 else y)
        return y


class QueryHead(nn.Module):
    """Cross-version query head: L2-normalise, subtract the training mean (``mean``, set by
    the trainer; anisotropic embeddings such as MiniLM's CLS token share a large common
    direction), then a :class:`ResidualMLP` to the target version's code dims.

    ``calibration`` (buffer ``[[scale, shift] for "cosine", [scale, shift] for "ip"]``,
    identity until the trainer fits it): maps the scores of this head's query codes against
    the target version's codes onto the scale of the model's own query codes against its own
    codes, for one merged ranking (``Index.search(version_calibration=)``)."""

    def __init__(self, a: int, c: int, hidden: int, depth: int, members: int = 1):
        super().__init__()
        self.register_buffer("mean", torch.zeros(a))
        self.register_buffer("calibration", torch.tensor(IDENTITY_CALIBRATION))
        # an ensemble of ``members`` independently trained MLPs; the query direction is the
        # mean of their unit outputs (one member: its output as is)
        self.nets = nn.ModuleList([ResidualMLP(a, c, hidden, depth) for _ in range(members)])

    def member(self, k: int, x):
        """Output of member ``k`` alone (what the trainer fits)."""
        return self.nets[k](F.normalize(x, dim=1) - self.mean)

    def forward(self, x):
        if len(self.nets) == 1:
            return self.member(0, x)
        xc = F.normalize(x, dim=1) - self.mean
        return torch.stack([F.normalize(n(xc), dim=1) for n in self.nets]).mean(0)


@dataclass
class BinarizerOutput:
    """Forward result. ``codes``: differentiable code values c (n, dim) in the level grid;
    ``bits``: the per-step sign tensors b_t (n, dim) in {-1, +1}; ``pre``: the pre-activations
    of each step; ``recon``: the normalised reconstructions x_hat_t, t = 1 .. bits-1."""

    codes: torch.Tensor
    bits: List[torch.Tensor] = field(default_factory=list)
    pre: List[torch.Tensor] = field(default_factory=list)
    recon: List[torch.Tensor] = field(default_factory=list)


MODEL_REGISTRY: Dict[str, type] = {}
# Binarizer -> (weights fingerprint, its exported Encoder): Binarizer.to_encoder's cache,
# outside the module so that copying or pickling a model never carries it
_ENCODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def register_model(name: str):
    """Class decorator: register a model class under ``name`` for :meth:`Binarizer.load`."""
    def deco(cls):
        if name in MODEL_REGISTRY and MODEL_REGISTRY[name] is not cls:
            raise ValueError(f"model name {name!r} already registered")
        MODEL_REGISTRY[name] = cls
        cls.model_name = name
        return cls
    return deco


@register_model("recurrent_binarizer")
class Binarizer(ConfigView, nn.Module):
    """Recurrent binarization: float embeddings (n, in_dim) -> multi-bit codes (dim x bits).

    ``forward`` (training) returns a :class:`BinarizerOutput` with straight-through code values;
    ``encode`` returns packed uint8 codes in ``CodeSpec(dim, bits).pack`` format.
    """

    model_name = "recurrent_binarizer"

    def __init__(self, in_dim: int, dim: int, bits: int, *, hidden: int = 512, depth: int = 1,
                 version: Optional[str] = None, compatible_with: str = "",
                 cross_versions: Sequence[str] = (), cross_hidden: int = 1024,
                 cross_depth: int = 2, cross_members: Sequence[int] = ()):
        super().__init__()
        cfg = BinarizerConfig(in_dim, dim, bits, hidden, depth,
                              version if version is not None else uuid.uuid4().hex,
                              compatible_with, [], cross_hidden, cross_depth)
        cfg.validate()
        self.config = cfg
        self.spec = CodeSpec(dim, bits)
        self.W = ResidualMLP(in_dim, dim, hidden, depth)
        self.B = nn.ModuleList([ResidualMLP(dim, in_dim, hidden, depth) for _ in range(bits - 1)])
        self.R = nn.ModuleList([ResidualMLP(in_dim, dim, hidden, depth) for _ in range(bits - 1)])
        # Per-dimension input normalisation (set from data by the trainer; identity by default).
        self.register_buffer("in_mean", torch.zeros(in_dim))
        # Cross-version query heads (QueryHead): cross[i] maps an input to a query direction in the code
        # space of version config.cross_versions[i] (bebr.compat.train_cross_queries).
        self.cross = nn.ModuleList()
        self.uncalibrated_heads: List[str] = []  # set by load for files without calibrations
        members = list(cross_members) or [1] * len(cross_versions)
        if len(members) != len(cross_versions):
            raise ValueError(f"cross_members must give one count per cross version, got "
                             f"{list(cross_members)} for {list(cross_versions)}")
        for v, m in zip(cross_versions, members):
            self.add_cross_head(v, m)

    def add_cross_head(self, target_version: str, members: int = 1) -> "QueryHead":
        """A fresh query head (an ensemble of ``members`` MLPs) for the code space of
        ``target_version``, replacing any."""
        if not isinstance(target_version, str) or not target_version:
            raise ValueError("target_version must be a non-empty str")
        if isinstance(members, bool) or not isinstance(members, (int, np.integer)) \
                or members < 1:
            raise ValueError(f"members must be a positive int, got {members!r}")
        head = QueryHead(self.in_dim, self.dim, self.config.cross_hidden,
                         self.config.cross_depth, int(members))
        cfg = self.config
        counts = [cfg.members_of(i) for i in range(len(cfg.cross_versions))]
        if target_version in cfg.cross_versions:
            i = cfg.cross_versions.index(target_version)
            self.cross[i] = head
            counts[i] = int(members)
        else:
            cfg.cross_versions.append(target_version)
            self.cross.append(head)
            counts.append(int(members))
        cfg.cross_members = counts if any(c != 1 for c in counts) else []
        return head

    def cross_head(self, target_version: str) -> "QueryHead":
        """The query head into ``target_version``'s code space; ValueError if there is none."""
        return self.cross[self._head_index(target_version)]

    def cross_calibration(self, target_version: str, metric: str = "cosine") -> Tuple[float, float]:
        """``(scale, shift)`` of the query head into ``target_version`` for an index of
        ``metric`` ("cosine" or "ip"): its scores map to ``scale * score + shift`` on the
        scale of this model's own query codes against its own codes
        (``Index.search(..., version_calibration={tag: ...})``); (1, 0) if never fitted."""
        if metric not in CALIBRATION_METRICS:
            raise ValueError(f"metric must be one of {CALIBRATION_METRICS}, got {metric!r}")
        a, b = self.cross_head(target_version).calibration[
            CALIBRATION_METRICS.index(metric)].tolist()
        return float(a), float(b)

    # ------------------------------------------------------------------ properties
    # in_dim, dim, bits, version, compatible_with and the repr: ConfigView (bebr.encoder)
    @ConfigView.version.setter
    def version(self, value: str) -> None:
        if not isinstance(value, str) or not value:
            raise ValueError("version must be a non-empty str")
        self.config.version = value

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> BinarizerOutput:
        """Straight-through forward: code values c (n, dim), per-step b_t, pre-activations."""
        x = x - self.in_mean
        pre0 = self.W(x)
        b = sign_ste(pre0)
        c = b
        out = BinarizerOutput(codes=c, bits=[b], pre=[pre0])
        xn = F.normalize(x, dim=1)
        for t in range(1, self.bits):
            x_hat = F.normalize(self.B[t - 1](c), dim=1)
            r = xn - x_hat
            pre = self.R[t - 1](r)
            b = sign_ste(pre)
            c = c + (2.0 ** -t) * b
            out.bits.append(b)
            out.pre.append(pre)
            out.recon.append(x_hat)
        out.codes = c
        return out

    # ------------------------------------------------------------------ encode
    # On the CPU (the default for a model on the CPU) every encode* call runs the compiled
    # torch-free path of an exported :class:`bebr.Encoder` (``to_encoder``; the codes' exact
    # definition is in bebr/encoder.py). ``device`` (a torch device other than the CPU, e.g.
    # "cuda", where the model must live) runs torch's float32 forward there instead; rows
    # with a pre-activation within the encoder's margin of 0 are re-evaluated by the
    # compiled float64 path, so the codes are the same on either device.
    def to_encoder(self) -> Encoder:
        """The torch-free :class:`bebr.Encoder` of the current weights (exported once and
        reused while the weights and buffers are unchanged)."""
        state = self.state_dict()
        key = (repr(self.config), tuple((k, v.data_ptr(), v._version, str(v.device))
                                        for k, v in state.items()))
        cached = _ENCODERS.get(self)
        if cached is None or cached[0] != key:
            enc = Encoder(self.config, {k: v.detach().cpu().numpy().copy()
                                        for k, v in state.items()}, where=repr(self))
            _ENCODERS[self] = cached = (key, enc)
        return cached[1]

    def _torch_device(self, device) -> Optional["torch.device"]:
        """None for the compiled CPU path, else the torch device to run on."""
        here = next(self.parameters()).device
        dev = here if device is None else torch.device(device)
        if dev.type == "cpu":
            return None
        if dev != here:
            raise ValueError(f"device={str(dev)!r}, but the model is on {str(here)!r}; "
                             f"move it with model.to({str(dev)!r})")
        return dev

    def _batches(self, x, batch_size: int):
        arr = _as_float_rows(x, self.in_dim)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        for s in range(0, arr.shape[0], batch_size):
            chunk = np.array(arr[s:s + batch_size], dtype=np.float32, order="C", copy=True)
            if not np.isfinite(chunk).all():
                raise ValueError(f"x has NaN or inf values in rows [{s}, {s + len(chunk)})")
            yield s, torch.from_numpy(chunk)

    def encode_levels(self, x, batch_size: int = 8192, *, device=None,
                      threads: Optional[int] = None) -> np.ndarray:
        """Levels (n, dim) uint8 in [0, 2^bits): level = sum_t beta_t 2^(bits-1-t)."""
        dev = self._torch_device(device)
        if dev is None:
            return self.to_encoder().encode_levels(x, batch_size, threads=threads)
        return self._encode_levels_torch(x, batch_size, refine=True, threads=threads)

    def _encode_levels_torch(self, x, batch_size: int = 8192, *, refine: bool = True,
                             threads: Optional[int] = None) -> np.ndarray:
        """Torch's float32 forward on the model's device; ``refine``: rows the encoder's
        margin flags are re-evaluated in float64 (bebr/encoder.py), else torch's signs as
        they are (bebr before the compiled path)."""
        arr = _as_float_rows(x, self.in_dim)
        n = arr.shape[0]
        out = np.empty((n, self.dim), dtype=np.uint8)
        was_training = self.training
        self.eval()
        dev = next(self.parameters()).device
        enc = self.to_encoder() if refine else None
        try:
            with torch.inference_mode():
                for s, xb in self._batches(arr, batch_size):
                    o = self.forward(xb.to(dev))
                    lv = torch.zeros(o.codes.shape, dtype=torch.uint8, device=dev)
                    for t, b in enumerate(o.bits):
                        lv |= (b > 0).to(torch.uint8) << (self.bits - 1 - t)
                    lv = lv.cpu().numpy()
                    if enc is not None:
                        flagged = np.zeros(len(xb), dtype=bool)
                        for pre in o.pre:
                            flagged |= _row_margins(pre.float().cpu().numpy())
                        rows = np.flatnonzero(flagged)
                        if len(rows):
                            lv[rows] = enc._core.encode_levels(
                                np.ascontiguousarray(xb.numpy()[rows]),
                                1 if threads is None else int(threads))
                    out[s:s + len(xb)] = lv
        finally:
            self.train(was_training)
        return out

    def encode(self, x, batch_size: int = 8192, *, device=None,
               threads: Optional[int] = None) -> np.ndarray:
        """Packed uint8 codes (n, spec.code_bytes) in ``CodeSpec.pack`` format, streamed in
        batches of ``batch_size`` rows (x may be a memmap), without autograd."""
        if self._torch_device(device) is None:
            return self.to_encoder().encode(x, batch_size, threads=threads)
        arr = _as_float_rows(x, self.in_dim)
        out = np.empty((arr.shape[0], self.spec.code_bytes), dtype=np.uint8)
        step = 1 << 16
        for s in range(0, arr.shape[0], step):
            out[s:s + step] = self.spec.pack(self.encode_levels(arr[s:s + step], batch_size,
                                                                device=device, threads=threads))
        return out

    def encode_values(self, x, batch_size: int = 8192, *, device=None,
                      threads: Optional[int] = None) -> np.ndarray:
        """Float32 code values (n, dim), i.e. ``spec.values(encode(x))``."""
        return self.spec.level_values()[self.encode_levels(x, batch_size, device=device,
                                                           threads=threads)]

    def encode_query(self, x, batch_size: int = 8192, *, device=None,
                     threads: Optional[int] = None) -> np.ndarray:
        """Asymmetric query representation (n, dim) float32: the continuous first-step
        projection ``W(x)`` (before the sign). Score it by inner product against stored code
        values divided by their norm (the per-query scale does not change the ranking).
        On the CPU it is evaluated in float64 (rounded to float32 at the end)."""
        if self._torch_device(device) is None:
            return self.to_encoder().encode_query(x, batch_size, threads=threads)
        return self._run(lambda xb: self.W(xb - self.in_mean), x, batch_size)

    def encode_query_codes(self, x, bits: Optional[int] = None, batch_size: int = 8192,
                           target: Optional[str] = None, *, device=None,
                           threads: Optional[int] = None) -> np.ndarray:
        """Packed query codes at ``bits`` bits per dimension (default: the model's), for
        ``Index.search(codes, k, query_bits=bits)`` against codes made by :meth:`encode`.

        Queries are never stored, so they can be finer than the items: the code is the one
        whose direction is closest to the query projection ``encode_query(x)``
        (:meth:`CodeSpec.quantize_angle`), at ``bits`` in [1, 7]. Finer queries raise recall
        (BENCHMARKS.md section 2) for a slower scan over 1-2-bit items (the lookup-table sums
        are widened more often: tools/bench_query_bits.py).
        ``target``: the version id of an older code version this model has a cross-version
        query head for (``config.cross_versions``): the codes then search that version's
        stored codes (``Index.search(..., version_queries={tag: codes})``).
        On the CPU the projection is evaluated in float64 and quantized in compiled code
        (bit-identical to ``quantize_angle`` of that projection); on another ``device`` torch's
        float32 projection is quantized (equal but for near-ties).
        """
        bits = self.bits if bits is None else bits
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) \
                or not 1 <= bits <= MAX_QUERY_BITS:
            raise ValueError(f"bits must be an int in [1, {MAX_QUERY_BITS}], got {bits!r}")
        if self._torch_device(device) is None:
            return self.to_encoder().encode_query_codes(x, bits, batch_size, target,
                                                        threads=threads)
        qspec = CodeSpec(self.dim, int(bits))
        z = self._run(lambda xb: self.W(xb - self.in_mean), x, batch_size) if target is None \
            else self._run(self.cross_head(target), x, batch_size)
        return qspec.pack(qspec.quantize_angle(z))

    def _run(self, module, x, batch_size: int) -> np.ndarray:
        """``module`` (a callable on tensors) applied to batches of x, no autograd:
        float32 (n, dim)."""
        arr = _as_float_rows(x, self.in_dim)
        out = np.empty((arr.shape[0], self.dim), dtype=np.float32)
        was_training = self.training
        self.eval()
        dev = next(self.parameters()).device
        try:
            with torch.inference_mode():
                for s, xb in self._batches(arr, batch_size):
                    out[s:s + len(xb)] = module(xb.to(dev)).cpu().numpy()
        finally:
            self.train(was_training)
        return out

    # ------------------------------------------------------------------ save / load
    def save(self, path) -> Path:
        """Write ``path/config.json`` and ``path/model.safetensors`` (atomically, each)."""
        header = {
            "format": "bebr.binarizer",
            "format_version": FORMAT_VERSION,
            "model": self.model_name,
            "config": asdict(self.config),
            "code_spec": self.spec.to_dict(),
            "version": self.version,
        }
        marked = [v for v in getattr(self, "uncalibrated_heads", ())
                  if v in self.config.cross_versions]
        if marked:  # loaded from a file without calibrations: keep saying so
            header["uncalibrated_heads"] = marked
        return write_model_dir(path, self, self.model_name, header)

    @classmethod
    def load(cls, path, map_location: str = "cpu") -> "Binarizer":
        """Load a model saved by :meth:`save`; refuses corrupted, truncated or unknown files
        with :class:`bebr.fileio.CorruptFileError` (a ValueError). Never unpickles.

        A file written before query heads had a score calibration still loads: those heads
        get the identity calibration, are listed in ``model.uncalibrated_heads`` (their
        target versions; ``[]`` for calibrated files) and an :class:`UncalibratedHeadWarning`
        names them. Saving such a model keeps the mark (header ``uncalibrated_heads``)."""
        p = Path(path)
        header = read_header(p, "bebr.binarizer", FORMAT_VERSION, "Binarizer")
        cfg_path = p / CONFIG_NAME
        name = header.get("model")
        if not isinstance(name, str) or name not in MODEL_REGISTRY:
            raise CorruptFileError(f"{cfg_path}: unknown model name {name!r}; registered: "
                                   f"{sorted(MODEL_REGISTRY)}")
        model_cls = MODEL_REGISTRY[name]
        config, marked = read_config(p, header)
        state = read_weights(p, header)
        uncalibrated = set(marked)
        for i, ver in enumerate(config.cross_versions):  # files from before ensembles/calibration
            if f"cross.{i}.calibration" not in state:
                state[f"cross.{i}.calibration"] = torch.tensor(IDENTITY_CALIBRATION)
                uncalibrated.add(ver)
            legacy = f"cross.{i}.net."
            for key in [k for k in state if k.startswith(legacy)]:
                state[f"cross.{i}.nets.0." + key[len(legacy):]] = state.pop(key)
        model = load_state_strict(
            lambda: model_cls(config.in_dim, config.dim, config.bits, hidden=config.hidden,
                              depth=config.depth, version=config.version,
                              compatible_with=config.compatible_with,
                              cross_versions=config.cross_versions,
                              cross_hidden=config.cross_hidden,
                              cross_depth=config.cross_depth,
                              cross_members=config.cross_members), state, p, name)
        model.uncalibrated_heads = [v for v in config.cross_versions if v in uncalibrated]
        if model.uncalibrated_heads:
            warnings.warn(UncalibratedHeadWarning(
                uncalibrated_message(p, model.uncalibrated_heads)), stacklevel=2)
        model.eval()
        return model.to(map_location)
