"""Query memory: the current model's queries into an older version's codes, helped by the
old codes of their nearest neighbours in the paired sample of an upgrade.

A query head maps a new-model query on its own into an old code space. The memory adds what
the paired sample says directly: for a query ``x``, its ``k`` nearest sample rows by the
new model's SDC scores (its query codes of ``x`` over the new model's codes of the rows),
and the mean of those rows' unit OLD code values weighted by ``softmax(score / tau)``: where
``x``'s new-space neighbours sit in the old space. The search direction is
``unit(head direction) + weight * unit(memory direction)``, quantized like any query, its
scores calibrated onto the new model's scale (fitted at ``Collection.upgrade`` /
``Collection.calibrate``, as the head's are).

Why: on MiniLM -> MPNet (128x2, 2,000 queries over 58,000 gallery items outside the
38,000-row paired sample) the head alone reached R10@10 0.318 against 0.358 for the old
model's own queries; with the memory, chosen on held-out rows, 0.364 (BENCHMARKS.md 3b).

Serving needs numpy and the kernel only: the memory holds two packed code arrays (the new
and the old model's codes of the same rows), a few MB, no floats.
"""

from __future__ import annotations

import io
from typing import Optional, Tuple

import numpy as np

from .codes import CodeSpec
from .fileio import CorruptFileError
from .index import Index

__all__ = ["QueryMemory", "MEMORY_FORMAT_VERSION"]

MEMORY_FORMAT_VERSION = 1


def _unit(z: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(z, axis=-1, keepdims=True)
    return z / np.where(n > 0, n, 1.0)


class QueryMemory:
    """Paired rows' new-model codes (searched by SDC, cosine) and old-model codes.

    ``new_codes`` / ``old_codes``: packed codes ``(n, spec.code_bytes)`` of the same ``n``
    rows by the new and the old model (both of the collection's code spec); ``k``,
    ``tau``, ``weight``: the neighbours, softmax temperature and weight of the memory
    direction; ``calibration``: ``(scale, shift)`` of the combined query's scores.
    """

    def __init__(self, spec: CodeSpec, new_codes: np.ndarray, old_codes: np.ndarray, *,
                 k: int, tau: float, weight: float,
                 calibration: Tuple[float, float] = (1.0, 0.0)) -> None:
        new_codes = np.ascontiguousarray(new_codes, dtype=np.uint8)
        old_codes = np.ascontiguousarray(old_codes, dtype=np.uint8)
        want = (new_codes.shape[0], spec.code_bytes)
        if new_codes.ndim != 2 or new_codes.shape[1] != spec.code_bytes or \
                old_codes.shape != want or not len(new_codes):
            raise ValueError(f"new_codes and old_codes must both be (n >= 1, "
                             f"{spec.code_bytes}) packed codes of the same rows, got "
                             f"{new_codes.shape} and {old_codes.shape}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        if not (np.isfinite(tau) and tau > 0 and np.isfinite(weight) and weight > 0):
            raise ValueError(f"tau and weight must be finite and > 0, got {tau!r}, {weight!r}")
        a, b = (float(c) for c in calibration)
        if not (np.isfinite(a) and a > 0 and np.isfinite(b)):
            raise ValueError(f"calibration must be (scale > 0, shift), got {calibration!r}")
        self.spec = spec
        self.new_codes, self.old_codes = new_codes, old_codes
        self.k, self.tau, self.weight = int(k), float(tau), float(weight)
        self.calibration = (a, b)
        self._index = Index(spec, metric="cosine")
        self._index.add(new_codes)  # ids 0..n-1: rows of old_codes

    def __len__(self) -> int:
        return self.new_codes.shape[0]

    def neighbours(self, q_codes: np.ndarray, query_bits: int, k: int, *,
                   threads: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
        """The ``k`` nearest rows of packed new-model query codes: ``(scores, rows)``, best
        first (``Index.search``; rows -1 past the memory's size)."""
        return self._index.search(q_codes, min(int(k), len(self)), query_bits=query_bits,
                                  threads=threads)

    def direction(self, q_codes: np.ndarray, query_bits: int, *, k: Optional[int] = None,
                  tau: Optional[float] = None, threads: Optional[int] = None,
                  found: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> np.ndarray:
        """Unit memory directions ``(nq, dim)`` float64 in the old code space: the
        softmax(score / tau)-weighted mean of the unit old code values of each query's ``k``
        nearest rows (defaults: the memory's own ``k`` / ``tau``). ``found``: the result of
        :meth:`neighbours` for at least ``k`` (reused across settings)."""
        k = self.k if k is None else int(k)
        tau = self.tau if tau is None else float(tau)
        s, rows = found if found is not None else self.neighbours(q_codes, query_bits, k,
                                                                  threads=threads)
        s, rows = s[:, :k].astype(np.float64), rows[:, :k]
        ok = rows >= 0
        w = np.where(ok, np.exp((np.where(ok, s, -np.inf) - s[:, :1]) / tau), 0.0)
        vals = _unit(self.spec.values(self.old_codes[np.where(ok, rows, 0).ravel()])
                     .astype(np.float64)).reshape(rows.shape + (self.spec.dim,))
        return _unit(np.einsum("qk,qkd->qd", w, vals))

    def query_codes(self, head_direction: np.ndarray, q_codes: np.ndarray, query_bits: int, *,
                    threads: Optional[int] = None) -> np.ndarray:
        """Packed ``query_bits``-bit query codes into the old code space: the closest code in
        angle to ``unit(head_direction) + weight * direction(q_codes)``."""
        z = _unit(np.asarray(head_direction, np.float64))
        z += self.weight * self.direction(q_codes, query_bits, threads=threads)
        qspec = CodeSpec(self.spec.dim, query_bits)
        return qspec.pack(qspec.quantize_angle(z.astype(np.float32)))

    # ------------------------------------------------------------------ file
    def to_bytes(self) -> bytes:
        """The memory's codes as one ``.npz`` (settings live in the collection manifest)."""
        buf = io.BytesIO()
        np.savez(buf, format_version=np.int64(MEMORY_FORMAT_VERSION),
                 new_codes=self.new_codes, old_codes=self.old_codes)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, spec: CodeSpec, *, k: int, tau: float, weight: float,
                   calibration: Tuple[float, float], where: str = "memory") -> "QueryMemory":
        """Rebuild from :meth:`to_bytes`; CorruptFileError names what is wrong."""
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                fv = int(z["format_version"])
                new_codes, old_codes = z["new_codes"], z["old_codes"]
        except (ValueError, OSError, KeyError, EOFError) as e:
            raise CorruptFileError(f"{where}: not a readable query memory ({e})") from None
        if fv != MEMORY_FORMAT_VERSION:
            raise CorruptFileError(f"{where}: query memory format_version {fv} is not "
                                   f"supported (this bebr reads {MEMORY_FORMAT_VERSION})")
        try:
            return cls(spec, new_codes, old_codes, k=k, tau=tau, weight=weight,
                       calibration=calibration)
        except ValueError as e:
            raise CorruptFileError(f"{where}: {e}") from None
