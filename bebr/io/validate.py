"""Row validation: float rows must be finite; bad rows are refused or skipped and counted."""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np

__all__ = ["BadRowError", "check_rows"]


class BadRowError(ValueError):
    """An input row holds NaN or inf (and skipping bad rows was not asked for)."""


def check_rows(x: np.ndarray, *, where: str, first_row: int,
               skip_bad: bool) -> Tuple[Optional[np.ndarray], int]:
    """Check that every row of float ``x`` is finite.

    ``where`` names the shard and ``first_row`` is the shard-relative row of ``x[0]``, so an
    error says exactly which row is bad. Returns ``(keep, n_bad)``: ``keep`` is None when all
    rows are good, else a boolean mask of the rows to keep (only with ``skip_bad``).
    Raises BadRowError on the first bad row when ``skip_bad`` is False.
    """
    good = np.isfinite(x).all(axis=1)
    if good.all():
        return None, 0
    bad = np.flatnonzero(~good)
    if not skip_bad:
        row = int(bad[0])
        kind = "NaN" if np.isnan(x[row]).any() else "inf"
        raise BadRowError(
            f"{where}: row {first_row + row} contains {kind} ({bad.size} bad row(s) in rows "
            f"{first_row}..{first_row + x.shape[0] - 1}); fix the input or pass --skip-bad "
            "to drop such rows")
    return good, int(bad.size)
