"""maxwhisper's own Mojo kernels (`mojo_kernels/`), as MAX Graph ops.

- `linear_f16`: the projections (the decoder's, its output projection, the encoder's), x @ W + b
  (optionally with GELU), over float16 weights packed in 64-column panels
  (`mojo_kernels/linear_f16.mojo` says why); `pack_panels` makes that layout from a (K, N)
  matrix. `conv3_gelu_f16`: the encoder's conv stem by the same kernel's blocked product.
- `cross_attention`: the decoder's attention to the audio window, read once for all query
  rows (`mojo_kernels/cross_attention.mojo`).
- `self_attention`: the decoder's attention over the filled slots of its preallocated cache
  and over the new tokens (`mojo_kernels/self_attention.mojo`).
- `encoder_attention`: the encoder's multi-head self-attention, from the fused q/k/v
  projection to the merged heads (`mojo_kernels/encoder_attention.mojo`).

The Mojo package is compiled once per source version into the compiled-model cache, so a warm
start does not pay the Mojo compiler; MAX's own `custom_extensions` would rebuild a source
package in every process.
"""

from __future__ import annotations

import hashlib
import os
import platform
from functools import lru_cache
from pathlib import Path

import numpy as np
from max.dtype import DType
from max.graph import TensorType, TensorValue, ops

from .settings import cache_dir, projection_share_kb

KERNEL_SOURCES = Path(__file__).resolve().parent / "mojo_kernels"
LINEAR_F16 = "maxwhisper_linear_f16"
CONV3_GELU_F16 = "maxwhisper_conv3_gelu_f16"
CROSS_KV_F16 = "maxwhisper_cross_kv_f16"
CROSS_ATTENTION = "maxwhisper_cross_attention"
SELF_ATTENTION = "maxwhisper_self_attention"
ENCODER_ATTENTION = "maxwhisper_encoder_attention"
PANEL = 64  # output columns per packed panel (linear_f16.mojo's PANEL)


def source_hash() -> str:
    """A digest of the Mojo sources (part of the compiled-graph cache key)."""
    digest = hashlib.sha256()
    for path in sorted(KERNEL_SOURCES.glob("*.mojo")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=1)
def host_cpu() -> str:
    """This machine's CPU as the compiler targets it: vendor, family, model and a digest of its
    instruction-set flags (Linux's /proc/cpuinfo; elsewhere `platform`'s description).

    Part of every compiled-code cache key: code compiled for one CPU may use instructions
    another lacks (AVX-512 code dies with SIGILL on an AVX2 machine) and the kernels' register
    blocks follow the vector width, so a cache directory shared between machines keeps one
    entry per kind of CPU."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    if "flags" not in fields:
        return f"{platform.machine()}-{platform.processor()}"
    flags = hashlib.sha256(" ".join(sorted(fields["flags"].split())).encode()).hexdigest()[:12]
    return (f"{fields.get('vendor_id', '?')}-{fields.get('cpu family', '?')}-"
            f"{fields.get('model', '?')}-{flags}")


def encoder_gemm_kernel_pays() -> bool:
    """Whether the encoder's many-row products (and conv stem) run on `linear_f16`'s blocked
    GEMM rather than MAX's float32 matmul and conv on this CPU (`host_cpu()`'s vendor).

    Not on Intel. Measured on an Intel Xeon (AVX-512, 2 cores): before the GEMM's register
    block was narrowed (`registers.GEMM_SUM_REGISTERS`) a tiny.en window took 321 ms on the
    kernel against 232 on MAX's ops (2026-11-29); after it (2026-11-30, one process, 12
    alternated calls) the two are level (the kernel +4 ms a window at one window a call, -12 ms
    a window at eight), but the stem's long sums in order (3 x 384 inputs) moved the hard tiny.en
    clip's encoder output 2.5e-3 from the exact result, past torch's 1.4e-3 and the project's
    bound, which MAX's conv keeps. On AMD the kernel won (Zen 3: a tiny window 499-520 ->
    414-479 ms) and met the bound; it stays the choice where nothing was measured."""
    return not host_cpu().startswith("GenuineIntel-")


def kernel_library() -> Path:
    """The compiled kernel package (`.mojoc`), built on first use and kept in the cache (one
    per source version and kind of CPU)."""
    cpu = hashlib.sha256(host_cpu().encode()).hexdigest()[:8]
    target = cache_dir() / "kernels" / f"{source_hash()}-{cpu}" / "maxwhisper_kernels.mojoc"
    if target.is_file():
        return target
    from mojo.run import subprocess_run_mojo  # the Mojo compiler bundled with `max`

    # the compiler names the module after the output file's stem, so stage under the final
    # name in a private folder and move it into place atomically
    staging = target.parent / f".staging-{os.getpid()}"
    staging.mkdir(parents=True, exist_ok=True)
    built = staging / target.name
    result = subprocess_run_mojo(["precompile", str(KERNEL_SOURCES), "-o", str(built)],
                                 capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"compiling maxwhisper's Mojo kernels failed:\n{result.stderr}")
    os.replace(built, target)
    staging.rmdir()
    return target


def fits_float16(array: np.ndarray) -> bool:
    """True when every value survives a round trip through float16 (the released weights do)."""
    if array.dtype == np.float16:  # stored as float16 (.npz keeps the source dtype): no copy
        return True
    return bool(np.array_equal(array.astype(np.float16).astype(array.dtype), array))


def pack_panels(w_kn: np.ndarray) -> np.ndarray:
    """(K, N) -> (ceil(N/64), K, 64) float16 panels, zero columns after N (linear_f16's layout)."""
    k, n = w_kn.shape
    panels = -(-n // PANEL)
    padded = np.zeros((k, panels * PANEL), np.float16)
    padded[:, :n] = w_kn
    return np.ascontiguousarray(padded.reshape(k, panels, PANEL).transpose(1, 0, 2))


def pad_bias(bias: np.ndarray) -> np.ndarray:
    """A bias of N values padded with zeros to the packed width (a multiple of 64)."""
    padded = np.zeros(-(-bias.shape[0] // PANEL) * PANEL, np.float32)
    padded[: bias.shape[0]] = bias
    return padded


def linear_f16(x: TensorValue, panels: TensorValue, bias: TensorValue, n: int,
               gelu: bool = False) -> TensorValue:
    """x (..., K) float32 @ W (K, n) + bias [-> GELU], W packed by `pack_panels` (CPU kernel).

    `bias` has the packed width; columns past `n` (zero weights) are computed and dropped."""
    *lead, k = x.shape
    width = int(panels.shape[0]) * PANEL
    rows = ops.reshape(x, [-1, k])
    out_type = TensorType(DType.float32, [rows.shape[0], width], device=x.device)
    name = LINEAR_F16 + ("_gelu" if gelu else "")
    (y,) = ops.custom(name, x.device, [rows, panels, bias], [out_type],
                      parameters={"share_bytes": projection_share_kb() * 1024})
    y = y.tensor if width == n else y.tensor[:, :n]
    return ops.reshape(y, [*lead, n])


def conv_matrix(filters: np.ndarray) -> np.ndarray:
    """A PyTorch conv1d filter (C_out, C_in, 3) as the (3 C_in, C_out) matrix whose row
    tap * C_in + c multiplies input channel c at offset tap - 1 (`conv3_gelu_f16`'s rows)."""
    c_out, c_in, taps = filters.shape
    return filters.transpose(2, 1, 0).reshape(taps * c_in, c_out)


def conv3_gelu_f16(x: TensorValue, panels: TensorValue, bias: TensorValue, n: int,
                   stride: int) -> TensorValue:
    """GELU(conv1d(x)), kernel 3, padding 1, `stride`, channels last: x (B, L, C) float32 ->
    (B, (L - 1) // stride + 1, n), the filter as `pack_panels(conv_matrix(filters))` (CPU
    kernel; no im2col copy: the kernel reads each output position's three input rows in place)."""
    batch, length, _ = x.shape
    width = int(panels.shape[0]) * PANEL
    out_type = TensorType(DType.float32, [batch, (length - 1) // stride + 1, width],
                          device=x.device)
    (y,) = ops.custom(CONV3_GELU_F16, x.device, [x, panels, bias], [out_type],
                      parameters={"stride": stride})
    return y.tensor if width == n else y.tensor[:, :, :n]


def cross_kv_f16(audio: TensorValue, panels: TensorValue, bias: TensorValue, layers: int,
                 heads: int) -> tuple[TensorValue, TensorValue]:
    """Every decoder layer's cross-attention keys^T (L, B, H, hd, A) and values (L, B, H, A, hd)
    of audio features (B, A, d) float32 (CPU kernel): one product with the layers' key and value
    matrices side by side ((d, 2 L H hd), layer by layer, keys first, packed by `pack_panels`),
    written straight into those layouts (no split, transpose or stack after it)."""
    batch, positions, _ = audio.shape
    width = int(panels.shape[0]) * PANEL
    head_width = width // (2 * layers * heads)
    out_types = [
        TensorType(DType.float32, [layers, batch, heads, head_width, positions],
                   device=audio.device),
        TensorType(DType.float32, [layers, batch, heads, positions, head_width],
                   device=audio.device)]
    keys_t, values = ops.custom(CROSS_KV_F16, audio.device, [audio, panels, bias], out_types)
    return keys_t.tensor, values.tensor


def cross_attention(q: TensorValue, keys_t: TensorValue, values: TensorValue
                    ) -> tuple[TensorValue, TensorValue]:
    """Every query row's attention to its audio window (CPU kernel, float32).

    q (R, H, 64) (rows are windows x beams x new tokens), keys_t (G, H, 64, A), values
    (G, H, A, 64) for G windows, R a multiple of G: rows g*R/G ... attend to window g ->
    out (R, H, 64) and the attention weights (H, R, A)."""
    rows, heads, hd = q.shape
    positions = keys_t.shape[-1]
    out_types = [TensorType(DType.float32, [rows, heads, hd], device=q.device),
                 TensorType(DType.float32, [heads, rows, positions], device=q.device)]
    out, weights = ops.custom(CROSS_ATTENTION, q.device, [q, keys_t, values], out_types)
    return out.tensor, weights.tensor


def self_attention(q: TensorValue, keys_t: TensorValue, values: TensorValue,
                   new_keys_t: TensorValue, new_values: TensorValue, filled: TensorValue
                   ) -> TensorValue:
    """S new tokens' attention over the P = filled[0] cached ones and, causally, over
    themselves (CPU kernel, float32). q (B*S, H, 64); cache keys_t (B, H, 64, T), values
    (B, H, T, 64); the new tokens' keys_t (B, H, 64, S) and values (B, H, S, 64) ->
    out (B*S, H, 64)."""
    out_type = TensorType(DType.float32, q.shape, device=q.device)
    (out,) = ops.custom(SELF_ATTENTION, q.device,
                        [q, keys_t, values, new_keys_t, new_values, filled], [out_type])
    return out.tensor


def encoder_attention(qkv: TensorValue) -> TensorValue:
    """Multi-head self-attention of every window, unmasked, from the fused projection
    qkv (B, T, 3 d) = [q | k | v] -> (B, T, d), heads of 64 (CPU kernel, float32)."""
    batch, length, width = qkv.shape
    out_type = TensorType(DType.float32, [batch, length, width // 3], device=qkv.device)
    (out,) = ops.custom(ENCODER_ATTENTION, qkv.device, [qkv], [out_type])
    return out.tensor
