"""The engine's numeric options: what selects them, and that each gets its own compiled graph."""

from __future__ import annotations

import pytest

from maxwhisper.engine import cache_key, default_float64_blocks
from maxwhisper.settings import encoder_float64_blocks


def test_float64_blocks_setting(monkeypatch, tiny_weights, base_weights):
    monkeypatch.delenv("MAXWHISPER_ENCODER_FLOAT64_BLOCKS", raising=False)
    assert encoder_float64_blocks() is None  # the engine decides per model
    assert default_float64_blocks(tiny_weights.dims) == 0
    assert default_float64_blocks(base_weights.dims) == 1
    monkeypatch.setenv("MAXWHISPER_ENCODER_FLOAT64_BLOCKS", "0")
    assert encoder_float64_blocks() == 0
    monkeypatch.setenv("MAXWHISPER_ENCODER_FLOAT64_BLOCKS", "one")
    with pytest.raises(ValueError, match="MAXWHISPER_ENCODER_FLOAT64_BLOCKS"):
        encoder_float64_blocks()


def test_numeric_options_are_part_of_the_cache_key(tiny_weights):
    dims = tiny_weights.dims
    plain = cache_key("encoder", dims, "float32", "cpu")
    assert cache_key("encoder", dims, "float32", "cpu", float64_blocks=1) != plain
    assert cache_key("encoder", dims, "float32", "cpu", vocab_kernel=True) != plain
    assert cache_key("encoder", dims, "float16", "cpu") != plain
    assert cache_key("encoder", dims, "float32", "cpu") == plain
