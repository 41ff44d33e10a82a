"""Multi-bit binary code format: ``CodeSpec`` and pack/unpack.

Layout (the single source of truth; documented in docs/FORMAT.md):

A code has ``dim`` dimensions of ``bits`` bits. Dimension j holds a level
``l_j in [0, 2**bits)`` whose value is ``v_j = (2*l_j - (2**bits - 1)) / 2**(bits-1)``,
which equals ``sum_t 2**-t * b_t`` with ``b_t in {-1, +1}``. Bit t of the level counted
from the most significant end (``beta_t = (l >> (bits-1-t)) & 1``) is the sign bit of
``b_t`` (1 means +1).

A packed code is ``bits`` bit-planes, one after the other; plane t holds ``beta_t`` of
every dimension in ``plane_bytes = ceil(dim / 8)`` bytes, dimension j at byte ``j // 8``,
bit ``j % 8`` (little-endian bit order, as ``np.packbits(..., bitorder="little")``).
Padding bits past ``dim`` in each plane are zero. ``code_bytes = bits * plane_bytes``.
With ``bits == 1`` a packed code is exactly a sign-bit vector for Hamming search.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_BITS = 4        # stored codes (Index, Binarizer)
MAX_QUERY_BITS = 7  # query codes, which are never stored (Index.search(..., query_bits=))
MAX_DIM = 1 << 16

__all__ = ["CodeSpec", "MAX_BITS", "MAX_QUERY_BITS", "MAX_DIM", "max_query_bits"]


def max_query_bits(stored_bits: int) -> int:
    """The finest query codes the SDC kernels score exactly against ``stored_bits``-bit
    codes: 4 over 1-2-bit codes (two byte lookup-table entries, each <= 8 (2^qbits - 1), must
    sum into a byte), 7 over 3-4-bit codes (int8 values)."""
    return 4 if stored_bits <= 2 else MAX_QUERY_BITS


@dataclass(frozen=True)
class CodeSpec:
    """The shape of a multi-bit binary code: ``dim`` dimensions of ``bits`` bits each.

    Stored codes have ``bits <= MAX_BITS`` (4); query codes, which are never stored, may be
    finer, up to ``MAX_QUERY_BITS`` (7).
    """

    dim: int
    bits: int

    def __post_init__(self) -> None:
        for name in ("dim", "bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"CodeSpec.{name} must be an int, got {type(value).__name__}")
            object.__setattr__(self, name, int(value))
        if not 1 <= self.dim <= MAX_DIM:
            raise ValueError(f"CodeSpec.dim must be in [1, {MAX_DIM}], got {self.dim}")
        if not 1 <= self.bits <= MAX_QUERY_BITS:
            raise ValueError(f"CodeSpec.bits must be in [1, {MAX_QUERY_BITS}] (stored codes: "
                             f"[1, {MAX_BITS}]), got {self.bits}")

    @property
    def plane_bytes(self) -> int:
        """Bytes of one bit-plane: ``ceil(dim / 8)``."""
        return (self.dim + 7) // 8

    @property
    def code_bytes(self) -> int:
        """Bytes of one packed code: ``bits * plane_bytes``."""
        return self.bits * self.plane_bytes

    @property
    def n_levels(self) -> int:
        """Number of levels a dimension can take: ``2**bits``."""
        return 1 << self.bits

    @property
    def scale(self) -> int:
        """Integer scale ``2**(bits-1)``: ``value * scale`` is an odd integer."""
        return 1 << (self.bits - 1)

    def level_values(self) -> np.ndarray:
        """Float values of the levels 0..2**bits-1, ascending (bits=2: -1.5, -0.5, 0.5, 1.5)."""
        levels = np.arange(self.n_levels, dtype=np.int64)
        return ((2 * levels - (self.n_levels - 1)) / self.scale).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-friendly form, inverse of :meth:`from_dict`."""
        return {"dim": self.dim, "bits": self.bits}

    @classmethod
    def from_dict(cls, d: dict) -> "CodeSpec":
        """Build from ``{"dim": int, "bits": int}``; raises ValueError on other keys."""
        if not isinstance(d, dict) or set(d) != {"dim", "bits"}:
            raise ValueError(f"code spec must be a dict with keys 'dim' and 'bits', got {d!r}")
        return cls(d["dim"], d["bits"])

    # ------------------------------------------------------------------ pack / unpack
    def pack(self, levels: np.ndarray) -> np.ndarray:
        """Pack levels ``(n, dim)`` (integers in ``[0, 2**bits)``) into uint8 ``(n, code_bytes)``."""
        arr = np.asarray(levels)
        if arr.dtype.kind not in "iu":
            raise TypeError(f"levels must be an integer array, got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"levels must have shape (n, {self.dim}), got {arr.shape}")
        if arr.size and (arr.min() < 0 or arr.max() >= self.n_levels):
            raise ValueError(
                f"levels must lie in [0, {self.n_levels}) for bits={self.bits}, "
                f"got range [{arr.min()}, {arr.max()}]"
            )
        lv = arr.astype(np.uint8, copy=False)
        n = lv.shape[0]
        out = np.empty((n, self.code_bytes), dtype=np.uint8)
        pb = self.plane_bytes
        for t in range(self.bits):
            plane = (lv >> (self.bits - 1 - t)) & 1
            out[:, t * pb:(t + 1) * pb] = np.packbits(plane, axis=1, bitorder="little")
        return out

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        """Unpack uint8 ``(n, code_bytes)`` codes into uint8 levels ``(n, dim)``."""
        arr = self.check_packed(packed, "packed")
        n = arr.shape[0]
        out = np.zeros((n, self.dim), dtype=np.uint8)
        pb = self.plane_bytes
        for t in range(self.bits):
            plane = np.unpackbits(arr[:, t * pb:(t + 1) * pb], axis=1, count=self.dim,
                                  bitorder="little")
            out |= plane << (self.bits - 1 - t)
        return out

    def values(self, packed: np.ndarray) -> np.ndarray:
        """Float32 code values ``(n, dim)`` (``sum_t 2**-t b_t``) of packed codes."""
        return self.level_values()[self.unpack(packed)]

    def quantize(self, values: np.ndarray) -> np.ndarray:
        """Levels ``(n, dim)`` of the nearest code value to each float in ``values``."""
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"values must have shape (n, {self.dim}), got {v.shape}")
        lv = np.rint((v * self.scale + (self.n_levels - 1)) / 2.0)
        return np.clip(lv, 0, self.n_levels - 1).astype(np.uint8)

    def quantize_angle(self, values: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """Levels ``(n, dim)`` of the code whose direction is closest to each row of ``values``.

        Only a query's direction matters for ranking (and, with cosine, for the score), so this
        finds, per row, the code c maximising ``cos(c, v)`` instead of rounding at one fixed
        step (RaBitQ's extended-code search, exact): with signs matched to v, the magnitude
        steps ``m_j = min(floor(f |v_j|), 2**(bits-1) - 1)`` only change at the scales
        ``f = m / |v_j|``; all of them are swept in order with running sums of ``<c, v>`` and
        ``|c|^2``, and the best is kept. bits=1 gives the sign (0 -> +1); a zero row gets level
        ``2**(bits-1)`` (the smallest positive value) everywhere. Deterministic.

        Exact arithmetic: the scales ``f`` are float64 quotients, swept in (f, j, m) order;
        the cosines compare ``(sum_j A_j (2 m_j + 1)) / sqrt(sum_j (2 m_j + 1)^2)`` with the
        integer sums exact, ``A_j = floor(|v_j| 2^32 / max|v| + 1/2)`` (|v| rounded to 2^-32 of
        the row's largest entry, so the result does not depend on a summation order), the
        first maximum kept. Computed in compiled code (``bebr._C.quantize_angle``), which
        skips the parts of the sweep whose bound shows they cannot hold the maximum; bit for
        bit the numpy sweep :meth:`quantize_angle_reference` (``chunk`` bounds its memory).
        """
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"values must have shape (n, {self.dim}), got {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError("values has NaN or inf entries")
        from . import _C

        return _C.quantize_angle(np.ascontiguousarray(v), self.bits)

    def quantize_angle_reference(self, values: np.ndarray, chunk: int = 1024) -> np.ndarray:
        """The numpy sweep that defines :meth:`quantize_angle` (its test oracle): every event
        in stable-argsort order of the scales, the exact integer sums of the docstring there."""
        v = np.asarray(values, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] != self.dim:
            raise ValueError(f"values must have shape (n, {self.dim}), got {v.shape}")
        if not np.isfinite(v).all():
            raise ValueError("values has NaN or inf entries")
        half = self.n_levels // 2
        out = np.empty(v.shape, dtype=np.uint8)
        pos = v >= 0
        if half == 1:
            out[:] = pos
            return out
        steps = np.arange(1, half, dtype=np.float64)           # m = 1 .. half-1
        chunk = max(1, min(chunk, (1 << 21) // (self.dim * (half - 1))))  # ~16 MB per array
        for s0 in range(0, v.shape[0], chunk):
            a = np.abs(v[s0:s0 + chunk])                         # (r, dim)
            r = a.shape[0]
            amax = a.max(axis=1, keepdims=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                f = steps[None, None, :] / a[:, :, None]         # (r, dim, half-1), inf if a=0
                A = np.floor(a * (4294967296.0 / amax) + 0.5)
            A = np.where(amax > 0, A, 0).astype(np.int64)        # |v| in units of 2^-32 max
            f = f.reshape(r, -1)
            order = np.argsort(f, axis=1, kind="stable")
            j_of = order // (half - 1)                           # dim of each event
            m_of = order % (half - 1) + 1                        # its new magnitude step
            ip2 = A.sum(1, keepdims=True) + 2 * np.cumsum(np.take_along_axis(A, j_of, axis=1),
                                                           axis=1)
            nn4 = self.dim + 8 * np.cumsum(m_of, axis=1)
            crit = np.concatenate([A.sum(1, keepdims=True).astype(np.float64)
                                   / np.sqrt(float(self.dim)),
                                   ip2.astype(np.float64) / np.sqrt(nn4.astype(np.float64))],
                                  axis=1)
            crit[:, 1:][~np.isfinite(np.take_along_axis(f, order, axis=1))] = -np.inf
            best = crit.argmax(axis=1)                           # events taken: best
            taken = np.zeros(f.shape, dtype=bool)                # events before the best
            np.put_along_axis(taken, order, np.arange(f.shape[1])[None, :] < best[:, None],
                              axis=1)
            m = taken.reshape(r, self.dim, half - 1).sum(axis=2)
            sign = pos[s0:s0 + chunk]
            out[s0:s0 + chunk] = np.where(sign, half + m, half - 1 - m)
        return out

    def check_packed(self, packed: np.ndarray, name: str = "codes") -> np.ndarray:
        """Validate packed codes: uint8, shape ``(n, code_bytes)``, zero padding bits.

        Returns the array as a C-contiguous uint8 view (no copy when already so).
        Raises TypeError for a wrong dtype and ValueError for a wrong shape or padding.
        """
        if not isinstance(packed, np.ndarray):
            packed = np.asarray(packed)
        if packed.dtype != np.uint8:
            raise TypeError(f"{name} must be uint8 packed codes, got dtype {packed.dtype}")
        if packed.ndim == 1 and packed.shape[0] == self.code_bytes:
            packed = packed[None, :]
        if packed.ndim != 2 or packed.shape[1] != self.code_bytes:
            raise ValueError(
                f"{name} must have shape (n, {self.code_bytes}) for {self}, got {packed.shape}"
            )
        pad = self.plane_bytes * 8 - self.dim
        if pad and packed.shape[0]:
            mask = np.uint8((0xFF << (8 - pad)) & 0xFF)
            last = packed[:, self.plane_bytes - 1::self.plane_bytes]
            if np.any(last & mask):
                raise ValueError(
                    f"{name} has non-zero padding bits past dim={self.dim}; "
                    "codes were not made by CodeSpec.pack for this spec"
                )
        return np.ascontiguousarray(packed)
