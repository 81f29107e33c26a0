"""The MAX runtime's numeric options and kernels: what selects them, and that each gets its own
compiled graph."""

from __future__ import annotations

import os
import sys
import threading
from dataclasses import replace

import numpy as np
import pytest
from conftest import max_model

from maxwhisper import custom_ops
from maxwhisper.runtime import (
    RUNTIME_WORKER_NAME,
    KVCache,
    _thread_names,
    _thread_wakeups,
    cache_key,
    default_float64_blocks,
    default_kernels,
    graph_digest,
    idle_runtime_poller,
    yield_runtime_workers,
)
from maxwhisper.settings import (
    KERNEL_SWITCHES,
    encoder_float64_blocks,
    projection_share_kb,
    worker_nice,
)


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
    assert cache_key("encoder", dims, "float32", "cpu", kernels=frozenset({"vocab"})) != plain
    assert cache_key("encoder", dims, "float32", "cpu", kernels=frozenset({"vocab", "linear"})) \
        != cache_key("encoder", dims, "float32", "cpu", kernels=frozenset({"vocab"}))
    assert cache_key("encoder", dims, "float16", "cpu") != plain
    assert cache_key("encoder", dims, "float32", "cpu") == plain


def test_the_cpu_is_part_of_the_cache_key(tiny_weights, monkeypatch):
    """Code compiled on one kind of CPU is not loaded on another (AVX-512 code would die with
    SIGILL on an AVX2 machine; the kernels' register blocks follow the vector width)."""
    from maxwhisper import custom_ops

    assert custom_ops.host_cpu() == custom_ops.host_cpu() != ""
    dims = tiny_weights.dims
    here = cache_key("encoder", dims, "float32", "cpu")
    monkeypatch.setattr(custom_ops, "host_cpu", lambda: "GenuineIntel-6-143-0123456789ab")
    assert cache_key("encoder", dims, "float32", "cpu") != here


def test_the_built_graph_is_part_of_the_cache_key(tiny_weights, monkeypatch):
    """A builder that produces another graph (an edited or patched `model.py`) gets its own
    compiled model: the key holds a digest of the graph's IR, which is stable build to build."""
    from max.graph import DeviceRef

    from maxwhisper import model

    def digest() -> str:
        return graph_digest(model.build_encoder_graph(model.Params(tiny_weights, DeviceRef.CPU())))

    built = digest()
    assert digest() == built
    monkeypatch.setattr(model, "LN_EPS", model.LN_EPS * 2)  # one constant of the graph changed
    assert digest() != built
    dims = tiny_weights.dims
    assert cache_key("encoder", dims, "float32", "cpu", graph=built) \
        != cache_key("encoder", dims, "float32", "cpu", graph=digest())


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_every_graph_builds_for_an_accelerator(tiny_weights, dtype):
    """The accelerator path's graphs, built (not compiled: no GPU here) for a GPU device. MAX
    checks every op's operands for one device while building; the decoder once added its
    offset on the GPU to a shape on the host and failed there, on the first lent H100."""
    from max.graph import DeviceRef

    from maxwhisper import model
    from maxwhisper.runtime import DTYPES, GRAPH_BUILDERS

    def params():
        return model.Params(tiny_weights, DeviceRef.GPU(0), DTYPES[dtype])

    for kind, builder in GRAPH_BUILDERS.items():
        graph = builder(params())
        assert all(value.type.device == DeviceRef.GPU(0) for value in graph.inputs), kind
    # the accelerator's default decoder: the cache in buffers there, only the offset on the host
    graph = model.build_decoder_graph(params(), resident_cache=True)
    assert [str(value.type.device) for value in graph.inputs].count("cpu:0") == 1


def test_resident_cache_setting(monkeypatch):
    from maxwhisper.settings import resident_cache_setting

    monkeypatch.delenv("MAXWHISPER_RESIDENT_CACHE", raising=False)
    assert resident_cache_setting() is None  # the engine decides: on for an accelerator
    monkeypatch.setenv("MAXWHISPER_RESIDENT_CACHE", "1")
    assert resident_cache_setting() is True
    monkeypatch.setenv("MAXWHISPER_RESIDENT_CACHE", "yes")
    with pytest.raises(ValueError, match="MAXWHISPER_RESIDENT_CACHE"):
        resident_cache_setting()


def test_kernels_apply_to_released_weights_on_the_cpu_in_float32(monkeypatch, tiny_weights,
                                                                    base_weights):
    for name in KERNEL_SWITCHES.values():
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(custom_ops, "host_cpu", lambda: "AuthenticAMD-25-1-0123456789ab")
    every = {"vocab", "linear", "cross_attention", "self_attention", "encoder_attention",
             "encoder_linear"}
    assert default_kernels(tiny_weights, "cpu", "float32") == every
    assert default_kernels(base_weights, "cpu", "float32") == every
    assert default_kernels(tiny_weights, "gpu", "float32") == frozenset()
    assert default_kernels(tiny_weights, "cpu", "float16") == frozenset()
    monkeypatch.setenv("MAXWHISPER_LINEAR_KERNEL", "0")
    assert default_kernels(tiny_weights, "cpu", "float32") == every - {"linear"}
    monkeypatch.delenv("MAXWHISPER_LINEAR_KERNEL")
    # on Intel the encoder's projections stay on MAX's matmul unless asked for
    monkeypatch.setattr(custom_ops, "host_cpu", lambda: "GenuineIntel-6-143-0123456789ab")
    assert default_kernels(tiny_weights, "cpu", "float32") == every - {"encoder_linear"}
    monkeypatch.setenv("MAXWHISPER_ENCODER_LINEAR_KERNEL", "1")
    assert default_kernels(tiny_weights, "cpu", "float32") == every


def test_float16_kernels_only_for_weights_that_are_float16_values(monkeypatch, tiny_weights):
    """A checkpoint whose decoder (or encoder) weights are not exactly float16 (fine-tuned in
    float32, say) keeps MAX's float32 matmuls there, so no weight value is ever rounded."""
    monkeypatch.setenv("MAXWHISPER_ENCODER_LINEAR_KERNEL", "1")  # whatever this CPU is
    name = "decoder.blocks.0.mlp.0.weight"
    nudged = tiny_weights.tensors[name].astype(np.float32) + np.float32(1e-4)
    changed = replace(tiny_weights, tensors={**tiny_weights.tensors, name: nudged})
    kernels = default_kernels(changed, "cpu", "float32")
    assert "linear" not in kernels and "vocab" in kernels and "encoder_linear" in kernels
    name = "encoder.conv2.weight"  # the same for the encoder's filters and matrices
    nudged = tiny_weights.tensors[name].astype(np.float32) + np.float32(1e-4)
    changed = replace(tiny_weights, tensors={**tiny_weights.tensors, name: nudged})
    kernels = default_kernels(changed, "cpu", "float32")
    assert "encoder_linear" not in kernels and "linear" in kernels


def _filled_cache(tiny_weights, rows: int, length: int, rng) -> KVCache:
    cache = KVCache(tiny_weights.dims, rows)
    cache.keys_t[..., :length] = rng.standard_normal(cache.keys_t[..., :length].shape)
    cache.values[:, :, :, :length] = rng.standard_normal(cache.values[:, :, :, :length].shape)
    cache.length = length
    return cache


def _reordered_in_full(cache: KVCache, source_rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n = cache.length
    return cache.keys_t[:, source_rows, ..., :n].copy(), cache.values[:, source_rows, :, :n].copy()


def test_beam_reorder_skips_the_shared_prompt_and_equals_a_full_copy(tiny_weights):
    """Beams repeated from one prompt share its slots: a reorder copies only the slots after it,
    and the filled cache then equals a copy of every slot of the source rows, through a chain
    of reorders, groups of windows (rows move only inside a window's beams) and a rewind."""
    rng = np.random.default_rng(0)
    prompt = _filled_cache(tiny_weights, 2, 30, rng)  # two windows' prompts
    cache = prompt.repeated(5)
    assert (cache.group, cache.shared) == (5, 30)
    for step, sources in enumerate([[0, 0, 1, 2, 3, 5, 5, 5, 6, 9], [4, 3, 2, 1, 0, 9, 8, 7, 6, 5],
                                    [1, 1, 1, 1, 1, 5, 6, 7, 8, 9]]):
        n = cache.length
        cache.keys_t[..., n : n + 3] = rng.standard_normal(cache.keys_t[..., n : n + 3].shape)
        cache.values[:, :, :, n : n + 3] = rng.standard_normal(
            cache.values[:, :, :, n : n + 3].shape)
        cache.length += 3
        if step == 1:
            cache.rewind(1)
        expected = _reordered_in_full(cache, np.array(sources))
        cache.reorder(np.array(sources))
        n = cache.length
        assert np.array_equal(cache.keys_t[..., :n], expected[0])
        assert np.array_equal(cache.values[:, :, :, :n], expected[1])


def test_beam_reorder_across_groups_copies_every_slot(tiny_weights):
    """Rows that come from another group's prompt are copied whole, and nothing counts as
    shared afterwards."""
    rng = np.random.default_rng(1)
    cache = _filled_cache(tiny_weights, 2, 20, rng).repeated(2)
    sources = np.array([2, 0, 1, 3])  # row 0 takes window 1's beam, row 2 window 0's
    expected = _reordered_in_full(cache, sources)
    cache.reorder(sources)
    assert np.array_equal(cache.keys_t[..., :20], expected[0])
    assert np.array_equal(cache.values[:, :, :, :20], expected[1])
    assert cache.shared == 0


def test_worker_nice_setting(monkeypatch):
    monkeypatch.delenv("MAXWHISPER_WORKER_NICE", raising=False)
    assert worker_nice() == 10
    monkeypatch.setenv("MAXWHISPER_WORKER_NICE", "0")
    assert worker_nice() == 0 and yield_runtime_workers() == []  # 0 leaves the threads alone
    for bad in ("-5", "20", "high"):
        monkeypatch.setenv("MAXWHISPER_WORKER_NICE", bad)
        with pytest.raises(ValueError, match="MAXWHISPER_WORKER_NICE"):
            worker_nice()


def test_projection_share_setting_reaches_the_graph(tiny_weights, monkeypatch):
    """The threshold is a parameter of every float16 projection in the built graph, so a
    different value compiles (and caches) a different graph instead of reusing the default's."""
    from max.graph import DeviceRef

    from maxwhisper import model

    def decoder_graph():
        kernels = frozenset({"vocab", "linear"})
        return model.build_decoder_graph(model.Params(tiny_weights, DeviceRef.CPU(),
                                                      kernels=kernels))

    monkeypatch.delenv("MAXWHISPER_PROJECTION_SHARE_KB", raising=False)
    assert projection_share_kb() == 256
    default = decoder_graph()
    assert f"share_bytes = {256 * 1024}" in str(default)
    monkeypatch.setenv("MAXWHISPER_PROJECTION_SHARE_KB", "2048")
    assert graph_digest(decoder_graph()) != graph_digest(default)
    for bad in ("-1", "big", "1.5"):
        monkeypatch.setenv("MAXWHISPER_PROJECTION_SHARE_KB", bad)
        with pytest.raises(ValueError, match="MAXWHISPER_PROJECTION_SHARE_KB"):
            projection_share_kb()


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="thread priorities: Linux")
def test_runtime_workers_yield_to_the_python_thread(jfk):
    """Once a model exists (and after it has run), MAX's worker threads, and only they, have
    the setting's nice."""
    own = os.getpriority(os.PRIO_PROCESS, 0)  # this (Python) thread's
    max_model("tiny.en").transcribe(str(jfk.path), language="en")
    priorities = {tid: (name, os.getpriority(os.PRIO_PROCESS, tid))
                  for tid, name in _thread_names().items()}
    workers = [nice for name, nice in priorities.values() if RUNTIME_WORKER_NAME.match(name)]
    assert workers and all(nice >= worker_nice() for nice in workers)
    assert priorities[threading.get_native_id()][1] == own  # the Python thread keeps its own


def _sleeper(pause_s: float, stop: threading.Event, ids: list) -> threading.Thread:
    """A thread that sleeps `pause_s` at a time until `stop`; its native id lands in `ids`."""
    def run():
        ids.append(threading.get_native_id())
        while not stop.is_set():
            stop.wait(pause_s)
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while not ids:
        stop.wait(0.001)
    return thread


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="scheduling policies: Linux")
def test_only_a_new_busy_waker_becomes_idle():
    """`idle_runtime_poller` changes a thread started since the snapshot that wakes thousands of
    times a second, and neither a quiet new thread nor a busy one that was there before.

    The sleepers are Python threads: each wake-up also waits for the GIL, which another thread
    of a long test session (a library's background thread) may hold for the whole 5-ms switch
    interval; so the interval is shortened while they run, and the 0.1-s sample taken up to
    three times (once, in a cold-cache CI run, one 50-ms sample saw the busy sleeper wake under
    1,000 times a second; not reproduced since, with or without GIL-holding threads)."""
    stop = threading.Event()
    old_busy, new_busy, new_quiet = [], [], []
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    try:
        _sleeper(0.0001, stop, old_busy)
        before = set(_thread_wakeups())  # as `execute` takes its snapshot
        _sleeper(0.0001, stop, new_busy)
        _sleeper(1.0, stop, new_quiet)
        for _ in range(3):
            changed = idle_runtime_poller(before, sample_s=0.1)
            assert not set(changed) & set(old_busy + new_quiet)
            if changed:
                break
        policies = {tid: os.sched_getscheduler(tid) for tid in old_busy + new_busy + new_quiet}
    finally:
        stop.set()
        sys.setswitchinterval(switch_interval)
    assert changed == new_busy
    assert policies[new_busy[0]] == os.SCHED_IDLE
    assert policies[old_busy[0]] == policies[new_quiet[0]] == os.SCHED_OTHER


@pytest.mark.skipif(not hasattr(os, "sched_setscheduler"), reason="scheduling policies: Linux")
def test_max_poller_is_idle_after_a_run(jfk, monkeypatch):
    """After a transcription, MAX's runtime polling thread (neither Python's nor a worker, it
    wakes thousands of times a second) runs under SCHED_IDLE; the Python thread keeps its
    policy."""
    monkeypatch.delenv("MAXWHISPER_IDLE_POLLER", raising=False)
    max_model("tiny.en").transcribe(str(jfk.path), language="en")
    first = _thread_wakeups()
    threading.Event().wait(0.1)
    later = _thread_wakeups()
    own = threading.get_native_id()
    idle = {tid for tid in later if os.sched_getscheduler(tid) == os.SCHED_IDLE}
    assert idle, "MAX's polling thread was not found: has its runtime stopped polling? (runtime.py)"
    # whatever else wakes thousands of times a second (however busy the machine) is idle too
    busy = {tid for tid, n in later.items() if tid != own and n - first.get(tid, n) > 100}
    assert busy <= idle
    assert own not in idle and os.sched_getscheduler(own) == os.SCHED_OTHER
