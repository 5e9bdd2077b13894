"""Exact percentiles outside the database, with PostgreSQL's own arithmetic, and the decoding of
values packed by float8send, so the roll-up's samples reach numpy without one Python float (or
one PostgreSQL function call) per value.

percentile_cont(values, fractions): what `percentile_cont(p) WITHIN GROUP (ORDER BY v)` returns
for each p: the value at rank p * (n - 1), interpolated between its two neighbours as
PostgreSQL's float8_lerp does (lo + (hi - lo) * proportion), so the figures are bit for bit the
ones the live query computes from the same values. None for no values."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

def packed(buf: bytes) -> np.ndarray:
    """The values of `string_agg(float8send(v), ''::bytea)`: 8 bytes each, big-endian, no copy."""
    return np.frombuffer(buf, dtype=">f8")


def concat(arrays: Iterable[np.ndarray | Sequence[float]]) -> np.ndarray:
    parts = [np.asarray(a, dtype=np.float64) for a in arrays]
    return np.concatenate(parts) if parts else np.empty(0)


def remove(values: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """The multiset values minus removed (each element of removed is in values)."""
    if not removed.size:
        return values
    u, counts = np.unique(values, return_counts=True)
    r, r_counts = np.unique(removed, return_counts=True)
    at = np.searchsorted(u, r)
    if (at >= u.size).any() or (u[np.minimum(at, u.size - 1)] != r).any() or (counts[at] < r_counts).any():
        raise ValueError("removed values are not all among the values")
    counts[at] -= r_counts
    return np.repeat(u, counts)


def percentile_cont(values: np.ndarray, fractions: Sequence[float]) -> list[float | None]:
    n = int(values.size)
    if n == 0:
        return [None for _ in fractions]
    ranks = sorted({r for p in fractions for r in (math.floor(p * (n - 1)), math.ceil(p * (n - 1)))})
    part = np.partition(values, ranks)
    out: list[float | None] = []
    for p in fractions:
        pos = p * (n - 1)
        first, second = math.floor(pos), math.ceil(pos)
        lo = float(part[first])
        if first == second:
            out.append(lo)
        else:
            hi = float(part[second])
            out.append(lo + (hi - lo) * (pos - first))
    return out
