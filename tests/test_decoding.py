"""Decoding helpers that must give exactly what their plain numpy definition gives."""

from __future__ import annotations

import numpy as np
import pytest

from maxwhisper.decoding import _top_k


@pytest.mark.parametrize("seed", range(4))
def test_top_k_equals_a_full_sort(seed):
    """Random sizes and k, with masked (-inf) stretches as the timestamp rule leaves them,
    and with ties."""
    rng = np.random.default_rng(seed)
    for trial in range(300):
        n = int(rng.integers(1, 60000))
        k = int(rng.integers(1, min(n, 12) + 1))
        values = rng.standard_normal(n).astype(np.float32)
        if trial % 3 == 0:
            values[: int(rng.integers(0, n))] = -np.inf
        if trial % 5 == 0:
            values = np.round(values, 1)
        top = _top_k(values, k)
        assert len(set(top.tolist())) == k
        assert np.array_equal(values[top], np.sort(values)[::-1][:k])
