"""The benchmark: every engine on the same audio, weights, beam size and CPUs, one command.

Each engine runs in its own worker process (torch, CTranslate2 and MAX thread pools slow each
other down when they share a process on a small machine). The workers start one after the
other; each loads its engine (reported as load time: a cold compile or a warm cache hit for
MAX) and then waits for work. For every mode (beam size, batch size) each engine runs one
warm-up transcription, reported separately; then the repeats are interleaved: round r runs
every clip on every engine once, the engines' order rotating from round to round, one process
at a time with the others stopped (see `Worker`). On a shared machine whose memory rate drifts
by ±15 % within the hour, each engine so sees the same stretch of time, and the ratios compare
like with like (run one engine after the other, and the slower minutes fall on whichever ran
then).
The parent computes WER against the speech manifest's references, prints a table with the
ratios of max to every other engine and writes JSON after every run, so Ctrl-C keeps what was
measured.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import resource
import signal
import statistics
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

DEFAULT_ENGINES = "max,openai,faster-fp32,faster-int8"


def add_bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="benchmark engines side by side")
    p.add_argument("audio", nargs="+", help="audio files (speech-set files get a WER)")
    p.add_argument("--engines", default=DEFAULT_ENGINES,
                   help=f"comma-separated, from max, openai, faster-fp32, faster-int8 "
                        f"(default {DEFAULT_ENGINES})")
    p.add_argument("--model", default="tiny.en")
    p.add_argument("--beam-size", default="1", help="one or more, comma-separated: 1,5")
    p.add_argument("--batch-size", default="0",
                   help="one or more, comma-separated: 0 is the sequential (exact) mode, N the "
                        "batched mode with N chunks at a time (max and faster only): 0,8")
    p.add_argument("--without-timestamps", action="store_true",
                   help="text tokens only (faster-whisper's batched default)")
    p.add_argument("--vad", action="store_true",
                   help="the sequential mode with the VAD gate (segments must meet speech)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cpus", default=None, help="pin every worker to these CPUs, e.g. 0,1")
    p.add_argument("--word-timestamps", action="store_true",
                   help="every engine also computes word timestamps (max: the alignment "
                        "graph's time per window is reported)")
    p.add_argument("--json", default=None, help="write results here (default build/bench.json)")
    p.set_defaults(run=run_bench)


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    return {"cpu": cpu, "cores": os.cpu_count(), "cpus_used": sorted(os.sched_getaffinity(0)),
            "python": platform.python_version(), "max": version("max"),
            "torch": version("torch"), "ctranslate2": version("ctranslate2"),
            "openai-whisper": version("openai-whisper"),
            "faster-whisper": version("faster-whisper"),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


def matmul_gflops(size: int = 1024, repeat: int = 5) -> float:
    """This machine's float32 matmul rate with numpy (best of `repeat`)."""
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def streaming_gbps(megabytes: int = 256, repeat: int = 5) -> float:
    """This machine's read bandwidth as a decoding step uses it: numpy's float32 GEMV
    (1, 4096) @ (4096, n) over `megabytes` of matrix (a step's size gives its floor), every
    core (best of `repeat`, after one pass that brings the matrix in)."""
    n = max(1, megabytes * 2**20 // (4096 * 4))
    matrix = np.ones((4096, n), dtype=np.float32)
    row = np.ones((1, 4096), dtype=np.float32)
    row @ matrix
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        row @ matrix
        best = min(best, time.perf_counter() - start)
    return matrix.nbytes / best / 1e9


def encoder_gflop(dims) -> float:
    """Multiply-adds x 2 of one 30-s encoder window (convs, projections, attention, MLP)."""
    A, d, n_mels = dims.n_audio_ctx, dims.n_audio_state, dims.n_mels
    convs = 2 * (2 * A * n_mels * d * 3) + 2 * (A * d * d * 3)
    per_layer = 2 * A * d * d * 4 + 2 * A * A * d * 2 + 2 * A * d * 4 * d * 2
    return (convs + dims.n_audio_layer * per_layer) / 1e9


# --------------------------------------------------------------------------------------------
# Worker: one engine, every clip
# --------------------------------------------------------------------------------------------


def worker(spec: dict) -> None:
    """One engine, driven by the parent over stdin/stdout, a JSON line each way: it answers
    {"load_s"} once loaded, then {"warmup_s"} to {"warm": [beam, batch]} and one run's
    record to {"run": [beam, batch], "audio": path}, until stdin closes."""
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])
    _die_with_parent()
    from .engines import load_engine

    start = time.perf_counter()
    engine = load_engine(spec["engine"], spec["model"], verbose=True)
    _answer({"load_s": time.perf_counter() - start})
    from .audio import SAMPLE_RATE, load_audio

    audios = {path: load_audio(path) for path in spec["audio"]}
    for line in sys.stdin:
        command = json.loads(line)
        beam, batch = command.get("warm") or command["run"]
        options = _options(spec, beam, batch)
        if "warm" in command:
            first = next(iter(audios.values()))
            start = time.perf_counter()
            engine.transcribe(first[: 5 * SAMPLE_RATE], options)  # first-call costs, on 5 s
            _answer({"warmup_s": time.perf_counter() - start})
        else:
            _answer(_run_once(engine, spec["engine"], audios, command["audio"], options,
                              beam, batch))


def _die_with_parent() -> None:
    """On Linux, end this worker when the bench that drives it ends, however it ends (a
    stopped worker would otherwise wait forever)."""
    if sys.platform.startswith("linux"):
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _answer(message: dict) -> None:
    print(json.dumps(message), flush=True)


def _options(spec: dict, beam: int, batch: int):
    from .results import TranscribeOptions

    return TranscribeOptions(beam_size=beam, batch_size=batch or None,
                             word_timestamps=spec.get("word_timestamps", False),
                             without_timestamps=spec.get("without_timestamps", False),
                             vad=spec.get("vad", False) and not batch)


def _run_once(engine, name: str, audios: dict, path: str, options, beam: int, batch: int
              ) -> dict:
    """One timed transcription of `path`, with MAX's own timings when the engine has them."""
    model = getattr(engine, "model", None)
    if hasattr(model, "stats"):
        model.stats.reset()
    start = time.perf_counter()
    result = engine.transcribe(audios[path], options)
    wall = time.perf_counter() - start
    record = {
        "engine": name, "audio": path, "beam_size": beam, "batch_size": batch,
        "audio_seconds": result.audio_seconds, "wall_s": wall, "text": result.text,
        "tokens": len(result.tokens),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "encoder_ms_per_window": None, "decoder_ms_per_step": None,
    }
    stats = getattr(model, "stats", None)
    if stats is not None and stats.windows:
        record["encoder_ms_per_window"] = 1000 * stats.encode_s / stats.windows
        record["decoder_ms_per_step"] = 1000 * stats.decode_s / max(stats.decode_steps, 1)
        record["prefill_ms"] = 1000 * stats.prefill_s / max(stats.prefills, 1)
        if stats.alignments:  # word timestamps: the alignment graph, once a window
            record["alignment_ms_per_window"] = 1000 * stats.align_s / stats.alignments
        rows = batch or beam  # a batch step: one row per chunk, each its own window
        record["decoder_mb_per_step"] = model.decoder_bytes_per_step(
            rows, windows=batch or 1) / 1e6
        record["kernels"] = sorted(model.kernels)
        record["compile"] = {k: list(v) for k, v in engine.model.report.entries.items()}
    return record


# --------------------------------------------------------------------------------------------
# Parent: spawn workers, gather, report
# --------------------------------------------------------------------------------------------


def _add_wer(record: dict) -> None:
    from .speech import reference_for, word_error_rate

    reference = reference_for(record["audio"])
    record["wer"] = None if reference is None else word_error_rate([reference], [record["text"]])


def _save(path: Path, report: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(path)


def mode(r: dict) -> tuple[int, int]:
    """(beam size, batch size; 0 = the sequential mode): what a result is compared within."""
    return r["beam_size"], r.get("batch_size", 0)


def mode_name(r: dict) -> str:
    beam, batch = mode(r)
    return f"beam {beam}" + (f" batch {batch}" if batch else "")


def add_ratios(results: list[dict]) -> None:
    """speedup_vs[engine] = that engine's best wall time / max's, same clip and mode."""
    by_key = {(r["engine"], r["audio"], mode(r)): r for r in results}
    for r in results:
        if r["engine"] != "max":
            continue
        r["speedup_vs"] = {e: by_key[(e, a, m)]["wall_min_s"] / r["wall_min_s"]
                           for (e, a, m) in by_key if a == r["audio"] and m == mode(r)
                           and e != "max"}


def format_table(results: list[dict]) -> str:
    header = (f"{'engine':<12} {'clip':<28} {'beam':>4} {'batch':>5} {'audio s':>8} {'min s':>8} "
              f"{'median s':>8} {'x RT':>7} {'enc ms/win':>10} {'dec ms/step':>11} {'WER %':>6} "
              f"{'max speedup':>11}")
    lines = [header, "-" * len(header)]
    for r in results:
        fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
        speedup = r.get("max_speedup")
        lines.append(
            f"{r['engine']:<12} {Path(r['audio']).name[:28]:<28} {r['beam_size']:>4} "
            f"{r.get('batch_size') or '-':>5} "
            f"{r['audio_seconds']:>8.1f} {r['wall_min_s']:>8.2f} {r['wall_median_s']:>8.2f} "
            f"{r['x_realtime']:>7.1f} {fmt(r['encoder_ms_per_window'], '>10.0f')} "
            f"{fmt(r['decoder_ms_per_step'], '>11.1f')} "
            f"{fmt(None if r['wer'] is None else 100 * r['wer'], '>6.2f')} "
            f"{fmt(speedup, '>10.2f') + ('x' if speedup else ''):>11}")
    return "\n".join(lines)


class WorkerFailed(RuntimeError):
    pass


class Worker:
    """One engine's worker process, asked one thing at a time (see `worker`). Between its
    turns it is stopped (SIGSTOP): an idle MAX process still takes ~12 % of a core (its
    runtime's threads, measured over 10 s; torch's and CTranslate2's take none), which would
    slow whichever engine runs meanwhile."""

    def __init__(self, engine: str, spec: dict):
        self.engine = engine
        # its own session: a stopped process in the bench's process group would make the
        # kernel hang the whole group up (SIGHUP) when the shell that started it goes away
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "maxwhisper.bench", json.dumps({**spec, "engine": engine})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.load_s = self._answer()["load_s"]
        self._signal("SIGSTOP")

    def ask(self, command: dict) -> dict:
        self._signal("SIGCONT")
        try:
            self.proc.stdin.write(json.dumps(command) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # it has died; _answer says how
        answer = self._answer()
        self._signal("SIGSTOP")
        return answer

    def _answer(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise WorkerFailed(f"the {self.engine} worker failed (exit {self.proc.wait()})")
        return json.loads(line)

    def _signal(self, name: str) -> None:
        if hasattr(signal, name) and self.proc.poll() is None:  # POSIX; elsewhere it idles
            self.proc.send_signal(getattr(signal, name))

    def close(self) -> None:
        self._signal("SIGCONT")
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _runs(engine: str, batch: int) -> bool:
    """Whether `engine` has the mode: openai-whisper has no batched one."""
    return not (batch and engine == "openai")


def merge_run(record: dict | None, run: dict) -> dict:
    """An engine/clip/mode record with one more run: every wall time kept, the timings and
    text of the fastest run (the one `wall_min_s` reports)."""
    walls = (record["walls_s"] if record else []) + [run.pop("wall_s")]
    merged = dict(record or {})
    if record is None or walls[-1] < record["wall_min_s"]:
        merged.update(run)
    merged.update(walls_s=walls, wall_min_s=min(walls), wall_median_s=statistics.median(walls),
                  x_realtime=merged["audio_seconds"] / min(walls),
                  peak_rss_mb=max(run["peak_rss_mb"], merged["peak_rss_mb"]))
    return merged


def run_benchmark(audio: list[str], engines: list[str], model: str = "tiny.en",
                  beam_sizes: tuple[int, ...] = (1,), repeat: int = 3, out: Path | None = None,
                  cpus: list[int] | None = None, on_result=None,
                  word_timestamps: bool = False, batch_sizes: tuple[int, ...] = (0,),
                  without_timestamps: bool = False, vad: bool = False) -> dict:
    """Run every engine in its own worker over `audio`, repeats interleaved (see the module's
    docstring); returns (and saves) the report.

    `on_result(record, done, total)` is called when an engine/clip/mode result is complete.
    """
    from .errors import AudioError
    from .settings import build_dir

    audio = [str(Path(a).resolve()) for a in audio]
    for path in audio:
        if not Path(path).is_file():
            raise AudioError(f"{path}: no such file")
    out = Path(out) if out else build_dir() / "bench.json"
    cpus = cpus or sorted(os.sched_getaffinity(0))
    report = {"machine": machine_info(), "model": model, "engines": engines,
              "beam_sizes": list(beam_sizes), "batch_sizes": list(batch_sizes),
              "repeat": repeat, "interleaved": True, "results": [],
              "word_timestamps": word_timestamps, "without_timestamps": without_timestamps,
              "vad": vad}
    report["machine"]["numpy_matmul_gflops"] = matmul_gflops()
    report["machine"]["streaming_gbps"] = streaming_gbps()
    modes = [(beam, batch) for beam in beam_sizes for batch in batch_sizes]
    total = sum(len(audio) for engine in engines for _, batch in modes if _runs(engine, batch))
    spec = {"model": model, "audio": audio, "cpus": cpus, "word_timestamps": word_timestamps,
            "without_timestamps": without_timestamps, "vad": vad}
    workers: dict[str, Worker] = {}
    records: dict[tuple, dict] = {}

    def ask(engine: str, command: dict) -> dict | None:
        try:
            return workers[engine].ask(command)
        except WorkerFailed as exc:  # the others go on
            print(f"bench: {exc}", file=sys.stderr)
            workers.pop(engine).close()
            return None

    try:
        for engine in engines:  # one at a time, so each load time is its own
            try:
                workers[engine] = Worker(engine, spec)
            except WorkerFailed as exc:
                print(f"bench: {exc}", file=sys.stderr)
        for beam, batch in modes:
            warmups = {e: ask(e, {"warm": [beam, batch]}) for e in list(workers)
                       if _runs(e, batch)}
            for round_index in range(repeat):
                active = [e for e in workers if warmups.get(e)]
                turn = round_index % max(len(active), 1)
                for path in audio:
                    for engine in active[turn:] + active[:turn]:
                        if engine not in workers:
                            continue
                        run = ask(engine, {"run": [beam, batch], "audio": path})
                        if run is None:
                            continue
                        key = (engine, path, beam, batch)
                        record = merge_run(records.get(key), run)
                        record.update(load_s=workers[engine].load_s,
                                      warmup_s=warmups[engine]["warmup_s"])
                        _add_wer(record)
                        records[key] = record
                        report["results"] = list(records.values())
                        _save(out, report)
                        if round_index == repeat - 1 and on_result:
                            done = sum(len(r["walls_s"]) == repeat for r in records.values())
                            on_result(record, done, total)
    except KeyboardInterrupt:
        print(f"bench: interrupted; results so far are in {out}", file=sys.stderr)
    finally:
        for w in workers.values():
            w.close()
    order = {e: i for i, e in enumerate(engines)}  # the table: engine by engine, as given
    report["results"] = sorted(records.values(), key=lambda r: (
        order[r["engine"]], audio.index(r["audio"]), modes.index(mode(r))))
    finalize(report, model)
    _save(out, report)
    report["path"] = str(out)
    return report


def run_bench(args) -> int:
    from tqdm import tqdm

    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    beams = tuple(int(b) for b in str(args.beam_size).split(","))
    batches = tuple(int(b) for b in str(args.batch_size).split(","))
    cpus = [int(c) for c in args.cpus.split(",")] if args.cpus else None
    total = len(engines) * len(args.audio) * len(beams) * len(batches)
    with tqdm(total=total, unit="run", disable=not sys.stderr.isatty()) as bar:
        def progress(record, done, total):
            bar.update(1)
            print(f"bench: {record['engine']} {Path(record['audio']).name} "
                  f"{mode_name(record)}: {record['wall_min_s']:.2f} s", file=sys.stderr)

        report = run_benchmark(args.audio, engines, args.model, beams, args.repeat,
                               Path(args.json) if args.json else None, cpus, progress,
                               args.word_timestamps, batches, args.without_timestamps, args.vad)
    print(format_table(report["results"]))
    print(summary(report))
    print(f"results: {report['path']}")
    return 0


def finalize(report: dict, model: str) -> None:
    """Ratios, and the encoder's share of the machine's matmul rate."""
    from .weights import load_weights

    results = report["results"]
    add_ratios(results)
    for r in results:
        if r["engine"] == "max":
            r["max_speedup"] = None  # its ratios to every other engine are in speedup_vs
        else:
            mx = [m for m in results if m["engine"] == "max" and m["audio"] == r["audio"]
                  and mode(m) == mode(r)]
            r["max_speedup"] = mx[0]["speedup_vs"][r["engine"]] if mx else None
    # The floor: the time the step's bytes take at numpy's GEMV rate over a matrix of the same
    # size, measured here (the engines' processes are closed). Not the 256-MB rate: where the
    # last-level cache holds much of a step's working set (an Intel Xeon with 480 MB of L3:
    # 53-56 GB/s over 75 MB against 31 over 256), the step gets that rate too.
    rates: dict[int, float] = {}
    for r in results:
        megabytes = r.get("decoder_mb_per_step")
        if megabytes:
            size = max(1, round(megabytes))
            if size not in rates:
                rates[size] = streaming_gbps(size)
            r["decoder_stream_gbps"] = rates[size]
            r["decoder_floor_ms"] = megabytes / rates[size]
            r["decoder_share_of_floor"] = r["decoder_floor_ms"] / r["decoder_ms_per_step"]
    dims = load_weights(model, verify=False).dims
    report["encoder_gflop_per_window"] = encoder_gflop(dims)
    enc = [r["encoder_ms_per_window"] for r in results if r.get("encoder_ms_per_window")]
    if enc:
        rate = report["encoder_gflop_per_window"] / (min(enc) / 1000)
        report["max_encoder_gflops"] = rate
        report["max_encoder_share_of_numpy_matmul"] = rate / report["machine"]["numpy_matmul_gflops"]


def summary(report: dict) -> str:
    m = report["machine"]
    lines = [f"machine: {m['cpu']}, {len(m['cpus_used'])} CPUs, max {m['max']}, torch {m['torch']},"
             f" ctranslate2 {m['ctranslate2']}, {m['date']}",
             f"numpy float32 matmul: {m['numpy_matmul_gflops']:.1f} GFLOP/s"]
    if "max_encoder_gflops" in report:
        lines.append(f"max encoder: {report['encoder_gflop_per_window']:.1f} GFLOP per window at "
                     f"{report['max_encoder_gflops']:.1f} GFLOP/s = "
                     f"{100 * report['max_encoder_share_of_numpy_matmul']:.0f}% of numpy's matmul rate")
    if "streaming_gbps" in m:
        lines.append(f"numpy float32 GEMV stream: {m['streaming_gbps']:.1f} GB/s over 256 MB")
    for r in report["results"]:
        if r.get("decoder_floor_ms"):
            lines.append(
                f"max decoder, {Path(r['audio']).name} {mode_name(r)}: "
                f"{r['decoder_ms_per_step']:.2f} ms/step reading {r['decoder_mb_per_step']:.0f} MB"
                f" (floor {r['decoder_floor_ms']:.2f} ms at {r['decoder_stream_gbps']:.0f} GB/s: "
                f"{100 * r['decoder_share_of_floor']:.0f}% of the floor); prompt prefill "
                f"{r['prefill_ms']:.0f} ms a window")
    for r in report["results"]:
        if r.get("alignment_ms_per_window"):
            lines.append(f"max word timestamps, {Path(r['audio']).name} beam {r['beam_size']}: "
                         f"alignment graph {r['alignment_ms_per_window']:.0f} ms a window")
    totals: dict[tuple[str, tuple[int, int]], float] = {}
    for r in report["results"]:
        key = (r["engine"], mode(r))
        totals[key] = totals.get(key, 0.0) + r["wall_min_s"]
    for (engine, (beam, batch)), seconds in sorted(totals.items()):
        mx = totals.get(("max", (beam, batch)))
        ratio = ""
        if mx and engine != "max":
            speedup = seconds / mx  # > 1: max is faster
            ratio = (f"  (max is {speedup:.2f}x faster)" if speedup >= 1
                     else f"  (max takes {1 / speedup:.2f}x as long)")
        name = mode_name({"beam_size": beam, "batch_size": batch})
        lines.append(f"total {name} {engine:<12} {seconds:8.2f} s{ratio}")
    return "\n".join(lines)


if __name__ == "__main__":
    worker(json.loads(sys.argv[1]))
