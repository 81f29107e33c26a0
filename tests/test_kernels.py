"""maxwhisper's Mojo kernel (the float16 output projection) against numpy, and when it is used."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import max_model
from max.dtype import DType

from maxwhisper import custom_ops
from maxwhisper.engine import compile_piece
from maxwhisper.weights import load_weights


@pytest.fixture(scope="module")
def vocab_piece():
    def body(h, embedding, _params):
        return custom_ops.vocab_logits(h, embedding)

    # a vocabulary that is not a multiple of the kernel's tile or vector width, several rows
    types = [(DType.float32, ["batch", "picks", 64]), (DType.float16, [64, "vocab"])]
    return compile_piece("vocab_logits_test", types, body, load_weights("tiny.en"), "cpu",
                         kernels=True)


@pytest.mark.parametrize("batch,picks,vocab", [(1, 1, 51865), (5, 1, 1037), (2, 3, 17)])
def test_vocab_logits_equal_a_float32_product(vocab_piece, batch, picks, vocab):
    rng = np.random.default_rng(vocab)
    h = rng.standard_normal((batch, picks, 64)).astype(np.float32)
    embedding = rng.standard_normal((64, vocab)).astype(np.float16)
    (logits,) = vocab_piece(h, embedding)
    exact = h.astype(np.float64) @ embedding.astype(np.float64)
    assert logits.shape == (batch, picks, vocab)
    # float32 sums of 64 products of size ~1: a few ulp of values around 10
    assert np.abs(logits - exact).max() < 1e-4


def test_fits_float16():
    assert custom_ops.fits_float16(np.array([0.5, -2.0, 1e-3], np.float16).astype(np.float32))
    assert not custom_ops.fits_float16(np.array([0.1], np.float32))


def test_released_weights_use_the_kernel_on_cpu():
    model = max_model("tiny.en")
    assert model.device == "cpu" and model.vocab_kernel
