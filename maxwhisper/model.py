"""Whisper as MAX graphs: the conv stem, attention blocks, encoder and KV-cached decoder step.

Each builder takes `TensorValue`s and a `Params` (which hands out MAX `Weight`s named after
openai-whisper's state dict) and returns `TensorValue`s, so a notebook can put any one piece in
a graph of its own. Two graphs run a transcription:

- the encoder graph: log-mel (B, n_mels, 2*n_audio_ctx) -> audio features (B, n_audio_ctx, d)
  plus every decoder layer's cross-attention keys (L, B, H, hd, A) and values (L, B, H, A, hd),
  computed once per 30-s window;
- the decoder step graph: new tokens (B, S) and the self-attention cache of the P tokens
  before them -> logits (B, S, n_vocab) and the keys/values of the S new tokens. The B rows
  (beams, or best-of samples) share one window's cross-attention K/V, read once per step.

The self-attention cache is preallocated for the whole text context (n_text_ctx slots) and
passed whole, with the number P of filled slots: the graph masks the empty slots, attends to
the cache and to the S new tokens without concatenating them, and returns only the new tokens'
keys and values, which the caller writes into the cache in place. Nothing grows or is copied
per step. Batch (beams), S and P vary at run time: one compiled graph serves every shape.

This module imports no torch: weights arrive as numpy arrays through MAX's weights registry.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from max.dtype import DType
from max.graph import BufferType, DeviceRef, Graph, TensorType, TensorValue, Weight, ops

from . import custom_ops
from .weights import ModelDimensions, WhisperWeights

LN_EPS = 1e-5
NEG_INF = -1e30  # finite: a fully masked row must still give a valid softmax, never NaN


@dataclass
class Params:
    """Hands out graph `Weight`s derived from openai-whisper tensors, and fills the registry.

    Every graph weight is a function of named checkpoint tensors: linear weights transposed to
    (in, out) so a projection is a plain `x @ W`; q, k and v fused into one (in, 3 out) matrix;
    conv filters in MAX's RSCF layout. The function is recorded with the weight, so `registry()`
    builds exactly the arrays the graph declared.
    """

    weights: WhisperWeights
    device: DeviceRef
    dtype: DType = DType.float32
    # which of maxwhisper's Mojo kernels (`runtime.default_kernels` picks them) this graph uses:
    # the decoder's "vocab" (the output projection) and "linear" (the layers' projections) over
    # float16 weights, "cross_attention" (the attention to the audio window), "self_attention"
    # (the attention over the filled cache slots); the encoder's "encoder_attention" and
    # "encoder_linear" (its projections, conv stem and cross K/V over float16 weights). CPU,
    # float32 parts of a graph only
    kernels: frozenset[str] = frozenset()
    # the encoder's stem and first `float64_blocks` blocks compute in float64 (see `encoder`)
    float64_blocks: int = 0

    def __post_init__(self) -> None:
        self._makers: dict[str, Callable[[], np.ndarray]] = {}
        self._handles: dict[str, Weight] = {}
        self._graph_dtype = self.dtype  # weights in any other dtype get names of their own

    def in_dtype(self, dtype: DType) -> Params:
        """This Params handing out its weights in `dtype` into the same registry (so one graph
        can compute some layers in another precision)."""
        view = copy.copy(self)  # shares the registry dicts
        view.dtype = dtype
        return view

    def derived(self, name: str, make: Callable[[], np.ndarray],
                dtype: DType | None = None) -> TensorValue:
        """The graph weight `name`, whose value is `make()` (evaluated for the registry),
        stored in this Params' dtype unless `dtype` says otherwise; a weight stored in another
        dtype than the graph's is a weight of its own, named with that dtype."""
        dtype = dtype or self.dtype
        if dtype != self._graph_dtype:
            name += f".{dtype.name}"
        if name not in self._handles:
            self._handles[name] = Weight(name, dtype, make().shape, self.device)
            self._makers[name] = make
        return self._handles[name]

    def tensor(self, name: str) -> TensorValue:
        return self.derived(name, lambda: self.weights.tensors[name])

    def transposed(self, name: str, dtype: DType | None = None) -> TensorValue:
        """A (out, in) matrix stored as (in, out), in `dtype` if given."""
        return self.derived(f"{name}.T", lambda: self.weights.tensors[name].T, dtype)

    def _bias(self, name: str, size: int) -> np.ndarray:
        return self.weights.tensors.get(f"{name}.bias", np.zeros(size, np.float32))

    def projections_on_kernel(self) -> bool:
        """Whether this graph's projections run on the float16-weight kernel: the decoder's
        ("linear") or the encoder's ("encoder_linear"), in a float32 part of the graph."""
        return bool(self.kernels & {"linear", "encoder_linear"}) and self.dtype == DType.float32

    def linear(self, x: TensorValue, name: str, gelu: bool = False) -> TensorValue:
        """openai-whisper's `Linear`: x @ W.T + b (no bias for attention keys), then GELU if
        asked (the MLP's up-projection)."""
        if self.projections_on_kernel():
            return self._kernel_projection(x, [name], gelu)
        y = x @ self.transposed(f"{name}.weight")
        if f"{name}.bias" in self.weights.tensors:
            y = y + self.tensor(f"{name}.bias")
        return ops.gelu(y) if gelu else y

    def fused_linear(self, x: TensorValue, names: list[str]) -> list[TensorValue]:
        """Several projections of the same input as one matmul (one read of x, one call),
        split afterwards; missing biases (the key's) are zeros. Same dot products, same values."""
        sizes = [self.weights.tensors[f"{n}.weight"].shape[0] for n in names]
        return list(ops.split(self.joined_projection(x, names), sizes, axis=-1))

    def joined_projection(self, x: TensorValue, names: list[str]) -> TensorValue:
        """`fused_linear`'s one matmul, its outputs side by side (..., sum of outs)."""
        if self.projections_on_kernel():
            return self._kernel_projection(x, names)
        joined = "+".join(names)
        weight = self.derived(f"{joined}.weight.T", lambda: self._joined_kn(names))
        bias = self.derived(f"{joined}.bias", lambda: self._joined_bias(names))
        return x @ weight + bias

    def _joined_kn(self, names: list[str]) -> np.ndarray:
        """The (in, sum of outs) matrix of several projections side by side."""
        return np.concatenate([self.weights.tensors[f"{n}.weight"].T for n in names], axis=1)

    def _joined_bias(self, names: list[str]) -> np.ndarray:
        t = self.weights.tensors
        return np.concatenate([self._bias(n, t[f"{n}.weight"].shape[0]) for n in names])

    def _kernel_projection(self, x: TensorValue, names: list[str], gelu: bool = False
                           ) -> TensorValue:
        """`joined_projection` by maxwhisper's float16 Mojo kernel (weights packed in panels)."""
        panels, bias = self._packed(names)
        n = sum(self.weights.tensors[f"{name}.weight"].shape[0] for name in names)
        return custom_ops.linear_f16(x, panels, bias, n, gelu)

    def _packed(self, names: list[str]) -> tuple[TensorValue, TensorValue]:
        """The kernel's operands for projections `names` side by side: the float16 panels and
        the padded bias (the same constants under the same names, whichever op reads them)."""
        joined = "+".join(names)
        panels = self.derived(f"{joined}.weight.panels",
                              lambda: custom_ops.pack_panels(self._joined_kn(names)), DType.float16)
        bias = self.derived(f"{joined}.bias.padded",
                            lambda: custom_ops.pad_bias(self._joined_bias(names)))
        return panels, bias

    def cross_kv_on_kernel(self, audio: TensorValue, names: list[str], dims: ModelDimensions
                           ) -> tuple[TensorValue, TensorValue]:
        """`cross_kv` by the float16 kernel: `names` (each layer's key, then value) as one
        packed matrix, the sums written as keys^T (L, B, H, hd, A) and values (L, B, H, A, hd)."""
        panels, bias = self._packed(names)
        return custom_ops.cross_kv_f16(audio, panels, bias, dims.n_text_layer, dims.n_text_head)

    def conv_gelu(self, x_nlc: TensorValue, name: str, stride: int) -> TensorValue:
        """GELU(conv1d(x)), kernel 3, padding 1, on (B, L, C) by the float16-weight kernel."""
        filter_, bias = self.weights.tensors[f"{name}.weight"], self.weights.tensors[f"{name}.bias"]
        panels = self.derived(f"{name}.weight.panels", lambda: custom_ops.pack_panels(
            custom_ops.conv_matrix(filter_)), DType.float16)
        padded = self.derived(f"{name}.bias.padded", lambda: custom_ops.pad_bias(bias))
        return custom_ops.conv3_gelu_f16(x_nlc, panels, padded, filter_.shape[0], stride)

    def vocabulary_logits(self, h: TensorValue) -> TensorValue:
        """h (..., d) @ token_embedding^T: the logits (..., n_vocab)."""
        if "vocab" in self.kernels:  # the embedding is a bias-free projection to the kernel
            return self._kernel_projection(h, ["decoder.token_embedding"])
        # (d, V): a plain row-major `x @ W` (measured faster in MAX than `x @ W.T`)
        return h @ self.transposed("decoder.token_embedding.weight")

    def token_embedding(self, tokens: TensorValue) -> TensorValue:
        """The embedding rows of `tokens` (B, S) -> (B, S, d) float32; read from a (V, d)
        float16 copy when the kernels run (the released values, half the memory)."""
        name = "decoder.token_embedding.weight"
        dtype = DType.float16 if "vocab" in self.kernels else None
        table = self.derived(name, lambda: self.weights.tensors[name], dtype)
        return _to_float32(ops.gather(table, tokens, axis=0))

    def layer_norm(self, x: TensorValue, name: str) -> TensorValue:
        return ops.layer_norm(x, self.tensor(f"{name}.weight"), self.tensor(f"{name}.bias"), LN_EPS)

    def conv_filter(self, name: str) -> TensorValue:
        """PyTorch conv1d weight (C_out, C_in, K) as a MAX conv2d filter (1, K, C_in, C_out)."""
        return self.derived(f"{name}.rscf", lambda: self.weights.tensors[name].transpose(2, 1, 0)[None])

    def registry(self) -> dict[str, np.ndarray]:
        """numpy values for every weight this graph used, in its layout and dtype."""
        return {name: np.ascontiguousarray(make(), _NUMPY_DTYPES[self._handles[name].dtype])
                for name, make in self._makers.items()}


_NUMPY_DTYPES = {DType.float64: np.float64, DType.float32: np.float32, DType.float16: np.float16}


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
    if p.projections_on_kernel():  # (an encoder graph's only projection kernel: "encoder_linear")
        return p.conv_gelu(p.conv_gelu(x, "encoder.conv1", 1), "encoder.conv2", 2)
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


def qkv_names(name: str) -> list[str]:
    """The query, key and value projections of attention module `name`."""
    return [f"{name}.query", f"{name}.key", f"{name}.value"]


def qkv(x: TensorValue, p: Params, name: str) -> list[TensorValue]:
    """The query, key and value projections of x, as one fused matmul."""
    return p.fused_linear(x, qkv_names(name))


def self_attention(x: TensorValue, p: Params, name: str, n_head: int) -> TensorValue:
    """Unmasked multi-head self-attention over (B, T, d) (the encoder's)."""
    if "encoder_attention" in p.kernels and p.dtype == DType.float32:
        joined = p.joined_projection(x, qkv_names(name))
        return p.linear(custom_ops.encoder_attention(joined), f"{name}.out")
    q, k, v = (split_heads(t, n_head) for t in qkv(x, p, name))
    return p.linear(merge_heads(attention(q, ops.permute(k, [0, 1, 3, 2]), v)), f"{name}.out")


def mlp(x: TensorValue, p: Params, name: str) -> TensorValue:
    return p.linear(p.linear(x, f"{name}.mlp.0", gelu=True), f"{name}.mlp.2")


def encoder_block(x: TensorValue, p: Params, name: str, n_head: int) -> TensorValue:
    """Pre-norm residual block: x + attn(ln(x)); x + mlp(ln(x))."""
    x = x + self_attention(p.layer_norm(x, f"{name}.attn_ln"), p, f"{name}.attn", n_head)
    return x + mlp(p.layer_norm(x, f"{name}.mlp_ln"), p, name)


def encoder(mel: TensorValue, p: Params, dims: ModelDimensions) -> TensorValue:
    """(B, n_mels, 2A) -> (B, A, d): stem, sinusoidal positions, blocks, ln_post.

    With `p.float64_blocks` = k > 0, the stem and the first k blocks compute in float64. The
    encoder amplifies rounding in its first layers about 200x by its output (measured: a
    float32 rounding-level change in block 0's attention alone moves base's output by 1e-3), so
    float32 throughout, torch's included, lands up to ~2e-3 from the exact result on some
    clips; one float64 block brings MAX within ~5e-4 of it on every clip, for 20-30 % more
    encoder time on this CPU. (Keeping any part of the block in float32 lost that on some clip.)
    """
    early = p.in_dtype(DType.float64) if p.float64_blocks else p
    x = conv_stem(_cast(mel, early.dtype), early) + early.tensor("encoder.positional_embedding")
    for i in range(dims.n_audio_layer):
        block_p = early if i < p.float64_blocks else p
        x = encoder_block(_cast(x, block_p.dtype), block_p, f"encoder.blocks.{i}",
                          dims.n_audio_head)
    return p.layer_norm(_cast(x, p.dtype), "encoder.ln_post")


def cross_kv(audio: TensorValue, p: Params, dims: ModelDimensions) -> tuple[TensorValue, TensorValue]:
    """Every decoder layer's cross-attention keys (L,B,H,hd,A) and values (L,B,H,A,hd).

    All 2L projections of the audio features are one matmul (d -> 2 L d).
    """
    names = cross_kv_names(dims)
    if p.projections_on_kernel():  # the same sums, written in these layouts by the kernel
        return p.cross_kv_on_kernel(audio, names, dims)
    return cross_kv_layouts(p.fused_linear(audio, names), dims.n_text_head)


def cross_kv_names(dims: ModelDimensions) -> list[str]:
    """The 2L projections `cross_kv` joins: each decoder layer's cross-attention key, then value."""
    return [f"decoder.blocks.{i}.cross_attn.{kv}" for i in range(dims.n_text_layer)
            for kv in ("key", "value")]


def cross_kv_layouts(projections: list[TensorValue], n_head: int
                     ) -> tuple[TensorValue, TensorValue]:
    """The 2L projections (B, A, d), each layer's key then value, as keys^T (L, B, H, hd, A)
    and values (L, B, H, A, hd)."""
    heads = [split_heads(t, n_head) for t in projections]
    keys = [ops.permute(k, [0, 1, 3, 2]) for k in heads[0::2]]
    return ops.stack(keys, axis=0), ops.stack(heads[1::2], axis=0)


def cache_masks(offset: TensorValue, length_new, capacity: int, device: DeviceRef
                ) -> tuple[TensorValue, TensorValue]:
    """Additive masks for S new tokens at positions P.. (P = `offset`, a scalar tensor):
    over the cache's `capacity` slots only the first P are filled (1, T); among the new tokens
    token i sees tokens <= i (S, S)."""
    zero = ops.constant(0.0, DType.float32, device=device)
    blocked = ops.constant(NEG_INF, DType.float32, device=device)
    slots = ops.range(0, capacity, 1, out_dim=capacity, dtype=DType.int64, device=device)
    past = ops.where(ops.unsqueeze(slots < offset, 0), zero, blocked)
    # A band of ones rather than comparing two ranges over the same symbolic dim: MAX 26.7
    # miscompiled that comparison (every new token saw every other one) unless the mask was
    # also a graph output.
    ones = ops.broadcast_to(ops.constant(1.0, DType.float32, device=device),
                            [length_new, length_new])
    new = (1.0 - ops.band_part(ones, num_lower=None, num_upper=0)) * NEG_INF
    return past, new


def cached_self_attention(q: TensorValue, k_t: TensorValue, v: TensorValue, keys_t: TensorValue,
                          values: TensorValue, past_mask: TensorValue, new_mask: TensorValue
                          ) -> TensorValue:
    """Attention of S new tokens over the cache and over themselves, without concatenating.

    q, v (B, H, S, hd) and k_t (B, H, hd, S) are the new tokens'; keys_t (B, H, hd, T) and
    values (B, H, T, hd) are the whole preallocated cache, its unfilled slots masked. Scores
    against the cache and against the new keys are joined (only S x (T+S) numbers), one
    softmax, and the two value products summed, so the cache is read in place and never copied.
    """
    scale = float(int(q.shape[-1]) ** -0.5)
    capacity = int(keys_t.shape[-1])
    scores = ops.concat([q @ keys_t + past_mask, q @ k_t + new_mask], axis=-1)
    weights = ops.softmax(scores * scale)
    return weights[..., :capacity] @ values + weights[..., capacity:] @ v


def grouped_cross_attention(q: TensorValue, k_t: TensorValue, v: TensorValue
                            ) -> tuple[TensorValue, TensorValue]:
    """Cross-attention of B batch rows in G equal groups, group g to audio window g: the beams
    of one window (G = 1) or the chunks of a batch (G = B, or B / beams).

    q (B, H, S, hd); k_t (G, H, hd, A) and v (G, H, A, hd). A group's rows are folded into
    the rows of one matmul per window and head, so each window's keys and values are read
    once, not once per row. Returns the output (B, H, S, hd) and the weights (B, H, S, A).
    """
    batch, n_head, length, hd = q.shape
    groups, positions = k_t.shape[0], k_t.shape[-1]
    per_group = batch // groups  # the batch is G whole groups (rebind asserts it at run time)
    rows = ops.reshape(q.rebind([groups * per_group, n_head, length, hd]),
                       [groups, per_group, n_head, length, hd])
    rows = ops.reshape(ops.permute(rows, [0, 2, 1, 3, 4]), [groups, n_head, -1, hd])
    weights = attention_weights(rows, k_t)  # (G, H, rows of a group, A)

    def per_row(t: TensorValue, width) -> TensorValue:  # (G, H, rows, w) -> (B, H, S, w)
        t = ops.reshape(t, [groups, n_head, per_group, length, width])
        t = ops.reshape(ops.permute(t, [0, 2, 1, 3, 4]), [groups * per_group, n_head, length,
                                                            width])
        return t.rebind([batch, n_head, length, width])

    # out = weights @ v, computed as (v^T @ weights^T)^T: the same sums, but not the
    # matmul-softmax-matmul pattern that MAX 26.7's attention fusion matches and then rejects
    # for these grouped reshapes ("MHA Pattern Detected unsafe reshapes/bcasts": the decoder
    # graph without the cross-attention kernel, as on an accelerator, failed to compile)
    out = ops.permute(ops.permute(v, [0, 1, 3, 2]) @ ops.permute(weights, [0, 1, 3, 2]),
                      [0, 1, 3, 2])
    return per_row(out, hd), per_row(weights, positions)


def kernel_cross_attention(q: TensorValue, k_t: TensorValue, v: TensorValue, n_head: int
                           ) -> tuple[TensorValue, TensorValue]:
    """`grouped_cross_attention` by maxwhisper's Mojo kernel, from q (B, S, d) unsplit: each
    window's K/V are read once per step for all its rows at the machine's bandwidth. Returns
    the output (B, S, d) and the weights (B, H, S, A)."""
    batch, length, d = q.shape
    rows = ops.reshape(q, [-1, n_head, int(d) // n_head])  # (B*S, H, hd): no copy
    out, weights = custom_ops.cross_attention(rows, k_t, v)  # (B*S, H, hd), (H, B*S, A)
    weights = ops.reshape(weights, [n_head, batch, length, int(k_t.shape[-1])])
    return ops.reshape(out, [batch, length, d]), ops.permute(weights, [1, 0, 2, 3])


def decoder_block(x: TensorValue, p: Params, i: int, n_head: int, keys_t: TensorValue,
                  values: TensorValue, cross_k_t: TensorValue, cross_v: TensorValue,
                  masks: tuple[TensorValue, TensorValue], offset: TensorValue,
                  picks: TensorValue | None = None) -> tuple[TensorValue, ...]:
    """One decoder layer on S new tokens; keys_t (B,H,hd,T) / values (B,H,T,hd) its cache,
    of which the first P = offset[0] slots are filled (`masks` hide the rest from MAX's ops);
    cross_k_t (G,H,hd,A) / cross_v (G,H,A,hd) the G windows the B rows attend to, in groups.

    Returns x, the new keys (B, H, hd, S) and values (B, H, S, hd) for the cache, and the
    cross-attention weights (B, H, S, A). With `picks` (K indices into the S tokens; the last
    layer), x and the weights only for those K rows: every token's keys and values are still
    made, but the rest of the layer runs only where logits are wanted (a prompt prefill of
    200 tokens needs 2).
    """
    name = f"decoder.blocks.{i}"
    q, k, v = qkv(p.layer_norm(x, f"{name}.attn_ln"), p, f"{name}.attn")  # (B, S, d) each
    v = split_heads(v, n_head)
    batch, length, d = k.shape
    hd = int(d) // n_head
    k_t = ops.permute(ops.reshape(k, [batch, length, n_head, hd]), [0, 2, 3, 1])
    if "self_attention" in p.kernels:  # the filled slots only, q unsplit (no copy)
        rows = ops.reshape(q, [-1, n_head, hd])
        attended = ops.reshape(custom_ops.self_attention(rows, keys_t, values, k_t, v, offset),
                               [batch, length, d])
    else:
        attended = merge_heads(cached_self_attention(split_heads(q, n_head), k_t, v, keys_t,
                                                     values, *masks))
    if picks is not None:  # the rows are computed alone, so the picked ones are unchanged
        attended, x = ops.gather(attended, picks, axis=1), ops.gather(x, picks, axis=1)
    x = x + p.linear(attended, f"{name}.attn.out")

    h = p.layer_norm(x, f"{name}.cross_attn_ln")
    q = p.linear(h, f"{name}.cross_attn.query")
    if "cross_attention" in p.kernels:
        attended, cross_weights = kernel_cross_attention(q, cross_k_t, cross_v, n_head)
    else:
        attended, cross_weights = grouped_cross_attention(split_heads(q, n_head), cross_k_t,
                                                          cross_v)
        attended = merge_heads(attended)
    x = x + p.linear(attended, f"{name}.cross_attn.out")

    x = x + mlp(p.layer_norm(x, f"{name}.mlp_ln"), p, name)
    return x, k_t, v, cross_weights


def decoder_step(tokens: TensorValue, offset: TensorValue, keys_t: TensorValue,
                 values: TensorValue, cross_k_t: TensorValue, cross_v: TensorValue,
                 picks: TensorValue, p: Params, dims: ModelDimensions,
                 with_cross_weights: bool = False) -> tuple[TensorValue, ...]:
    """tokens (B, S) at positions P..P+S-1 (P = offset[0], the filled cache slots) ->
    logits (B, K, V) at the K positions `picks` (indices into the S new tokens), and the new
    tokens' keys (L, B, H, hd, S) and values (L, B, H, S, hd) to write into the cache.

    Decoding needs the logits of the last token (and once, of <|startoftranscript|> for the
    no-speech probability), not of a whole 200-token prompt: picking first saves reading the
    vocabulary matrix for every prompt position.

    The output projection reads the whole token embedding every step; with the "vocab" kernel
    it is maxwhisper's float16 Mojo kernel (half the bytes, the same weight values), and with
    "linear" so is every projection of the layers (see `Params.linear`).
    With `with_cross_weights`, also every layer's cross-attention weights (L, B, H, S, A): which
    audio each token attends to.
    """
    length_new = tokens.shape[1]
    past = ops.reshape(offset, [])
    # ops.range takes its bounds on the host, so the offset (on the graph's device) is added
    # after: 0 .. new-1 on the device, then + P
    positions = past + ops.range(0, ops.shape_to_tensor([length_new]).reshape([]), 1,
                                 out_dim=length_new, dtype=DType.int64, device=p.device)
    x = p.token_embedding(tokens) + ops.gather(p.tensor("decoder.positional_embedding"),
                                               positions, axis=0)
    masks = cache_masks(past, length_new, int(keys_t.shape[-1]), p.device)
    new_k, new_v, cross_weights = [], [], []
    # the last layer runs past its self-attention only for the picked rows (unless the
    # cross-attention weights of every token are wanted)
    prune_last = not with_cross_weights
    last = dims.n_text_layer - 1
    for i in range(dims.n_text_layer):
        x, k, v, weights = decoder_block(x, p, i, dims.n_text_head, keys_t[i], values[i],
                                         cross_k_t[i], cross_v[i], masks, offset,
                                         picks=picks if prune_last and i == last else None)
        new_k.append(k)
        new_v.append(v)
        cross_weights.append(weights)
    if not prune_last:
        x = ops.gather(x, picks, axis=1)
    h = p.layer_norm(x, "decoder.ln")
    logits = p.vocabulary_logits(h)
    outputs = (logits, ops.stack(new_k, axis=0), ops.stack(new_v, axis=0))
    if with_cross_weights:
        return *outputs, ops.stack(cross_weights, axis=0)
    return outputs


# ---------------------------------------------------------------------------------------------
# Whole graphs
# ---------------------------------------------------------------------------------------------


def _cast(x: TensorValue, dtype: DType) -> TensorValue:
    return x if x.dtype == dtype else ops.cast(x, dtype)


def _to_float32(x: TensorValue) -> TensorValue:
    return _cast(x, DType.float32)


def build_encoder_graph(p: Params) -> Graph:
    """mel (B, n_mels, 2A) -> audio features (B, A, d), cross keys, cross values."""
    dims, dev = p.weights.dims, p.device
    mel_type = TensorType(DType.float32, ["batch", dims.n_mels, 2 * dims.n_audio_ctx], device=dev)
    extensions = [custom_ops.kernel_library()] if p.kernels else []
    with Graph("whisper_encoder", input_types=[mel_type], custom_extensions=extensions) as graph:
        mel = _cast(graph.inputs[0].tensor, p.dtype)
        audio = encoder(mel, p, dims)
        keys, values = cross_kv(audio, p, dims)
        graph.output(*(_to_float32(t) for t in (audio, keys, values)))
    return graph


def decoder_input_types(dims: ModelDimensions, device: DeviceRef) -> list[TensorType]:
    L, H, A, d = dims.n_text_layer, dims.n_text_head, dims.n_audio_ctx, dims.n_text_state
    hd, T = d // H, dims.n_text_ctx
    return [
        TensorType(DType.int64, ["batch", "new"], device=device),  # tokens
        TensorType(DType.int64, [1], device=device),  # filled cache slots P
        TensorType(DType.float32, [L, "batch", H, hd, T], device=device),  # self keys^T cache
        TensorType(DType.float32, [L, "batch", H, T, hd], device=device),  # self values cache
        # cross keys^T and values of G windows: the batch's rows are G equal groups, group g
        # attending to window g (G = 1: the beams of one window)
        TensorType(DType.float32, [L, "windows", H, hd, A], device=device),
        TensorType(DType.float32, [L, "windows", H, A, hd], device=device),
        TensorType(DType.int64, ["picks"], device=device),  # positions whose logits to return
    ]


def build_cache_gather_graph(p: Params) -> Graph:
    """(key cache, value cache, rows) -> both caches with row b taken from old row rows[b]:
    beam search's reorder and the repeat of a prompt's rows, done where a resident cache lives."""
    types = [*decoder_input_types(p.weights.dims, p.device)[2:4],
             TensorType(DType.int64, ["rows"], device=p.device)]
    with Graph("whisper_cache_gather", input_types=types) as graph:
        keys_t, values, rows = (value.tensor for value in graph.inputs)
        graph.output(ops.gather(keys_t, rows, axis=1), ops.gather(values, rows, axis=1))
    return graph


def build_decoder_graph(p: Params, with_cross_weights: bool = False,
                        resident_cache: bool = False) -> Graph:
    """(tokens, P, key cache, value cache, cross k, cross v, picks) ->
    (logits, new keys, new values[, cross weights]).

    `resident_cache`: the self-attention cache is a pair of buffers on the graph's device that
    the graph itself updates (the new tokens' keys and values stored at slots P..P+S-1), and
    only the logits come back: on an accelerator the cache then never crosses to the host.
    P is then a host tensor (MAX takes slice bounds on the host)."""
    dims = p.weights.dims
    name = "whisper_decoder_alignment" if with_cross_weights else "whisper_decoder"
    extensions = [custom_ops.kernel_library()] if p.kernels else []
    types: list = decoder_input_types(dims, p.device)
    if resident_cache:
        types[1] = TensorType(DType.int64, [1], device=DeviceRef.CPU())
        types[2:4] = [BufferType(t.dtype, t.shape, device=t.device) for t in types[2:4]]
    with Graph(name, input_types=types, custom_extensions=extensions) as graph:
        tokens, offset, key_cache, value_cache, *rest = graph.inputs
        caches = [key_cache.buffer[...], value_cache.buffer[...]] if resident_cache else \
            [key_cache.tensor, value_cache.tensor]
        caches = [_cast(t, p.dtype) for t in [*caches, *(v.tensor for v in rest[:2])]]
        picks = rest[2].tensor
        step_offset = offset.tensor.to(p.device) if resident_cache else offset.tensor
        outputs = [_to_float32(t) for t in decoder_step(tokens.tensor, step_offset, *caches,
                                                         picks, p, dims, with_cross_weights)]
        if resident_cache:
            logits, new_k, new_v, *weights = outputs
            start = ops.reshape(offset.tensor, [])
            length = new_v.shape[3]
            stop = start + ops.shape_to_tensor([length]).reshape([])
            key_cache.buffer[:, :, :, :, (slice(start, stop), length)] = new_k
            value_cache.buffer[:, :, :, (slice(start, stop), length), :] = new_v
            outputs = [logits, *weights]
        graph.output(*outputs)
    return graph
