"""Min/max downsampling: bounded size, and every spike (NaN included) stays visible."""

from __future__ import annotations

import numpy as np
import pytest

from training.metrics.downsample import minmax_indices, stride_indices


def test_short_series_are_returned_whole():
    assert minmax_indices([3.0, 2.0, 1.0], 10).tolist() == [0, 1, 2]


@pytest.mark.parametrize("n,max_points", [(1000, 100), (1_000_003, 1000), (10_000, 7), (500, 3)])
def test_bounded_sorted_and_keeps_the_ends(n, max_points):
    values = np.random.default_rng(0).normal(size=n)
    idx = minmax_indices(values, max_points)
    assert len(idx) <= max_points
    assert idx.tolist() == sorted(set(idx.tolist()))
    assert idx[0] == 0 and idx[-1] == n - 1


def test_every_spike_survives():
    values = np.ones(1_000_000)
    spikes = [12_345, 500_000, 999_998]
    values[spikes] = 50.0
    values[777_777] = -10.0
    idx = set(minmax_indices(values, 200).tolist())
    assert set(spikes) <= idx and 777_777 in idx


def test_nan_and_inf_count_as_spikes():
    values = np.linspace(3, 1, 100_000)
    values[40_000] = np.nan
    values[80_000] = np.inf
    idx = set(minmax_indices(values, 100).tolist())
    assert {40_000, 80_000} <= idx


def test_envelope_is_preserved():
    rng = np.random.default_rng(1)
    values = rng.normal(size=200_000)
    idx = minmax_indices(values, 1000)
    assert values[idx].max() == values.max() and values[idx].min() == values.min()


def test_stride_indices():
    assert stride_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    idx = stride_indices(1000, 10)
    assert len(idx) == 10 and idx[0] == 0 and idx[-1] == 999
    assert minmax_indices([1.0], 0).tolist() == []
