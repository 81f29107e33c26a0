"""Whisper as MAX graphs: the conv stem, attention blocks, encoder and KV-cached decoder step.

Each builder takes `TensorValue`s and a `Params` (which hands out MAX `Weight`s named after
openai-whisper's state dict) and returns `TensorValue`s, so a notebook can put any one piece in
a graph of its own. Two graphs run a transcription:

- the encoder graph: log-mel (B, n_mels, 2*n_audio_ctx) -> audio features (B, n_audio_ctx, d)
  plus every decoder layer's cross-attention keys (L, B, H, hd, A) and values (L, B, H, A, hd),
  computed once per 30-s window;
- the decoder step graph: new tokens (B, S) and the self-attention cache of the P tokens
  before them -> logits (B, S, n_vocab) and the keys/values of the S new tokens.

The self-attention cache is laid out (P, L, B, d), position first, so the caller can keep one
preallocated array and pass its first P rows as a contiguous, zero-copy input; the graph only
returns the S new rows, which the caller writes in place. Nothing grows or is copied whole per
step. Batch (beams or windows), S and P are symbolic: one compiled graph serves every shape.

This module imports no torch: weights arrive as numpy arrays through MAX's weights registry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from max.dtype import DType
from max.graph import DeviceRef, Graph, TensorType, TensorValue, Weight, ops

from .weights import ModelDimensions, WhisperWeights

LN_EPS = 1e-5
NEG_INF = -1e30  # finite: a fully masked row must still give a valid softmax, never NaN


@dataclass
class Params:
    """Hands out graph `Weight`s by openai-whisper name and records how to fill the registry.

    Linear weights are stored transposed (in, out) so every projection is a plain `x @ W`; conv
    weights are stored in MAX's RSCF filter layout. `registry()` applies the same transforms to
    the numpy arrays, so the graph and its registry can never disagree.
    """

    weights: WhisperWeights
    device: DeviceRef
    dtype: DType = DType.float32

    def __post_init__(self) -> None:
        self._layouts: dict[str, str] = {}
        self._handles: dict[str, Weight] = {}

    def _get(self, name: str, layout: str) -> TensorValue:
        if name not in self._handles:
            shape = _transform(self.weights.tensors[name], layout).shape
            self._handles[name] = Weight(name, self.dtype, shape, self.device)
            self._layouts[name] = layout
        return self._handles[name]

    def tensor(self, name: str) -> TensorValue:
        return self._get(name, "plain")

    def linear(self, x: TensorValue, name: str) -> TensorValue:
        """openai-whisper's `Linear`: x @ W.T + b (no bias for attention keys)."""
        y = x @ self._get(f"{name}.weight", "transpose")
        if f"{name}.bias" in self.weights.tensors:
            y = y + self.tensor(f"{name}.bias")
        return y

    def layer_norm(self, x: TensorValue, name: str) -> TensorValue:
        return ops.layer_norm(x, self.tensor(f"{name}.weight"), self.tensor(f"{name}.bias"), LN_EPS)

    def conv_filter(self, name: str) -> TensorValue:
        return self._get(name, "rscf")

    def registry(self) -> dict[str, np.ndarray]:
        """numpy values for every weight this graph used, in its layout and dtype."""
        np_dtype = _NUMPY_DTYPES[self.dtype]
        return {
            name: np.ascontiguousarray(_transform(self.weights.tensors[name], layout), np_dtype)
            for name, layout in self._layouts.items()
        }


_NUMPY_DTYPES = {DType.float32: np.float32, DType.float16: np.float16}


def _transform(array: np.ndarray, layout: str) -> np.ndarray:
    if layout == "transpose":  # (out, in) -> (in, out)
        return array.T
    if layout == "rscf":  # PyTorch conv1d (C_out, C_in, K) -> MAX conv2d (1, K, C_in, C_out)
        return array.transpose(2, 1, 0)[None]
    return array


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def conv1d(x_nlc: TensorValue, p: Params, name: str, stride: int) -> TensorValue:
    """Conv1d, kernel 3, padding 1, on (B, L, C) via conv2d with H=1 (MAX has no conv1d)."""
    x = ops.unsqueeze(x_nlc, 1)  # (B, 1, L, C_in)  NHWC
    y = ops.conv2d(x, p.conv_filter(f"{name}.weight"), stride=(1, stride), padding=(0, 0, 1, 1),
                   bias=p.tensor(f"{name}.bias"))
    return ops.squeeze(y, 1)  # (B, L/stride, C_out)


def conv_stem(mel: TensorValue, p: Params) -> TensorValue:
    """(B, n_mels, 2A) log-mel -> (B, A, d): conv, GELU, stride-2 conv, GELU."""
    x = ops.permute(mel, [0, 2, 1])  # (B, 2A, n_mels)
    x = ops.gelu(conv1d(x, p, "encoder.conv1", stride=1))
    return ops.gelu(conv1d(x, p, "encoder.conv2", stride=2))


def sinusoids(length: int, channels: int, device: DeviceRef,
              max_timescale: float = 10000.0) -> TensorValue:
    """Whisper's sinusoidal position table (length, channels): sin | cos of position x rate.

    The packaged checkpoints store this table as `encoder.positional_embedding`; computing it
    in the graph shows where it comes from (the notebooks compare the two).
    """
    half = channels // 2
    rate = ops.exp(ops.range(0, half, 1, out_dim=half, dtype=DType.float32, device=device)
                   * float(-np.log(max_timescale) / (half - 1)))
    position = ops.range(0, length, 1, out_dim=length, dtype=DType.float32, device=device)
    angle = ops.unsqueeze(position, 1) * ops.unsqueeze(rate, 0)
    return ops.concat([ops.sin(angle), ops.cos(angle)], axis=1)


def split_heads(x: TensorValue, n_head: int) -> TensorValue:
    """(B, T, d) -> (B, H, T, hd)."""
    batch, length, d = x.shape
    return ops.permute(ops.reshape(x, [batch, length, n_head, int(d) // n_head]), [0, 2, 1, 3])


def merge_heads(x: TensorValue) -> TensorValue:
    """(B, H, T, hd) -> (B, T, d)."""
    batch, n_head, length, hd = x.shape
    return ops.reshape(ops.permute(x, [0, 2, 1, 3]), [batch, length, int(n_head) * int(hd)])


def attention_weights(q: TensorValue, k_t: TensorValue,
                      mask: TensorValue | None = None) -> TensorValue:
    """softmax(q k^T / sqrt(hd) + mask), (B, H, S, T), from q (B,H,S,hd) and k_t (B,H,hd,T)."""
    scale = float(int(q.shape[-1]) ** -0.5)
    scores = q @ k_t
    if mask is not None:
        scores = scores + mask
    return ops.softmax(scores * scale)


def attention(q: TensorValue, k_t: TensorValue, v: TensorValue,
              mask: TensorValue | None = None) -> TensorValue:
    """Scaled dot-product attention; v is (B, H, T, hd)."""
    return attention_weights(q, k_t, mask) @ v


def self_attention(x: TensorValue, p: Params, name: str, n_head: int) -> TensorValue:
    """Unmasked multi-head self-attention over (B, T, d) (the encoder's)."""
    q = split_heads(p.linear(x, f"{name}.query"), n_head)
    k_t = ops.permute(split_heads(p.linear(x, f"{name}.key"), n_head), [0, 1, 3, 2])
    v = split_heads(p.linear(x, f"{name}.value"), n_head)
    return p.linear(merge_heads(attention(q, k_t, v)), f"{name}.out")


def mlp(x: TensorValue, p: Params, name: str) -> TensorValue:
    return p.linear(ops.gelu(p.linear(x, f"{name}.mlp.0")), f"{name}.mlp.2")


def encoder_block(x: TensorValue, p: Params, name: str, n_head: int) -> TensorValue:
    """Pre-norm residual block: x + attn(ln(x)); x + mlp(ln(x))."""
    x = x + self_attention(p.layer_norm(x, f"{name}.attn_ln"), p, f"{name}.attn", n_head)
    return x + mlp(p.layer_norm(x, f"{name}.mlp_ln"), p, name)


def encoder(mel: TensorValue, p: Params, dims: ModelDimensions) -> TensorValue:
    """(B, n_mels, 2A) -> (B, A, d): stem, sinusoidal positions, blocks, ln_post."""
    x = conv_stem(mel, p) + p.tensor("encoder.positional_embedding")
    for i in range(dims.n_audio_layer):
        x = encoder_block(x, p, f"encoder.blocks.{i}", dims.n_audio_head)
    return p.layer_norm(x, "encoder.ln_post")


def cross_kv(audio: TensorValue, p: Params, dims: ModelDimensions) -> tuple[TensorValue, TensorValue]:
    """Every decoder layer's cross-attention keys (L,B,H,hd,A) and values (L,B,H,A,hd)."""
    keys, values = [], []
    for i in range(dims.n_text_layer):
        name = f"decoder.blocks.{i}.cross_attn"
        k = split_heads(p.linear(audio, f"{name}.key"), dims.n_text_head)
        keys.append(ops.permute(k, [0, 1, 3, 2]))
        values.append(split_heads(p.linear(audio, f"{name}.value"), dims.n_text_head))
    return ops.stack(keys, axis=0), ops.stack(values, axis=0)


def causal_mask(length_new, length_past, device: DeviceRef) -> TensorValue:
    """(S, P+S) additive mask: new token i may see every past token and new tokens <= i."""
    past = ops.shape_to_tensor([length_past]).reshape([])
    new = ops.shape_to_tensor([length_new]).reshape([])
    rows = ops.range(past, past + new, 1, out_dim=length_new, dtype=DType.int64, device=device)
    cols = ops.range(0, past + new, 1, out_dim=length_past + length_new, dtype=DType.int64,
                     device=device)
    visible = ops.unsqueeze(cols, 0) <= ops.unsqueeze(rows, 1)
    zero = ops.constant(0.0, DType.float32, device=device)
    return ops.where(visible, zero, ops.constant(NEG_INF, DType.float32, device=device))


def decoder_block(x: TensorValue, p: Params, i: int, n_head: int, past_k: TensorValue,
                  past_v: TensorValue, cross_k_t: TensorValue, cross_v: TensorValue,
                  mask: TensorValue) -> tuple[TensorValue, ...]:
    """One decoder layer on S new tokens, past_k/v (P, B, d).

    Returns x, the new keys and values (B, S, d), and the cross-attention weights (B, H, S, A).
    """
    name = f"decoder.blocks.{i}"
    h = p.layer_norm(x, f"{name}.attn_ln")
    q = split_heads(p.linear(h, f"{name}.attn.query"), n_head)
    k_new = p.linear(h, f"{name}.attn.key")  # (B, S, d)
    v_new = p.linear(h, f"{name}.attn.value")
    k_all = ops.concat([ops.permute(past_k, [1, 0, 2]), k_new], axis=1)  # (B, P+S, d)
    v_all = ops.concat([ops.permute(past_v, [1, 0, 2]), v_new], axis=1)
    k_t = ops.permute(split_heads(k_all, n_head), [0, 1, 3, 2])
    x = x + p.linear(merge_heads(attention(q, k_t, split_heads(v_all, n_head), mask)),
                     f"{name}.attn.out")

    h = p.layer_norm(x, f"{name}.cross_attn_ln")
    q = split_heads(p.linear(h, f"{name}.cross_attn.query"), n_head)
    cross_weights = attention_weights(q, cross_k_t)  # (B, H, S, A)
    x = x + p.linear(merge_heads(cross_weights @ cross_v), f"{name}.cross_attn.out")

    x = x + mlp(p.layer_norm(x, f"{name}.mlp_ln"), p, name)
    return x, k_new, v_new, cross_weights


def decoder_step(tokens: TensorValue, past_k: TensorValue, past_v: TensorValue,
                 cross_k_t: TensorValue, cross_v: TensorValue, p: Params,
                 dims: ModelDimensions, with_cross_weights: bool = False) -> tuple[TensorValue, ...]:
    """tokens (B, S) at positions P..P+S-1 -> logits (B, S, V), new k and v (S, L, B, d).

    With `with_cross_weights`, also every layer's cross-attention weights (L, B, H, S, A):
    which audio positions each token attends to (Whisper aligns words with them).
    """
    length_new, length_past = tokens.shape[1], past_k.shape[0]
    past = ops.shape_to_tensor([length_past]).reshape([])
    positions = ops.range(past, past + ops.shape_to_tensor([length_new]).reshape([]), 1,
                          out_dim=length_new, dtype=DType.int64, device=p.device)
    x = ops.gather(p.tensor("decoder.token_embedding.weight"), tokens, axis=0)
    x = x + ops.gather(p.tensor("decoder.positional_embedding"), positions, axis=0)
    mask = causal_mask(length_new, length_past, p.device)
    new_k, new_v, cross_weights = [], [], []
    for i in range(dims.n_text_layer):
        x, k, v, weights = decoder_block(x, p, i, dims.n_text_head, past_k[:, i], past_v[:, i],
                                         cross_k_t[i], cross_v[i], mask)
        new_k.append(k)
        new_v.append(v)
        cross_weights.append(weights)
    x = p.layer_norm(x, "decoder.ln")
    logits = x @ ops.transpose(p.tensor("decoder.token_embedding.weight"), 0, 1)
    # (L, B, S, d) -> (S, L, B, d): position first, like the cache
    stack = [ops.permute(ops.stack(kv, axis=0), [2, 0, 1, 3]) for kv in (new_k, new_v)]
    if with_cross_weights:
        return logits, stack[0], stack[1], ops.stack(cross_weights, axis=0)
    return logits, stack[0], stack[1]


# ---------------------------------------------------------------------------------------------
# Whole graphs
# ---------------------------------------------------------------------------------------------


def _to_float32(x: TensorValue) -> TensorValue:
    return x if x.dtype == DType.float32 else ops.cast(x, DType.float32)


def _from_float32(x: TensorValue, dtype: DType) -> TensorValue:
    return x if dtype == DType.float32 else ops.cast(x, dtype)


def build_encoder_graph(p: Params) -> Graph:
    """mel (B, n_mels, 2A) -> audio features (B, A, d), cross keys, cross values."""
    dims, dev = p.weights.dims, p.device
    mel_type = TensorType(DType.float32, ["batch", dims.n_mels, 2 * dims.n_audio_ctx], device=dev)
    with Graph("whisper_encoder", input_types=[mel_type]) as graph:
        mel = _from_float32(graph.inputs[0].tensor, p.dtype)
        audio = encoder(mel, p, dims)
        keys, values = cross_kv(audio, p, dims)
        graph.output(*(_to_float32(t) for t in (audio, keys, values)))
    return graph


def decoder_input_types(dims: ModelDimensions, device: DeviceRef) -> list[TensorType]:
    L, H, A, d = dims.n_text_layer, dims.n_text_head, dims.n_audio_ctx, dims.n_text_state
    hd = d // H
    return [
        TensorType(DType.int64, ["batch", "new"], device=device),  # tokens
        TensorType(DType.float32, ["past", L, "batch", d], device=device),  # self keys
        TensorType(DType.float32, ["past", L, "batch", d], device=device),  # self values
        TensorType(DType.float32, [L, "batch", H, hd, A], device=device),  # cross keys^T
        TensorType(DType.float32, [L, "batch", H, A, hd], device=device),  # cross values
    ]


def build_decoder_graph(p: Params, with_cross_weights: bool = False) -> Graph:
    """(tokens, past k, past v, cross k, cross v) -> (logits, new k, new v[, cross weights])."""
    dims = p.weights.dims
    name = "whisper_decoder_alignment" if with_cross_weights else "whisper_decoder"
    with Graph(name, input_types=decoder_input_types(dims, p.device)) as graph:
        tokens, *rest = (value.tensor for value in graph.inputs)
        rest = [_from_float32(t, p.dtype) for t in rest]
        outputs = decoder_step(tokens, *rest, p, dims, with_cross_weights)
        graph.output(*(_to_float32(t) for t in outputs))
    return graph
