"""maxwhisper's own Mojo kernels (`mojo_kernels/`), as MAX Graph ops.

There is one: the decoder's output projection over float16 weights (see
`mojo_kernels/vocab_logits.mojo` for why). The Mojo package is compiled once per source version
into the compiled-model cache, so a warm start does not pay the Mojo compiler; MAX's own
`custom_extensions` would rebuild a source package in every process.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from max.dtype import DType
from max.graph import TensorType, TensorValue, ops

from .settings import cache_dir

KERNEL_SOURCES = Path(__file__).resolve().parent / "mojo_kernels"
VOCAB_LOGITS = "maxwhisper_vocab_logits"


def source_hash() -> str:
    """A digest of the Mojo sources (part of the compiled-graph cache key)."""
    digest = hashlib.sha256()
    for path in sorted(KERNEL_SOURCES.glob("*.mojo")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def kernel_library() -> Path:
    """The compiled kernel package (`.mojoc`), built on first use and kept in the cache."""
    target = cache_dir() / "kernels" / source_hash() / "maxwhisper_kernels.mojoc"
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


def vocab_logits(h: TensorValue, embedding: TensorValue) -> TensorValue:
    """h (..., d) float32 @ embedding (d, V) float16 -> logits (..., V) float32 (CPU kernel)."""
    *lead, d = h.shape
    vocab = embedding.shape[1]
    rows = ops.reshape(h, [-1, d])
    out_type = TensorType(DType.float32, [rows.shape[0], vocab], device=h.device)
    (logits,) = ops.custom(VOCAB_LOGITS, h.device, [rows, embedding], [out_type])
    return ops.reshape(logits.tensor, [*lead, vocab])

