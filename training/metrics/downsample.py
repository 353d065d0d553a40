"""Choose which points of a long series to draw, keeping every spike visible.

Min/max per bucket: the series is cut into equal buckets of consecutive points and
each bucket keeps its lowest and highest point (NaN and infinities count as highest,
so a divergence always shows). A chart of max_points points then has the same
envelope as the full series, which LTTB does not promise for single-point spikes.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt


def minmax_indices(values: npt.ArrayLike, max_points: int) -> npt.NDArray[np.int64]:
    """Sorted indices of at most max_points points of `values` (first and last included)."""
    v = np.asarray(values, dtype=np.float64)
    n = int(v.shape[0])
    if max_points <= 0:
        return np.empty(0, dtype=np.int64)
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    if max_points < 4:
        return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
    # Two points per bucket, and room for the first and last point.
    buckets = (max_points - 2) // 2
    edges = np.linspace(0, n, buckets + 1).round().astype(np.int64)
    width = int(np.diff(edges).max())
    # A (buckets, width) view padded with NaN-free sentinels, so one argmin/argmax does all.
    idx = edges[:-1, None] + np.arange(width)[None, :]
    valid = idx < edges[1:, None]
    idx = np.where(valid, idx, edges[:-1, None])
    bucket_values = v[idx]
    bad = ~np.isfinite(bucket_values)
    low = np.where(valid & ~bad, bucket_values, np.inf)
    high = np.where(valid & ~bad, bucket_values, -np.inf)
    # Non-finite values are the spikes that matter most: they win the max.
    high = np.where(valid & bad, np.inf, high)
    rows = np.arange(buckets)
    picks = np.concatenate(
        (idx[rows, np.argmin(low, axis=1)], idx[rows, np.argmax(high, axis=1)], [0, n - 1])
    )
    return np.unique(picks)


def stride_indices(n: int, max_points: int) -> npt.NDArray[np.int64]:
    """Evenly spaced indices (for series with no value to preserve the envelope of)."""
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    if max_points <= 0:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
