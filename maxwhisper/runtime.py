"""Running the MAX graphs: device choice, a persistent compiled-model cache, the KV cache.

Compiling a graph takes minutes on a small CPU, so every compiled graph is exported as a MEF
file under `settings.cache_dir()` and reloaded in milliseconds next time. The cache key is the
graph's structure, not the weight values: weights are bound at `session.init` through the
weights registry, so a fine-tuned checkpoint with the same dimensions reuses the compiled code.
The key covers the model dimensions, dtype and numeric options, device, the `max` version, the
Mojo kernels' source and the built graph itself (a digest of its IR text: any change to what
the builders produce, an edit of `model.py` or a patched builder in an experiment, gets a
compiled model of its own instead of a stale one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial
from importlib import metadata
from pathlib import Path

import numpy as np
from max import engine as max_engine
from max.driver import CPU, Accelerator, Buffer, accelerator_count
from max.dtype import DType
from max.graph import DeviceRef

from . import custom_ops
from . import model as graph_model
from .settings import (
    cache_dir,
    encoder_float64_blocks,
    idle_poller_allowed,
    kernel_allowed,
    kernel_forced,
    resident_cache_setting,
    worker_nice,
)
from .weights import ModelDimensions, WhisperWeights

DTYPES = {"float32": DType.float32, "float16": DType.float16}
# the encoder graph's kernels; the rest of `default_kernels` are the decoder's
ENCODER_KERNELS = frozenset({"encoder_attention", "encoder_linear"})
GRAPH_BUILDERS = {
    "encoder": graph_model.build_encoder_graph,
    "decoder": graph_model.build_decoder_graph,
    # the decoder again, also returning cross-attention weights (compiled on first use)
    "alignment": lambda params: graph_model.build_decoder_graph(params, with_cross_weights=True),
    # beam reorders and repeats of a cache kept on the device (`ResidentKVCache`)
    "cache_gather": graph_model.build_cache_gather_graph,
}


# MAX's runtime names its worker threads "🔥 Thread0", "🔥 Thread1", ... (/proc/<pid>/task/*/comm)
RUNTIME_WORKER_NAME = re.compile(r"^\N{FIRE} Thread\d+$")


def yield_runtime_workers(nice: int | None = None) -> list[int]:
    """Give MAX's runtime worker threads in this process the nice value `nice` (default: the
    `MAXWHISPER_WORKER_NICE` setting, 10); returns the thread ids changed. Linux only (elsewhere,
    or with nice 0, nothing changes).

    Why: after each graph execution the workers spin-wait for ~200 us (MAX's busy-wait; its
    setting aborts the process when changed in `max` 26.7), while the Python thread applies the
    decoding rules and prepares the next step; on two cores the three threads then share two
    CPUs and the Python thread runs at half speed. At a lower priority the spinning workers
    yield the CPU to it; while a graph runs, the Python thread sleeps and the workers have the
    cores to themselves, as before. Measured (229-s clip, greedy, five runs alternated in one
    process): nice 0 / 10 / 19 5.68 / 5.33 / 5.36 s median, the host work 0.45 / 0.36 / 0.38 s;
    the encoder unchanged. 10 rather than 19: the same gain, and the workers keep more of
    their share against other processes' threads (under such load they now yield to those too).
    Raising a nice value needs no privilege; lowering it back does, so threads already at or
    above `nice` are left as they are (calling this again changes nothing)."""
    nice = worker_nice() if nice is None else nice
    if nice == 0:
        return []
    changed = []
    for tid, name in _thread_names().items():
        if not RUNTIME_WORKER_NAME.match(name):
            continue
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed.append(tid)
        except OSError:  # the thread ended, or the system refuses: no harm done
            continue
    return changed


THREADS = Path("/proc/self/task")  # Linux: one folder per thread of this process


def _thread_names() -> dict[int, str]:
    """This process's threads: id -> name ({} where there is no /proc; a thread that ends
    while it is read is left out)."""
    names = {}
    for task in THREADS.iterdir() if THREADS.is_dir() else ():
        try:
            names[int(task.name)] = (task / "comm").read_text(encoding="utf-8",
                                                              errors="replace").strip()
        except OSError:
            continue
    return names


def _thread_wakeups() -> dict[int, int]:
    """This process's threads other than MAX's workers: id -> how often each has gone to sleep
    of its own accord (Linux's voluntary context switches; {} elsewhere)."""
    wakeups = {}
    for tid, name in _thread_names().items():
        if RUNTIME_WORKER_NAME.match(name):
            continue
        try:
            status = (THREADS / str(tid) / "status").read_text()
        except OSError:  # the thread ended
            continue
        wakeups[tid] = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return wakeups


POLLER_WAKEUPS_PER_S = 1000  # a new thread waking more often than this is MAX's poller


def idle_runtime_poller(threads_before: set[int], sample_s: float = 0.01) -> list[int]:
    """Put MAX's runtime polling thread under Linux's SCHED_IDLE policy; returns the thread
    ids changed. `threads_before`: the thread ids from before a graph execution that may have
    started it; the poller is a thread that execution started (so never one of the caller's)
    which wakes more than POLLER_WAKEUPS_PER_S times a second over `sample_s`.

    Why: at its first execution MAX's runtime (`max` 26.7) starts an unnamed thread that waits
    on a condition variable with a 100-us timeout and calls its registered pollers each time,
    ~5,000 wakeups a second whether or not a graph is running (read with gdb: the loop in
    `libmax.so` around `pthread_cond_clockwait`). On two cores each wakeup preempts one of the
    two workers (~2,500 involuntary switches a second each), and a parallel kernel waits for
    its slower half. Under SCHED_IDLE the poller runs only on a core nobody else wants and
    never preempts a worker. Measured on the Intel machine (2 cores), five pairs alternated in
    one process: the encoder's attention kernel alone 19.4 -> 15.5 ms a block; the 229-s clip
    greedy 8.7 -> 6.7 s (a decoder step 6.7 -> 4.6 ms, the encoder 2.6 -> 2.0 s), beam 5
    14.2 -> 11.6 s, the batched mode 6.0 -> 4.8 s, the same tokens."""
    if not hasattr(os, "sched_setscheduler"):
        return []
    first = {tid: n for tid, n in _thread_wakeups().items() if tid not in threads_before}
    if not first:
        return []
    time.sleep(sample_s)
    later = _thread_wakeups()
    changed = []
    for tid, wakeups in first.items():
        if later.get(tid, wakeups) - wakeups > POLLER_WAKEUPS_PER_S * sample_s:
            try:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
                changed.append(tid)
            except OSError:  # the thread ended, or the system refuses: no harm done
                continue
    return changed


class _PollerSearch:
    """The first few CPU executions of the process look for MAX's polling thread."""

    looks_left = 3


def select_device(device: str = "auto"):
    """`auto` picks the accelerator when MAX sees one, else the CPU. Returns (driver, ref)."""
    if device == "auto":
        device = "gpu" if accelerator_count() > 0 else "cpu"
    if device == "cpu":
        return CPU(), DeviceRef.CPU()
    if device in ("gpu", "cuda", "accelerator"):
        if accelerator_count() == 0:
            raise ValueError("device 'gpu' requested but MAX sees no accelerator")
        return Accelerator(), DeviceRef.GPU()
    raise ValueError(f"unknown device {device!r}; use auto, cpu or gpu")


def device_name(device=None) -> str:
    """openai-whisper's device spellings as ours: None -> "auto", "cuda" (or "cuda:0", a
    torch.device) -> "gpu"."""
    if device is None:
        return "auto"
    name = str(device).split(":")[0]
    return "gpu" if name == "cuda" else name


def default_float64_blocks(dims: ModelDimensions) -> int:
    """How many encoder blocks (with the stem) compute in float64 on the CPU in float32.

    Measured on the 26 clips (docs/performance.md, "Precision"): base's all-float32 encoder is
    up to 1.7e-3 from openai-whisper's (1.2e-3 on JFK), one float64 block brings it within
    5.5e-4 of the exact result and 5.2e-4 of torch on JFK, for ~20 % more encoder time.
    tiny.en (d = 384) in float32 is within 6.5e-4 of torch on every clip, and a float64 block
    would cost it ~8 % of a long-form transcription, so tiny models stay float32. Larger models
    than base were not measured (no weights here) and get the float64 block, like base.
    """
    return 1 if dims.n_audio_state > 384 else 0


def default_kernels(weights: WhisperWeights, device: str, dtype: str) -> frozenset[str]:
    """maxwhisper's Mojo kernels the graphs use: the CPU kernels in float32, each where it
    changes no value (the float16 ones only when the weights are exactly float16 values, as
    the released ones are; the attentions' sums are float32 like MAX's, in their own order)
    and unless its `MAXWHISPER_*_KERNEL=0` switch turns it off. The encoder's projections
    only where they beat MAX's matmul on this CPU (`custom_ops.encoder_gemm_kernel_pays`),
    or where `MAXWHISPER_ENCODER_LINEAR_KERNEL=1` asks for them."""
    if device != "cpu" or dtype != "float32":
        return frozenset()
    tensors = weights.tensors
    head_width = weights.dims.n_text_state // weights.dims.n_text_head  # the kernels' 64
    applies = {
        "vocab": custom_ops.fits_float16(tensors["decoder.token_embedding.weight"]),
        "linear": all(custom_ops.fits_float16(array) for name, array in tensors.items()
                      if name.startswith("decoder.blocks.") and name.endswith(".weight")
                      and array.ndim == 2),
        "cross_attention": head_width == 64,
        "self_attention": head_width == 64,
        "encoder_attention": weights.dims.n_audio_state // weights.dims.n_audio_head == 64,
        "encoder_linear": all(custom_ops.fits_float16(array) for name, array in tensors.items()
                              if _encoder_graph_matrix(name, array))
        and (custom_ops.encoder_gemm_kernel_pays() or kernel_forced("encoder_linear")),
    }
    return frozenset(name for name, ok in applies.items() if ok and kernel_allowed(name))


def _encoder_graph_matrix(name: str, array: np.ndarray) -> bool:
    """A weight matrix or conv filter the encoder graph multiplies by (the cross-attention K/V
    projections are the decoder's but run there)."""
    return array.ndim >= 2 and name.endswith(".weight") and (
        name.startswith("encoder.") or ".cross_attn.key." in name or ".cross_attn.value." in name)


def graph_digest(graph) -> str:
    """A digest of a built graph's IR text (milliseconds; the same graph gives the same text)."""
    return hashlib.sha256(str(graph).encode()).hexdigest()[:24]


def cache_key(kind: str, dims: ModelDimensions, dtype: str, device: str,
              kernels: frozenset[str] = frozenset(), float64_blocks: int = 0,
              graph: str = "") -> str:
    """The compiled-model cache's key; `graph` is the built graph's `graph_digest`."""
    record = {"kind": kind, "dims": asdict(dims), "dtype": dtype, "device": device,
              "max": metadata.version("max"), "kernel_source": custom_ops.source_hash(),
              "cpu": custom_ops.host_cpu(),
              "kernels": sorted(kernels), "float64_blocks": float64_blocks, "graph": graph}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class CompileReport:
    """How each graph was obtained: 'cache' (MEF reload) or 'compiled', with seconds."""

    entries: dict[str, tuple[str, float]] = field(default_factory=dict)


def load_graph(session, builder, params: graph_model.Params, kind: str, device_label: str,
               report: CompileReport, verbose: bool = True):
    """Build `kind`'s graph, then load its compiled form from the cache or compile and store it."""
    start = time.perf_counter()
    graph = builder(params)
    registry = params.registry()
    key = cache_key(kind, params.weights.dims, str(params.dtype), device_label,
                    params.kernels, params.float64_blocks, graph_digest(graph))
    path = cache_dir() / f"{kind}-{key}.mef"
    if path.is_file():
        try:
            model = session.init(max_engine.read(str(path)), weights_registry=registry)
            report.entries[kind] = ("cache", time.perf_counter() - start)
            return model, registry
        except Exception as exc:  # a stale or truncated file: compile afresh
            print(f"maxwhisper: ignoring unusable cached {path.name} ({exc})", file=sys.stderr)
    if verbose:
        print(f"maxwhisper: compiling the MAX {kind} graph for {params.weights.name} "
              f"({device_label}, {params.dtype}); first run only, this takes minutes on a small "
              f"CPU, later runs reload it from {cache_dir()}", file=sys.stderr, flush=True)
    compiled = session.compile(graph)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    compiled.export_mef(str(tmp))
    tmp.replace(path)
    model = session.init(compiled, weights_registry=registry)
    seconds = time.perf_counter() - start
    report.entries[kind] = ("compiled", seconds)
    if verbose:
        print(f"maxwhisper: compiled {kind} in {seconds:.0f} s", file=sys.stderr, flush=True)
    return model, registry


@dataclass
class RunStats:
    """Time spent in the encoder and decoder graphs since the last reset (for the benchmark):
    decoding steps (one new token, or two with a guessed one) apart from prompt prefills (the
    first call on an empty cache)."""

    encode_s: float = 0.0
    windows: int = 0
    decode_s: float = 0.0
    decode_steps: int = 0
    prefill_s: float = 0.0
    prefills: int = 0
    align_s: float = 0.0  # the alignment graph, for word timestamps
    alignments: int = 0

    def reset(self) -> None:
        self.__init__()


def to_device(array: np.ndarray, device) -> Buffer:
    """A numpy array as a MAX buffer on `device` (no copy on the CPU: the buffer shares it)."""
    return Buffer.from_numpy(np.ascontiguousarray(array)).to(device)


def execute(model, device, *arrays: np.ndarray | Buffer) -> list[np.ndarray]:
    """Run a loaded MAX model on numpy inputs (moved to `device`) or buffers already there;
    outputs back as numpy."""
    inputs = [a if isinstance(a, Buffer) else to_device(a, device) for a in arrays]
    threads_before = None
    if _PollerSearch.looks_left and device.is_host and idle_poller_allowed():
        threads_before = set(_thread_wakeups())
    outputs = model.execute(*inputs)
    if threads_before is not None:
        found = idle_runtime_poller(threads_before)
        _PollerSearch.looks_left = 0 if found else _PollerSearch.looks_left - 1
    return [out.to(CPU()).to_numpy() for out in outputs]


@dataclass
class Piece:
    """One building block compiled as a graph of its own (for inspection, e.g. in notebooks)."""

    name: str
    model: object
    device: object
    registry: dict
    compile_s: float

    def __call__(self, *arrays: np.ndarray) -> list[np.ndarray]:
        return execute(self.model, self.device, *arrays)


def compile_piece(name: str, input_types: list, body, weights: WhisperWeights,
                  device: str = "auto", kernels: bool = False) -> Piece:
    """Compile `body(*inputs, params) -> output(s)` as graph `name`; MAX's own cache makes the
    second compile of the same graph take seconds. `input_types` is [(dtype, shape), ...];
    `kernels` makes maxwhisper's Mojo kernels (`custom_ops`) available to `body`."""
    from max.graph import Graph, TensorType

    driver, ref = select_device(device)
    params = graph_model.Params(weights, ref)
    types = [TensorType(dtype, shape, device=ref) for dtype, shape in input_types]
    extensions = [custom_ops.kernel_library()] if kernels else []
    with Graph(name, input_types=types, custom_extensions=extensions) as graph:
        outputs = body(*(value.tensor for value in graph.inputs), params)
        graph.output(*(outputs if isinstance(outputs, (tuple, list)) else (outputs,)))
    start = time.perf_counter()
    session = max_engine.InferenceSession(devices=[driver])
    registry = params.registry()
    model = session.load(graph, weights_registry=registry)
    return Piece(name, model, driver, registry, time.perf_counter() - start)


def check_context(filled: int, n: int, capacity: int) -> None:
    """A self-attention cache of `capacity` slots, `filled` of them used, must take n more."""
    if filled + n > capacity:
        raise ValueError(f"decoder context of {capacity} tokens exceeded")


class KVCache:
    """Self-attention keys (L, B, H, hd, T) and values (L, B, H, T, hd), preallocated for the
    whole text context T, of which the first `length` slots are filled.

    The decoder graph takes both arrays whole (zero-copy) with `length`, and returns the new
    tokens' keys and values, which `append` writes in place; `reorder` follows the beams kept.
    """

    def __init__(self, dims: ModelDimensions, batch: int):
        L, H, T = dims.n_text_layer, dims.n_text_head, dims.n_text_ctx
        hd = dims.n_text_state // H
        self.keys_t = np.zeros((L, batch, H, hd, T), dtype=np.float32)
        self.values = np.zeros((L, batch, H, T, hd), dtype=np.float32)
        self.length = 0
        # rows in groups of `group` (the copies `repeated` made of one row) hold the same first
        # `shared` slots: a beam reorder inside a group need not copy them
        self.group, self.shared = 1, 0

    def inputs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return np.array([self.length], dtype=np.int64), self.keys_t, self.values

    def append(self, new_keys_t: np.ndarray, new_values: np.ndarray) -> None:
        n, start = new_values.shape[3], self.length
        check_context(start, n, self.values.shape[3])
        self.keys_t[..., start : start + n] = new_keys_t
        self.values[:, :, :, start : start + n] = new_values
        self.length += n

    def rewind(self, n: int) -> None:
        """Forget the last n tokens (a guessed token that was not the one chosen): their slots
        are overwritten by the next append and read by nobody before."""
        self.length -= n
        self.shared = min(self.shared, self.length)

    def reorder(self, source_rows: np.ndarray) -> None:
        """Row b of the batch becomes old row source_rows[b] (beam search bookkeeping).

        Only the rows that change are copied (most beams usually keep their own row), and
        only their filled slots past the prompt the group shares (beam 5 on the long-form: 46
        of 224 filled slots on average); the fancy-indexed right side is a copy, so a row can
        be both a source and a destination."""
        changed = np.flatnonzero(source_rows != np.arange(len(source_rows)))
        if changed.size == 0:
            return
        sources, n = source_rows[changed], self.length
        same_group = np.array_equal(sources // self.group, changed // self.group)
        first = self.shared if same_group else 0
        self.keys_t[:, changed, ..., first:n] = self.keys_t[:, sources, ..., first:n]
        self.values[:, changed, :, first:n] = self.values[:, sources, :, first:n]
        if not same_group:  # rows of another group came in: no prefix is shared any more
            self.shared = 0

    def repeated(self, times: int) -> KVCache:
        """A cache with each row repeated `times` times, the copies of row r in rows
        r * times ... (r + 1) * times - 1 (beams that share a prompt: it is run once, then
        every beam starts from its keys and values)."""
        copy = KVCache.__new__(KVCache)
        copy.keys_t = np.repeat(self.keys_t, times, axis=1)
        copy.values = np.repeat(self.values, times, axis=1)
        copy.length = self.length
        copy.group, copy.shared = times, self.length
        return copy


class ResidentKVCache:
    """The same cache as `KVCache`, held in buffers on the decoder's device: the decoder graph
    built with `resident_cache` stores each step's keys and values into them itself, and beam
    reorders and repeats run as a gather on the device (`gather`: the model's cache_gather
    graph), so on an accelerator the cache never crosses to the host while a window is decoded."""

    def __init__(self, keys_t: Buffer, values: Buffer, length: int, gather):
        self.keys_t, self.values, self.length, self._gather = keys_t, values, length, gather
        self.capacity = values.shape[3]

    def inputs(self) -> tuple[Buffer, Buffer, Buffer]:
        # P stays on the host: the graph slices the buffers with it
        return Buffer.from_numpy(np.array([self.length], dtype=np.int64)), self.keys_t, self.values

    def reserve(self, n: int) -> None:
        """Check that n more slots fit, before the graph writes them."""
        check_context(self.length, n, self.capacity)

    def advance(self, n: int) -> None:
        """Count the n slots the graph has just filled."""
        self.length += n

    def rewind(self, n: int) -> None:
        """Forget the last n tokens (as `KVCache.rewind`)."""
        self.length -= n

    def reorder(self, source_rows: np.ndarray) -> None:
        """Row b becomes old row source_rows[b] (new buffers, gathered on the device)."""
        rows = np.asarray(source_rows, dtype=np.int64)
        if not np.array_equal(rows, np.arange(len(rows))):
            self.keys_t, self.values = self._gather(self.keys_t, self.values, rows)

    def repeated(self, times: int) -> ResidentKVCache:
        """Each row `times` times, the copies of row r in rows r * times ... (as `KVCache`)."""
        rows = np.repeat(np.arange(self.keys_t.shape[1], dtype=np.int64), times)
        return ResidentKVCache(*self._gather(self.keys_t, self.values, rows), self.length,
                               self._gather)


@dataclass
class AudioFeatures:
    """What the encoder gives for B windows: features and the decoder's cross-attention K/V."""

    audio: np.ndarray  # (B, A, d)
    cross_keys: np.ndarray  # (L, B, H, hd, A)
    cross_values: np.ndarray  # (L, B, H, A, hd)
    # the cross K/V as buffers on the decoder's device, made on first use: every decoding
    # step reads them, so on an accelerator they cross to it once per window, not once per
    # step (on the CPU the buffers share the arrays' memory)
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)

    def cross_on(self, device) -> tuple[Buffer, Buffer]:
        """The B windows' cross keys (L, B, H, hd, A) and values (L, B, H, A, hd) on `device`."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = (to_device(self.cross_keys, device),
                                    to_device(self.cross_values, device))
        return self._on_device[key]

    @property
    def windows(self) -> int:
        return self.cross_keys.shape[1]

    def window(self, index: int) -> AudioFeatures:
        """The features of one window (batch of one), as the decoder takes them."""
        pick = slice(index, index + 1)
        return AudioFeatures(self.audio[pick], np.ascontiguousarray(self.cross_keys[:, pick]),
                             np.ascontiguousarray(self.cross_values[:, pick]))


class MaxWhisperModel:
    """Whisper's encoder and KV-cached decoder, compiled with MAX, bound to real weights."""

    def __init__(self, weights: WhisperWeights, device: str = "auto", dtype: str = "float32",
                 verbose: bool = True, graphs: tuple[str, ...] = ("encoder", "decoder"),
                 kernels: frozenset[str] | None = None, float64_blocks: int | None = None,
                 resident_cache: bool | None = None):
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
        self.weights, self.dims = weights, weights.dims
        self.driver_device, device_ref = select_device(device)
        self.device = "cpu" if device_ref == DeviceRef.CPU() else "gpu"
        self.dtype = dtype
        self.report = CompileReport()
        self.stats = RunStats()
        self.session = max_engine.InferenceSession(devices=[self.driver_device])
        yield_runtime_workers()  # the session has started MAX's worker threads
        self._device_ref, self._verbose = device_ref, verbose
        self.kernels = default_kernels(weights, self.device, dtype) if kernels is None else kernels
        if float64_blocks is None:  # float32 on the CPU only: the setting, else per model
            on_cpu_float32 = self.device == "cpu" and dtype == "float32"
            float64_blocks = encoder_float64_blocks() if on_cpu_float32 else 0
            if float64_blocks is None:
                float64_blocks = default_float64_blocks(self.dims)
        self.float64_blocks = max(0, min(float64_blocks, self.dims.n_audio_layer))
        resident = resident_cache_setting() if resident_cache is None else resident_cache
        # the self-attention kernel reads the host arrays in place, so it keeps the host cache
        self.resident_cache = (self.device != "cpu" if resident is None else resident) \
            and "self_attention" not in self.kernels
        self._graphs, self._registries = {}, {}  # registry arrays must outlive the models
        self._workspaces: dict[str, np.ndarray] = {}  # encode_windows(reuse=True)
        for kind in graphs:
            self._graph(kind)

    def _graph(self, kind: str):
        """The compiled graph `kind`, loaded (or compiled) on first use."""
        if kind not in self._graphs:
            # each graph gets its own Params, which records only the weights it uses
            float64_blocks = self.float64_blocks if kind == "encoder" else 0
            kernels = {kernel for kernel in self.kernels
                       if (kernel in ENCODER_KERNELS) == (kind == "encoder")}
            params = graph_model.Params(self.weights, self._device_ref, DTYPES[self.dtype],
                                        kernels=frozenset(kernels), float64_blocks=float64_blocks)
            builder = GRAPH_BUILDERS[kind]
            if kind == "decoder" and self.resident_cache:
                builder = partial(graph_model.build_decoder_graph, resident_cache=True)
            self._graphs[kind], self._registries[kind] = load_graph(
                self.session, builder, params, kind, self.device, self.report, self._verbose)
        return self._graphs[kind]

    def _run(self, model, *arrays: np.ndarray) -> list[np.ndarray]:
        return execute(model, self.driver_device, *arrays)

    def encode(self, mel: np.ndarray) -> AudioFeatures:
        """mel (B, n_mels, 3000) float32 -> features and cross-attention K/V."""
        mel = np.asarray(mel, dtype=np.float32)
        if mel.ndim == 2:
            mel = mel[None]
        expected = (self.dims.n_mels, 2 * self.dims.n_audio_ctx)
        if mel.shape[1:] != expected:
            raise ValueError(f"mel must be (batch, {expected[0]}, {expected[1]}), got {mel.shape}")
        start = time.perf_counter()
        features = AudioFeatures(*self._run(self._graph("encoder"), mel))
        self.stats.encode_s += time.perf_counter() - start
        self.stats.windows += mel.shape[0]
        return features

    def encode_windows(self, mel: np.ndarray, reuse: bool = False) -> AudioFeatures:
        """`encode`, one window at a time, the features joined as one batch: as fast per window
        as a batched call, while the encoder's scratch memory (its attention over 1500
        positions) stays one window's (measured: 8 windows in one call peak 280 MB higher).

        With `reuse`, the joined features are views of buffers this model keeps and the next
        `reuse` call overwrites (the batched mode's batches): a long run, or many files, then
        allocate them once; fresh memory costs ~25 ms a window here to fault in."""
        mel = np.asarray(mel, dtype=np.float32)
        first = self.encode(mel[:1])
        if len(mel) == 1:
            return first
        parts = (first.audio, first.cross_keys, first.cross_values)
        # the window axis is 0 for the audio, 1 for the cross K/V
        shapes = [(len(mel), *a.shape[1:]) if i == 0 else (a.shape[0], len(mel), *a.shape[2:])
                  for i, a in enumerate(parts)]
        if reuse:
            joined = AudioFeatures(*(self._workspace(f"features.{i}", shape)
                                     for i, shape in enumerate(shapes)))
        else:
            joined = AudioFeatures(*(np.empty(shape, np.float32) for shape in shapes))
        for index in range(len(mel)):  # each window's arrays copied in, then let go
            part = first if index == 0 else self.encode(mel[index:index + 1])
            joined.audio[index] = part.audio[0]
            joined.cross_keys[:, index] = part.cross_keys[:, 0]
            joined.cross_values[:, index] = part.cross_values[:, 0]
        return joined

    def _workspace(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 array of `shape` over a flat buffer kept under `name`, grown when too small
        (so a smaller last batch is a view of the same memory, contiguous all the same)."""
        size = int(np.prod(shape))
        buffer = self._workspaces.get(name)
        if buffer is None or buffer.size < size:
            buffer = self._workspaces[name] = np.empty(size, np.float32)
        return buffer[:size].reshape(shape)

    def decode_step(self, tokens: np.ndarray, features: AudioFeatures, cache: KVCache,
               positions: list[int] | None = None) -> np.ndarray:
        """Run new tokens (B, S) after the cached ones and grow the cache; returns the logits
        (B, K, V) at `positions` (indices into the S new tokens; default all S).

        The B rows are G equal groups for the G windows in `features`, group g attending to
        window g: the beams of one window (G = 1), or a batch of windows (G = B).
        """
        tokens = np.asarray(tokens, dtype=np.int64)
        if tokens.shape[0] % features.windows:
            raise ValueError(f"{tokens.shape[0]} rows do not split into {features.windows} "
                             "equal groups, one per window")
        picks = self._picks(tokens, positions)
        prefill = cache.length == 0
        start = time.perf_counter()
        if isinstance(cache, ResidentKVCache):  # the graph writes the new keys and values
            cache.reserve(tokens.shape[1])
            (logits,) = self._run(self._graph("decoder"), tokens, *cache.inputs(),
                                  *self._cross(features), picks)
            cache.advance(tokens.shape[1])
        else:
            logits, new_k, new_v = self._run(self._graph("decoder"), tokens, *cache.inputs(),
                                             *self._cross(features), picks)
            cache.append(new_k, new_v)
        if prefill:
            self.stats.prefill_s += time.perf_counter() - start
            self.stats.prefills += 1
        else:
            self.stats.decode_s += time.perf_counter() - start
            self.stats.decode_steps += 1
        return logits

    def cross_attention(self, tokens: np.ndarray, features: AudioFeatures
                        ) -> tuple[np.ndarray, np.ndarray]:
        """Logits (B, S, V) and cross-attention weights (L, B, H, S, A) of a whole token sequence."""
        tokens = np.asarray(tokens, dtype=np.int64)
        empty = KVCache(self.dims, tokens.shape[0]).inputs()  # this graph keeps none
        start = time.perf_counter()
        logits, _, _, weights = self._run(self._graph("alignment"), tokens, *empty,
                                          *self._cross(features), self._picks(tokens, None))
        self.stats.align_s += time.perf_counter() - start
        self.stats.alignments += 1
        return logits, weights

    @staticmethod
    def _picks(tokens: np.ndarray, positions: list[int] | None) -> np.ndarray:
        length = tokens.shape[1]
        if positions is None:
            return np.arange(length, dtype=np.int64)
        return np.array([p % length for p in positions], dtype=np.int64)

    def _cross(self, features: AudioFeatures) -> tuple[Buffer, Buffer]:
        return features.cross_on(self.driver_device)

    def decoder_bytes_per_step(self, batch: int = 1, windows: int = 1) -> int:
        """The bytes one decoding step of `batch` rows reads at least: every decoder weight in
        the dtype the graph holds it in (but only `batch` rows of the token and position
        lookup tables) and the `windows` windows' cross-attention K/V; plus the whole self-attention
        cache when MAX's ops read it (all n_text_ctx slots, masked). With the self-attention
        kernel only the filled slots are read, a number that grows through a window (up to
        the whole cache); it is left out. The floor a step's time is measured against."""
        d = self.dims
        # the lookup tables, in whatever dtype the graph holds them (not the output projection's
        # packed copy of the token embedding, which every step reads whole)
        tables = {"decoder.token_embedding.weight", "decoder.positional_embedding"}
        weights = sum(array.nbytes for name, array in self._registries["decoder"].items()
                      if name.removesuffix(".float16") not in tables)
        cross = 2 * d.n_text_layer * d.n_audio_ctx * d.n_text_state * 4 * windows
        cache = 0 if "self_attention" in self.kernels else (
            2 * d.n_text_layer * batch * d.n_text_ctx * d.n_text_state * 4)
        return weights + cross + cache

    def new_cache(self, batch: int) -> KVCache | ResidentKVCache:
        if self.resident_cache:
            empty = KVCache(self.dims, batch)
            return ResidentKVCache(to_device(empty.keys_t, self.driver_device),
                                   to_device(empty.values, self.driver_device), 0,
                                   self._gather_cache)
        return KVCache(self.dims, batch)

    def _gather_cache(self, keys_t: Buffer, values: Buffer, rows: np.ndarray
                      ) -> tuple[Buffer, Buffer]:
        """The cache_gather graph on buffers already on the device; its outputs stay there."""
        keys_t, values = self._graph("cache_gather").execute(
            keys_t, values, to_device(rows, self.driver_device))
        return keys_t, values

    @property
    def alignment_heads(self) -> np.ndarray:
        """(layer, head) pairs of the decoder whose cross-attention follows the speech: the
        checkpoint's, or (as openai-whisper) every head of the upper half of the layers."""
        if getattr(self, "_alignment_heads", None) is not None:
            return self._alignment_heads
        if len(self.weights.alignment_heads):
            return self.weights.alignment_heads
        layers, heads = self.dims.n_text_layer, self.dims.n_text_head
        return np.array([(layer, head) for layer in range(layers // 2, layers)
                         for head in range(heads)], dtype=np.int64)

    def set_alignment_heads(self, heads) -> None:
        """Use other alignment heads: (layer, head) pairs, or openai-whisper's encoding (the
        base85 bytes of a gzipped (layers, heads) boolean mask, as in its `_ALIGNMENT_HEADS`)."""
        if isinstance(heads, (bytes, str)):
            import base64
            import gzip

            raw = heads.encode() if isinstance(heads, str) else heads
            mask = np.frombuffer(gzip.decompress(base64.b85decode(raw)), dtype=bool).reshape(
                self.dims.n_text_layer, self.dims.n_text_head)
            heads = np.argwhere(mask)
        heads = np.asarray(heads, dtype=np.int64).reshape(-1, 2)
        if len(heads) == 0 or (heads[:, 0] >= self.dims.n_text_layer).any() \
                or (heads[:, 1] >= self.dims.n_text_head).any() or (heads < 0).any():
            raise ValueError(f"alignment heads must be (layer, head) pairs within "
                             f"{self.dims.n_text_layer} layers x {self.dims.n_text_head} heads")
        self._alignment_heads = heads

    def to(self, device) -> MaxWhisperModel:
        """Move to `device` ("cpu", "gpu"/"cuda"; openai-whisper's spelling works): the graphs
        are compiled or reloaded for it. Returns this model, as `torch.nn.Module.to` does."""
        target = device_name(device)
        if target == "auto":
            target = "gpu" if accelerator_count() > 0 else "cpu"
        if target != self.device:
            self.__init__(self.weights, device=target, dtype=self.dtype, verbose=self._verbose,
                          graphs=tuple(self._graphs) or ("encoder", "decoder"))
        return self

    @property
    def num_languages(self) -> int:
        return self.dims.num_languages

    def decode(self, mel: np.ndarray, options=None, **kwargs):
        """openai-whisper's `model.decode(mel, options)`: one (n_mels, 3000) window gives a
        `DecodingResult`, a batch (n, n_mels, 3000) a list; keyword arguments replace fields of
        `options` (a `DecodingOptions`)."""
        from dataclasses import replace

        from .decoding import DecodingOptions, decode

        options = replace(options or DecodingOptions(), **kwargs)
        mel = np.asarray(mel, dtype=np.float32)
        if mel.ndim == 2:
            return decode(self, mel, options)
        return [decode(self, window, options) for window in mel]

    def detect_language(self, mel: np.ndarray, tokenizer=None):
        """openai-whisper's `model.detect_language(mel)`: the most likely language token and
        every language's probability; one window gives (token, dict), a batch (array, list)."""
        from .decoding import detect_language
        from .tokenizer import get_tokenizer

        if not self.dims.is_multilingual:
            raise ValueError("This model doesn't have language tokens so it can't perform lang id")
        tokenizer = tokenizer or get_tokenizer(True, num_languages=self.dims.num_languages)
        mel = np.asarray(mel, dtype=np.float32)
        windows = mel[None] if mel.ndim == 2 else mel
        tokens, probabilities = [], []
        for window in windows:
            language, probs = detect_language(self, self.encode(window[None]), tokenizer)
            tokens.append(tokenizer.to_language_token(language))
            probabilities.append(probs)
        if mel.ndim == 2:
            return tokens[0], probabilities[0]
        return np.array(tokens), probabilities

    @property
    def is_multilingual(self) -> bool:
        return self.dims.is_multilingual

    def transcribe(self, audio, **options) -> dict:
        """Whisper's long-form transcription on this model; see `maxwhisper.transcribe`."""
        from .transcribe import transcribe

        return transcribe(self, audio, **options)
