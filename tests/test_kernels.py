"""maxwhisper's Mojo kernels against numpy on ragged sizes, and when the runtime uses them."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from conftest import max_model
from max.dtype import DType

from maxwhisper import custom_ops
from maxwhisper.runtime import compile_piece
from maxwhisper.weights import load_weights


def _gelu(x: np.ndarray) -> np.ndarray:
    from math import erf, sqrt

    return 0.5 * x * (1.0 + np.vectorize(erf)(x / sqrt(2.0)))


@functools.cache
def linear_piece(gelu: bool, share_bytes: int = 256 * 1024):
    """The float16 linear kernel (plain or with GELU) for any rows, k and panels: one graph for
    every size (each compile costs ~30 s cold), fed x (R, k), the packed (P, k, 64) weights and
    the padded bias (64 P); the padding columns come back (callers slice them off). Products
    with more than `share_bytes` of work are shared between the cores."""
    from max.graph import TensorType, ops

    def body(x, packed, bias, _params):
        out_type = TensorType(DType.float32, [x.shape[0], bias.shape[0]], device=x.device)
        name = custom_ops.LINEAR_F16 + ("_gelu" if gelu else "")
        return ops.custom(name, x.device, [x, packed, bias], [out_type],
                          parameters={"share_bytes": share_bytes})[0].tensor

    types = [(DType.float32, ["rows", "k"]), (DType.float16, ["panels", "k", 64]),
             (DType.float32, ["width"])]
    return compile_piece(f"linear_f16_test_{gelu}_{share_bytes}", types, body,
                         load_weights("tiny.en"), "cpu", kernels=True)


def linear(x: np.ndarray, packed: np.ndarray, bias: np.ndarray, n: int, gelu: bool,
           share_bytes: int = 256 * 1024) -> np.ndarray:
    """x (..., k) @ W (k, n) + bias by the kernel (`linear_piece`), W and bias packed."""
    (y,) = linear_piece(gelu, share_bytes)(x.reshape(-1, x.shape[-1]), packed, bias)
    return y[:, :n].reshape(*x.shape[:-1], n)


@pytest.mark.parametrize("batch,rows,k,n,gelu", [
    (1, 1, 384, 51865, False),  # the output projection: a ragged last panel
    (5, 1, 384, 1152, False), (5, 1, 384, 1152, True),  # beams: one block of five rows
    (1, 13, 64, 70, True),  # blocks of six rows and a ragged one, GELU on
    (2, 7, 1536, 384, False),  # the MLP's down-projection over two batch rows
    (1, 221, 32, 64, False),  # a prompt prefill
])
def test_linear_f16_equals_a_float32_product(batch, rows, k, n, gelu):
    rng = np.random.default_rng(n + rows)
    x = rng.standard_normal((batch, rows, k)).astype(np.float32)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float16)
    bias = rng.standard_normal(n).astype(np.float32)
    y = linear(x, custom_ops.pack_panels(w), custom_ops.pad_bias(bias), n, gelu)
    exact = x.astype(np.float64) @ w.astype(np.float64) + bias
    if gelu:
        exact = _gelu(exact)
    assert np.abs(y - exact).max() < 1e-5  # float32 sums of products of size ~1


def _packed_case(rows: int, k: int, n: int, seed: int):
    """x (1, rows, k), packed float16 weights (k, n) and a padded bias, random."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, rows, k)).astype(np.float32)
    w = custom_ops.pack_panels((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float16))
    return x, w, custom_ops.pad_bias(rng.standard_normal(n).astype(np.float32))


def test_linear_f16_rows_are_the_same_bits_in_every_block():
    """A row's outputs do not depend on the register block it is computed in (one row over a
    whole panel; two to five rows, and six, in blocks the target's registers fit, some in
    narrower column passes on AVX2): every sum runs over k in the same order."""
    k, n = 384, 1152
    x, w, bias = _packed_case(6, k, n, seed=7)
    six = linear(x, w, bias, n, False)
    for rows in (1, 2, 3, 4, 5):
        some = linear(x[:, :rows], w, bias, n, False)
        assert np.array_equal(some, six[:, :rows]), rows


def test_linear_f16_is_the_same_bits_on_one_core_or_shared():
    """`MAXWHISPER_PROJECTION_SHARE_KB` only moves panels between the cores: one beam row and
    five, a layer projection's size, on one core (a 1-GB threshold) and shared (0)."""
    k, n = 384, 1152
    x, w, bias = _packed_case(5, k, n, seed=3)
    for rows in (1, 5):
        alone = linear(x[:, :rows], w, bias, n, False, share_bytes=1 << 30)
        shared = linear(x[:, :rows], w, bias, n, False, share_bytes=0)
        assert np.array_equal(alone, shared), rows


def test_linear_f16_blocked_path_is_the_same_bits_as_the_row_blocks():
    """From `GEMM_ROWS` rows on (the encoder's 1500), the kernel packs blocks of rows and
    carries its sums between k blocks (`gemm`): every row's outputs are still the same bits as
    the row alone, for a ragged row count and a k split over several blocks."""
    k, n = 1536, 200
    x, w, bias = _packed_case(301, k, n, seed=11)
    blocked = linear(x, w, bias, n, True)
    for row in (0, 5, 150, 299, 300):
        alone = linear(x[:, row:row + 1], w, bias, n, True)
        assert np.array_equal(alone[0, 0], blocked[0, row]), row


@functools.cache
def conv_piece(stride: int):
    """The conv stem's kernel: GELU(conv1d(x)), kernel 3, padding 1, channels last, for any
    batch, length, channels and panels (the padding columns come back, as `linear_piece`)."""
    from max.graph import TensorType, ops

    def body(x, packed, bias, _params):
        batch, length, _ = x.shape
        out_type = TensorType(DType.float32, [batch, (length - 1) // stride + 1, bias.shape[0]],
                              device=x.device)
        return ops.custom(custom_ops.CONV3_GELU_F16, x.device, [x, packed, bias], [out_type],
                          parameters={"stride": stride})[0].tensor

    types = [(DType.float32, ["batch", "length", "channels"]),
             (DType.float16, ["panels", "taps_channels", 64]), (DType.float32, ["width"])]
    return compile_piece(f"conv3_gelu_f16_test_{stride}", types, body, load_weights("tiny.en"),
                         "cpu", kernels=True)


@pytest.mark.parametrize("batch,length,c_in,c_out,stride", [
    (2, 301, 80, 70, 1),  # conv1's shape, two windows, ragged panels
    (2, 300, 40, 64, 2),  # conv2's stride, an even length (the last tap falls outside)
    (1, 301, 40, 64, 2),  # an odd length
    (1, 1, 16, 64, 1),  # a single position: both outer taps in the padding
])
def test_conv3_gelu_f16_equals_numpy(batch, length, c_in, c_out, stride):
    rng = np.random.default_rng(length + c_in)
    x = rng.standard_normal((batch, length, c_in)).astype(np.float32)
    filters = (rng.standard_normal((c_out, c_in, 3)) / np.sqrt(3 * c_in)).astype(np.float16)
    bias = rng.standard_normal(c_out).astype(np.float32)
    packed = custom_ops.pack_panels(custom_ops.conv_matrix(filters))
    (y,) = conv_piece(stride)(x, packed, custom_ops.pad_bias(bias))
    y = y[:, :, :c_out]
    padded = np.pad(x.astype(np.float64), ((0, 0), (1, 1), (0, 0)))
    out_length = (length - 1) // stride + 1
    exact = np.zeros((batch, out_length, c_out)) + bias
    for tap in range(3):  # output position r reads input positions r * stride - 1 + tap
        exact += padded[:, tap:tap + stride * out_length:stride] @ filters[:, :, tap].T.astype(
            np.float64)
    assert y.shape == (batch, out_length, c_out)
    assert np.abs(y - _gelu(exact)).max() < 1e-5


@pytest.mark.parametrize("windows,positions", [(1, 301), (2, 37)])
def test_cross_kv_f16_writes_the_same_bits_as_the_split_and_transposes(windows, positions):
    """The kernel's keys^T and values equal the (B, A, 2 L d) product split into heads,
    transposed and stacked by MAX's ops: the same sums in other places. 301 rows take the
    blocked path in both; 74 take it in the kernel and the row blocks in the product."""
    from maxwhisper import model

    weights = load_weights("tiny.en")
    dims = weights.dims

    def body(audio, params):
        params.kernels = frozenset({"encoder_linear"})
        projections = params.fused_linear(audio, model.cross_kv_names(dims))
        split = model.cross_kv_layouts(projections, dims.n_text_head)
        return (*model.cross_kv(audio, params, dims), *split)

    piece = compile_piece("cross_kv_f16", [(DType.float32, ["batch", "positions", 384])], body,
                          weights, "cpu", kernels=True)
    audio = np.random.default_rng(positions).standard_normal((windows, positions, 384))
    keys_t, values, split_keys_t, split_values = piece(audio.astype(np.float32))
    assert keys_t.shape == (4, windows, 6, 64, positions) and values.shape == (
        4, windows, 6, positions, 64)
    assert np.array_equal(keys_t, split_keys_t) and np.array_equal(values, split_values)
    layer = "decoder.blocks.2.cross_attn"  # layer 2, the last window, head 1, against numpy
    key = audio[-1] @ weights.tensors[f"{layer}.key.weight"].T
    value = audio[-1] @ weights.tensors[f"{layer}.value.weight"].T + weights.tensors[
        f"{layer}.value.bias"]
    assert np.abs(keys_t[2, -1, 1] - key[:, 64:128].T).max() < 1e-4
    assert np.abs(values[2, -1, 1] - value[:, 64:128]).max() < 1e-4


def test_pack_panels_layout():
    w = np.arange(3 * 70, dtype=np.float16).reshape(3, 70)
    panels = custom_ops.pack_panels(w)
    assert panels.shape == (2, 3, 64) and panels.dtype == np.float16
    assert np.array_equal(panels[1, :, :6], w[:, 64:]) and not panels[1, :, 6:].any()
    assert np.array_equal(panels.transpose(1, 0, 2).reshape(3, 128)[:, :70], w)


@pytest.fixture(scope="module")
def attention_piece():
    def body(q, keys_t, values, _params):
        return custom_ops.cross_attention(q, keys_t, values)

    types = [(DType.float32, ["rows", "heads", 64]),
             (DType.float32, ["windows", "heads", 64, "audio"]),
             (DType.float32, ["windows", "heads", "audio", 64])]
    return compile_piece("cross_attention_test", types, body, load_weights("tiny.en"), "cpu",
                         kernels=True)


def _grouped_attention(q, keys_t, values):
    """float64 reference: rows in G equal groups, group g attending to window g."""
    groups = keys_t.shape[0]
    window = np.repeat(np.arange(groups), len(q) // groups)
    scores = np.einsum("rhd,rhda->hra", q.astype(np.float64),
                       keys_t[window].astype(np.float64)) / 8.0
    exact = np.exp(scores - scores.max(-1, keepdims=True))
    exact /= exact.sum(-1, keepdims=True)
    return np.einsum("hra,rhad->rhd", exact, values[window].astype(np.float64)), exact


@pytest.mark.parametrize("rows,windows,heads,audio", [
    (1, 1, 6, 1500), (5, 1, 8, 1500), (13, 1, 2, 77), (1, 1, 1, 5),  # beams of one window
    (8, 8, 6, 1500), (6, 3, 2, 77), (10, 2, 6, 100), (14, 7, 1, 5),  # batches of windows
])
def test_cross_attention_equals_softmax_attention(attention_piece, rows, windows, heads, audio):
    rng = np.random.default_rng(rows * audio + windows)
    q = rng.standard_normal((rows, heads, 64)).astype(np.float32)
    keys_t = rng.standard_normal((windows, heads, 64, audio)).astype(np.float32)
    values = rng.standard_normal((windows, heads, audio, 64)).astype(np.float32)
    out, weights = attention_piece(q, keys_t, values)
    expected, exact = _grouped_attention(q, keys_t, values)
    assert weights.shape == (heads, rows, audio) and np.abs(weights - exact).max() < 1e-6
    assert out.shape == (rows, heads, 64) and np.abs(out - expected).max() < 1e-5



@pytest.mark.parametrize("audio", [1500, 77, 5])
def test_cross_attention_streamed_rows_equal_register_rows(attention_piece, audio):
    """One or two rows of a window read K^T as one stream (scores summed in memory), three or
    more keep 64 positions of scores in registers: the same sums in the same order, so a row's
    output and weights are the same bits either way."""
    rng = np.random.default_rng(audio)
    q = rng.standard_normal((2, 6, 64)).astype(np.float32)
    keys_t = rng.standard_normal((1, 6, 64, audio)).astype(np.float32)
    values = rng.standard_normal((1, 6, audio, 64)).astype(np.float32)
    streamed_out, streamed_weights = attention_piece(q, keys_t, values)
    register_out, register_weights = attention_piece(np.tile(q, (3, 1, 1)), keys_t, values)
    assert np.array_equal(streamed_out, register_out[:2])
    assert np.array_equal(streamed_weights, register_weights[:, :2])


def test_grouped_cross_attention_ops_equal_the_kernel(attention_piece):
    """MAX's ops path (accelerators, MAXWHISPER_CROSS_ATTENTION_KERNEL=0) takes the same groups,
    as the alignment graph uses it (the weights an output). The decoding graph's form (weights
    not an output, where MAX's attention fusion matches the pattern, and where an earlier form
    failed to compile) is compiled and checked by the accelerator-configuration test below."""
    from max.graph import ops

    from maxwhisper.model import grouped_cross_attention

    def body(q, keys_t, values, _params):
        return grouped_cross_attention(ops.unsqueeze(q, 2), keys_t, values)

    types = [(DType.float32, ["rows", "heads", 64]),
             (DType.float32, ["windows", "heads", 64, "audio"]),
             (DType.float32, ["windows", "heads", "audio", 64])]
    piece = compile_piece("grouped_cross_attention_ops", types, body,
                          load_weights("tiny.en"), "cpu")
    rng = np.random.default_rng(3)
    for rows, windows in ((6, 3), (5, 1), (4, 4)):
        q = rng.standard_normal((rows, 2, 64)).astype(np.float32)
        keys_t = rng.standard_normal((windows, 2, 64, 77)).astype(np.float32)
        values = rng.standard_normal((windows, 2, 77, 64)).astype(np.float32)
        out, weights = piece(q, keys_t, values)
        expected, exact = _grouped_attention(q, keys_t, values)
        assert np.abs(out[:, :, 0] - expected).max() < 1e-5
        assert np.abs(weights[:, :, 0].transpose(1, 0, 2) - exact).max() < 1e-6


@pytest.fixture(scope="module")
def encoder_attention_piece():
    def body(qkv, _params):
        return custom_ops.encoder_attention(qkv)

    return compile_piece("encoder_attention_test", [(DType.float32, ["batch", "length", "width"])],
                         body, load_weights("tiny.en"), "cpu", kernels=True)


@pytest.mark.parametrize("batch,length,heads", [
    (1, 1500, 6),  # a tiny window: 62 work items of 24 rows and one of 12
    (2, 37, 6), (3, 130, 2), (1, 64, 8), (1, 1, 1), (2, 65, 3),  # ragged tiles, rows and items
])
def test_encoder_attention_equals_softmax_attention(encoder_attention_piece, batch, length, heads):
    rng = np.random.default_rng(batch * length + heads)
    d = 64 * heads
    qkv = (2 * rng.standard_normal((batch, length, 3 * d))).astype(np.float32)
    (out,) = encoder_attention_piece(qkv)
    split = qkv.astype(np.float64).reshape(batch, length, 3, heads, 64)
    q, k, v = (split[:, :, i].transpose(0, 2, 1, 3) for i in range(3))  # (B, H, T, 64)
    scores = q @ k.transpose(0, 1, 3, 2) / 8.0
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = (weights @ v).transpose(0, 2, 1, 3).reshape(batch, length, d)
    assert out.shape == (batch, length, d) and np.abs(out - expected).max() < 3e-5


def test_fits_float16():
    assert custom_ops.fits_float16(np.array([0.5, -2.0, 1e-3], np.float16).astype(np.float32))
    assert not custom_ops.fits_float16(np.array([0.1], np.float32))


def test_released_weights_use_every_kernel_on_cpu():
    model = max_model("tiny.en")
    assert model.device == "cpu"
    decoder = {"vocab", "linear", "cross_attention", "self_attention"}
    encoder = {"encoder_attention"} | ({"encoder_linear"} if custom_ops.encoder_gemm_kernel_pays()
                                       else set())
    assert model.kernels == decoder | encoder


def short_clip_windows(speech_clips, count: int = 3) -> np.ndarray:
    """(count, n_mels, 3000): the first short clips' padded log-mel windows."""
    from maxwhisper.audio import N_FRAMES, load_audio, log_mel_spectrogram, pad_or_trim

    clips = [c for c in speech_clips if c.duration_s <= 30][:count]
    return np.stack([pad_or_trim(log_mel_spectrogram(load_audio(c.path)), N_FRAMES)
                     for c in clips])


@pytest.mark.slow
def test_accelerator_configuration_decodes_as_the_cpu_default(speech_clips):
    """The decoder as an accelerator runs it, on the CPU: MAX's ops alone (no Mojo kernel, as
    every MAXWHISPER_*_KERNEL=0) and the decoding state in buffers on the graph's device,
    written by the graph itself (`ResidentKVCache`). Same tokens as the default (kernels, host
    cache) for a batch of windows (greedy, rows in window groups), beam search (five rows
    sharing a window, reordered every step) and a window decoded after a prompt (a prefill of
    many tokens, then single steps). One graph for both properties: each decoder graph costs
    ~5 min to compile cold on a 2-core CPU."""
    from maxwhisper.decoding import DecodingOptions, decode, decode_batch
    from maxwhisper.runtime import MaxWhisperModel, ResidentKVCache
    from maxwhisper.tokenizer import get_tokenizer

    default = max_model("tiny.en")
    accelerator = MaxWhisperModel(default.weights, device="cpu", kernels=frozenset(),
                                  verbose=False, resident_cache=True)
    assert isinstance(accelerator.new_cache(2), ResidentKVCache)
    mels = short_clip_windows(speech_clips)
    features = default.encode(mels)
    greedy = DecodingOptions(language="en")
    assert ([r.tokens for r in decode_batch(accelerator, features, greedy)]
            == [r.tokens for r in decode_batch(default, features, greedy)])
    eot = get_tokenizer(False).eot
    earlier = decode(default, None, greedy, features=features.window(0)).tokens
    prompt = [t for t in earlier if t < eot]  # another window's text, as the long-form loop
    window = features.window(1)
    for options in (DecodingOptions(language="en", beam_size=5),
                    DecodingOptions(language="en", prompt=prompt)):
        assert (decode(accelerator, mels[1], options, features=window).tokens
                == decode(default, mels[1], options, features=window).tokens)


@pytest.fixture(scope="module")
def self_attention_piece():
    def body(q, keys_t, values, new_keys_t, new_values, filled, _params):
        return custom_ops.self_attention(q, keys_t, values, new_keys_t, new_values, filled)

    types = [(DType.float32, ["rows", "heads", 64]),
             (DType.float32, ["batch", "heads", 64, "slots"]),
             (DType.float32, ["batch", "heads", "slots", 64]),
             (DType.float32, ["batch", "heads", 64, "new"]),
             (DType.float32, ["batch", "heads", "new", 64]), (DType.int64, [1])]
    return compile_piece("self_attention_test", types, body, load_weights("tiny.en"), "cpu",
                         kernels=True)


@pytest.mark.parametrize("batch,heads,filled,new", [(1, 6, 0, 3), (1, 6, 37, 1), (5, 8, 130, 1),
                                                    (2, 2, 0, 150), (1, 1, 448, 1)])
def test_self_attention_over_the_filled_cache(self_attention_piece, batch, heads, filled, new):
    """Only the first `filled` slots of a 448-slot cache count (the rest hold garbage), and
    each new token sees the new tokens up to itself."""
    rng = np.random.default_rng(filled + new)
    slots = 448
    q = rng.standard_normal((batch * new, heads, 64)).astype(np.float32)
    keys_t = rng.standard_normal((batch, heads, 64, slots)).astype(np.float32) * 3
    values = rng.standard_normal((batch, heads, slots, 64)).astype(np.float32) * 3
    new_keys_t = rng.standard_normal((batch, heads, 64, new)).astype(np.float32)
    new_values = rng.standard_normal((batch, heads, new, 64)).astype(np.float32)
    (out,) = self_attention_piece(q, keys_t, values, new_keys_t, new_values,
                                  np.array([filled], np.int64))
    keys = np.concatenate([keys_t[..., :filled], new_keys_t], axis=-1).astype(np.float64)
    vals = np.concatenate([values[:, :, :filled], new_values], axis=2).astype(np.float64)
    rows = q.reshape(batch, new, heads, 64).transpose(0, 2, 1, 3).astype(np.float64)
    scores = rows @ keys / 8.0  # (B, H, S, P + S)
    causal = np.arange(new)[None, :] > np.arange(new)[:, None]
    scores[..., filled:][..., causal] = -np.inf
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = (weights @ vals).transpose(0, 2, 1, 3).reshape(batch * new, heads, 64)
    assert out.shape == q.shape and np.abs(out - expected).max() < 1e-5


def test_two_new_tokens_give_the_logits_of_two_steps(jfk):
    """The decoder computes each row and position alone, so a token and the one after it in
    one step give bit for bit the logits (and cache) of two steps: what makes the decoding
    loop's guessed timestamp exact (`decoding._guess`)."""
    from maxwhisper.audio import load_audio, log_mel_spectrogram, pad_or_trim
    from maxwhisper.tokenizer import get_tokenizer

    model = max_model("tiny.en")
    features = model.encode(log_mel_spectrogram(pad_or_trim(load_audio(jfk.path)))[None])
    begin = get_tokenizer(False).timestamp_begin
    prompt = np.array([[*get_tokenizer(False).sot_sequence, begin, 843, 616]], dtype=np.int64)
    for extra in (0, 29):  # the cache's fill in and across the kernels' chunks of slots
        tokens = np.concatenate([prompt, np.full((1, extra), 290, np.int64)], axis=1)
        one, two = model.new_cache(1), model.new_cache(1)
        model.decode_step(tokens, features, one, [-1])
        model.decode_step(tokens, features, two, [-1])
        first = model.decode_step(np.array([[begin + 40]]), features, one, [-1])[0, -1]
        second = model.decode_step(np.array([[begin + 40]]), features, one, [-1])[0, -1]
        both = model.decode_step(np.array([[begin + 40, begin + 40]]), features, two, [0, 1])[0]
        assert np.array_equal(first, both[0]) and np.array_equal(second, both[1])
        assert one.length == two.length
        assert np.array_equal(one.keys_t[..., :one.length], two.keys_t[..., :two.length])
        assert np.array_equal(one.values[..., :one.length, :], two.values[..., :two.length, :])
