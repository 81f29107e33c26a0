"""Where things live: the speech set, extracted weights, compiled-model cache.

Each location is an environment variable with a default relative to the repository, so tests,
notebooks and benchmarks read real data from outside the repository and a user can point them
at their own folders.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# MAX otherwise looks up a telemetry host on session creation; this machine has no network.
os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")


def speech_dir() -> Path:
    """The evaluation speech folder (`MAXWHISPER_SPEECH_DIR`, default `../shared/speech`)."""
    default = REPO_ROOT.parent / "shared" / "speech"
    return Path(os.environ.get("MAXWHISPER_SPEECH_DIR", default)).expanduser()


def weights_dir() -> Path:
    """Where extracted `.npz` weights go (`MAXWHISPER_WEIGHTS_DIR`, default `weights/`)."""
    return Path(os.environ.get("MAXWHISPER_WEIGHTS_DIR", REPO_ROOT / "weights")).expanduser()


def cache_dir() -> Path:
    """Compiled MAX models (`MAXWHISPER_CACHE_DIR`, default `~/.cache/maxwhisper`)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "maxwhisper"
    return Path(os.environ.get("MAXWHISPER_CACHE_DIR", default)).expanduser()


def build_dir() -> Path:
    """Generated artefacts: executed notebooks, benchmark results, plots."""
    return Path(os.environ.get("MAXWHISPER_BUILD_DIR", REPO_ROOT / "build")).expanduser()


KERNEL_SWITCHES = {
    "vocab": "MAXWHISPER_VOCAB_KERNEL",  # the decoder's output projection
    "linear": "MAXWHISPER_LINEAR_KERNEL",  # the decoder layers' projections
    "cross_attention": "MAXWHISPER_CROSS_ATTENTION_KERNEL",  # the attention to the audio
    "self_attention": "MAXWHISPER_SELF_ATTENTION_KERNEL",  # the attention over the cache
    "encoder_attention": "MAXWHISPER_ENCODER_ATTENTION_KERNEL",  # the encoder's attention
    # the encoder's projections, its conv stem and the cross-attention K/V
    "encoder_linear": "MAXWHISPER_ENCODER_LINEAR_KERNEL",
}


def kernel_allowed(kernel: str) -> bool:
    """Each of maxwhisper's Mojo kernels can be turned off for A/B runs: `MAXWHISPER_VOCAB_KERNEL=0`
    (the output projection), `MAXWHISPER_LINEAR_KERNEL=0` (the layers' projections),
    `MAXWHISPER_CROSS_ATTENTION_KERNEL=0` and `MAXWHISPER_SELF_ATTENTION_KERNEL=0` (the
    decoder's two attentions), `MAXWHISPER_ENCODER_ATTENTION_KERNEL=0` (the encoder's) and
    `MAXWHISPER_ENCODER_LINEAR_KERNEL=0` (the encoder's projections and conv stem) fall back to
    MAX's own ops (on Intel CPUs the encoder's already do unless `=1`: `kernel_forced`)."""
    return os.environ.get(KERNEL_SWITCHES[kernel], "1") != "0"


def kernel_forced(kernel: str) -> bool:
    """`MAXWHISPER_*_KERNEL=1` uses a kernel even where the default leaves it out for this CPU
    (the encoder's projections on Intel: `custom_ops.encoder_gemm_kernel_pays`)."""
    return os.environ.get(KERNEL_SWITCHES[kernel]) == "1"


def timestamp_guess_allowed() -> bool:
    """`MAXWHISPER_TIMESTAMP_GUESS=0` turns off the greedy decoder's checked guess of a segment's
    next timestamp (`decoding._guess`), for A/B runs; the tokens are the same either way."""
    return os.environ.get("MAXWHISPER_TIMESTAMP_GUESS", "1") != "0"


def text_guess_setting() -> bool | None:
    """`MAXWHISPER_TEXT_GUESS`: 1 always runs the greedy decoder's checked guess of the next text
    token (`decoding._follower`), 0 never; the tokens are the same either way. Unset: None, and
    the decoder decides from what a guess costs and wins on this machine (`decoding.GuessCosts`)."""
    return _on_off_or_unset("MAXWHISPER_TEXT_GUESS")


def resident_cache_setting() -> bool | None:
    """`MAXWHISPER_RESIDENT_CACHE`: 1 keeps the decoder's self-attention cache in buffers on the
    graph's device that the graph updates in place, 0 keeps it in host memory. Unset: None, and
    the engine decides (on for an accelerator, off on the CPU, where the host arrays are the
    device's memory already and maxwhisper's self-attention kernel reads them)."""
    return _on_off_or_unset("MAXWHISPER_RESIDENT_CACHE")


def idle_poller_allowed() -> bool:
    """`MAXWHISPER_IDLE_POLLER=0` leaves MAX's runtime polling thread at normal priority (see
    `runtime.idle_runtime_poller`), for A/B runs; the tokens are the same either way."""
    return os.environ.get("MAXWHISPER_IDLE_POLLER", "1") != "0"


def _on_off_or_unset(name: str) -> bool | None:
    """A switch that is 1 (True), 0 (False) or unset (None: the code decides)."""
    value = os.environ.get(name)
    if value is None:
        return None
    if value not in ("0", "1"):
        raise ValueError(f"{name} must be 0 or 1, not {value!r}")
    return value == "1"


def encoder_float64_blocks() -> int | None:
    """`MAXWHISPER_ENCODER_FLOAT64_BLOCKS`: how many of the encoder's first blocks (with the
    conv stem) compute in float64 when the model runs in float32 on the CPU; 0 is all float32.
    Unset: None, and the engine picks per model (`engine.default_float64_blocks`)."""
    value = os.environ.get("MAXWHISPER_ENCODER_FLOAT64_BLOCKS")
    if value is None:
        return None
    if not value.isdigit():
        raise ValueError(f"MAXWHISPER_ENCODER_FLOAT64_BLOCKS must be a whole number, got {value!r}")
    return int(value)


def projection_share_kb() -> int:
    """`MAXWHISPER_PROJECTION_SHARE_KB`: a float16 projection with more than this many KB of
    work (its weights, and its rows' reads) is shared between the cores; default 256, which
    shares every layer projection of a decoding step (see `linear_f16.mojo`, `run_linear`).
    2048 restores the AVX-512 value before session 21, for A/B runs on other machines."""
    value = os.environ.get("MAXWHISPER_PROJECTION_SHARE_KB", "256")
    if not value.isdigit():
        raise ValueError(f"MAXWHISPER_PROJECTION_SHARE_KB must be a whole number, got {value!r}")
    return int(value)


def worker_nice() -> int:
    """`MAXWHISPER_WORKER_NICE`: the nice value MAX's runtime worker threads get (Linux), so that
    while they spin-wait between graph executions they yield to the Python thread that prepares
    the next one (see `runtime.yield_runtime_workers`). 0 leaves them alone; default 10."""
    value = os.environ.get("MAXWHISPER_WORKER_NICE", "10")
    if not value.isdigit() or int(value) > 19:
        raise ValueError(f"MAXWHISPER_WORKER_NICE must be a whole number from 0 to 19, "
                         f"got {value!r}")
    return int(value)
