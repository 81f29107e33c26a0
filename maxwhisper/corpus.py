"""Many files: transcribe a corpus into one JSONL, resumably, with local workers or on Ray.

`maxwhisper corpus INPUT... --output results.jsonl` takes audio files, folders (searched
recursively) and manifests (TSV/CSV/JSONL with a `path` column, or the speech set's `file`
column, and an optional `reference` / `reference_text`). Each finished file becomes one JSON
line, written by the driver alone in a single `write` and flushed to disk, so killing the run
loses at most the files in flight. The next run with the same output skips every file whose
content hash and options already have a result (errors are retried only on request).

Two ways to run the same work, behind `WorkerPool`:
- `LocalPool`: N processes on this machine, each loading the compiled model once (from the
  compile cache) and taking its share of the cores; files go out longest first so the last
  long file does not start when the others are done.
- `RayPool`: actors that hold a model on a Ray cluster (or a local Ray instance), one task per
  file; an actor that dies is restarted and its file retried.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import MaxWhisperError
from .results import TranscribeOptions

AUDIO_SUFFIXES = frozenset({".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".aac", ".aiff",
                            ".aif", ".wma", ".webm", ".mp4"})
MANIFEST_SUFFIXES = frozenset({".tsv", ".csv", ".jsonl"})
TASK_RETRIES = 2  # Ray: a file whose worker died is retried this often, then reported an error


@dataclass(frozen=True)
class CorpusFile:
    path: str  # absolute
    reference: str | None = None


@dataclass(frozen=True)
class CorpusSettings:
    """What decides a result: the engine, the model and the decoding options (a stored result is
    reused only when all of these are equal), plus how to run (not part of the key)."""

    engine: str = "max"
    model: str = "tiny.en"
    options: TranscribeOptions = field(default_factory=TranscribeOptions)
    compute_type: str = "float32"  # faster engine
    dtype: str = "float32"  # max engine
    device: str = "auto"

    def key(self) -> dict:
        options = {k: list(v) if isinstance(v, tuple) else v
                   for k, v in asdict(self.options).items()}
        return {"engine": self.engine, "model": self.model, "compute_type": self.compute_type,
                "dtype": self.dtype, **options}


# ---------------------------------------------------------------- finding the files


def find_files(inputs: Iterable[str | Path]) -> list[CorpusFile]:
    """Every audio file named by `inputs` (files, folders, manifests), each once, in order.
    A missing input is an error now, before any work; a missing file inside a manifest becomes
    an error line of the run."""
    found: dict[str, CorpusFile] = {}
    for name in inputs:
        path = Path(name).expanduser()
        if not path.exists():
            raise MaxWhisperError(f"{path}: no such file or folder")
        if path.is_dir():
            entries = [CorpusFile(str(p.resolve())) for p in sorted(path.rglob("*"))
                       if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file()]
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            entries = read_manifest(path)
        else:
            entries = [CorpusFile(str(path.resolve()))]
        for entry in entries:  # a file named twice keeps the reference either names
            if entry.path not in found or found[entry.path].reference is None:
                found[entry.path] = entry
    return list(found.values())


def read_manifest(path: Path) -> list[CorpusFile]:
    """Rows of a TSV/CSV/JSONL manifest; relative paths are relative to the manifest."""
    if path.suffix.lower() == ".jsonl":
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip()]
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle, delimiter=delimiter))
    files = []
    for number, row in enumerate(rows, start=1):
        name = row.get("path") or row.get("file")
        if not name:
            raise MaxWhisperError(f"{path}: row {number} has no 'path' (or 'file') column")
        reference = row.get("reference", row.get("reference_text"))
        files.append(CorpusFile(str((path.parent / name).resolve()), reference))
    return files


def content_hash(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def audio_duration(path: str | Path) -> float:
    """Seconds of audio from the header (0 when the header cannot be read: such files go last
    and fail in a worker, with their error recorded)."""
    import soundfile

    try:
        return float(soundfile.info(str(path)).duration)
    except Exception:
        return 0.0


# ---------------------------------------------------------------- the results file


class ResultLog:
    """The JSONL of results: one complete line per file, appended and flushed by one writer.

    Opening it repairs a torn last line (only a machine crash mid-write can leave one) and
    rewrites the file atomically when errors are to be retried, so every file keeps one line."""

    def __init__(self, path: str | Path, retry_errors: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.records = self._read()
        if retry_errors and any("error" in r for r in self.records):
            self.records = [r for r in self.records if "error" not in r]
            self._rewrite()
        self._handle = self.path.open("a", encoding="utf-8")

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        text = self.path.read_text(encoding="utf-8")
        lines = text.split("\n")
        torn = lines[-1] != ""  # the text after the last newline: an unfinished line
        records = []
        for line in lines[:-1]:
            if line.strip():
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError:
                    torn = True
        if torn:
            print(f"maxwhisper: {self.path}: dropped an unfinished line", file=sys.stderr)
            self.records = records
            self._rewrite()
        return records

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in self.records)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self.path)

    def append(self, record: dict) -> None:
        self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())
        self.records.append(record)

    def close(self) -> None:
        self._handle.close()

    def lookup(self, settings: CorpusSettings) -> dict[str, dict]:
        """Stored records for these settings by content hash (for unreadable files: by path)."""
        key = settings.key()
        return {r.get("sha256") or r["path"]: r for r in self.records if r.get("options") == key}


# ---------------------------------------------------------------- one file, in a worker


class CorpusWorker:
    """Holds one loaded engine and turns a file into its record; never raises for a bad file."""

    def __init__(self, settings: CorpusSettings, threads: int | None = None):
        from .engines import load_engine

        self.settings = settings
        self.engine = load_engine(settings.engine, settings.model, device=settings.device,
                                  dtype=settings.dtype, compute_type=settings.compute_type,
                                  verbose=False, threads=threads)

    def transcribe(self, file: CorpusFile, sha256: str | None) -> dict:
        from .audio import SAMPLE_RATE, file_is_silent, is_silent, load_audio, sample_count

        record = {"path": file.path, "sha256": sha256, **_file_stamp(file.path),
                  "engine": self.settings.engine, "model": self.settings.model,
                  "options": self.settings.key()}
        options = self.settings.options
        # the MAX engine reads a path in blocks (bounded memory for hours of audio)
        streamed = self.settings.engine == "max" and not (options.vad or options.vad_filter)
        start = time.perf_counter()
        try:
            audio = file.path if streamed else load_audio(file.path)
            samples = sample_count(file.path) if streamed else len(audio)
            silent = file_is_silent(file.path) if streamed else is_silent(audio)
        except Exception as exc:  # the run goes on; the line says why
            return {**record, "error": _one_line(exc)}
        record["duration_s"] = round(samples / SAMPLE_RATE, 3)
        if silent:  # nothing audible: no text, and nothing to retry either
            return {**record, "language": None, "text": "", "segments": [], "silent": True,
                    "seconds": round(time.perf_counter() - start, 3)}
        try:
            result = self.engine.transcribe(audio, options, progress=False)
        except Exception as exc:  # one file's failure is that file's error line, not the run's
            return {**record, "error": _one_line(exc)}
        return {**record, "language": result.language, "text": result.text,
                "segments": result.segments, "seconds": round(time.perf_counter() - start, 3)}


def _file_stamp(path: str) -> dict:
    """Size and modification time: a file whose stamp equals its stored one keeps its stored
    hash, so a resumed run does not read the whole corpus again."""
    try:
        stat = os.stat(path)
    except OSError:
        return {}
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------- running the work

Job = tuple[CorpusFile, str | None]  # a file and its content hash (None: unreadable)


class LocalPool:
    """`workers` processes on this machine (spawned: no MAX state is forked), each with its share
    of the cores; one worker runs in this process."""

    def __init__(self, settings: CorpusSettings, workers: int = 1):
        self.settings, self.workers = settings, max(1, workers)
        self.threads = max(1, (os.cpu_count() or 1) // self.workers)

    def run(self, jobs: list[Job], on_result: Callable[[dict], None]) -> None:
        if self.workers == 1:
            worker = CorpusWorker(self.settings)
            for file, sha in jobs:
                on_result(worker.transcribe(file, sha))
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        pool = ProcessPoolExecutor(self.workers, mp_context=mp.get_context("spawn"),
                                   initializer=_start_local_worker,
                                   initargs=(self.settings, self.threads))
        try:
            futures = [pool.submit(_local_transcribe, file, sha) for file, sha in jobs]
            for future in as_completed(futures):
                on_result(future.result())
        except BrokenProcessPool:
            raise MaxWhisperError("a worker process died (out of memory or killed); the "
                                  "finished files are saved, run the same command again "
                                  "to do the rest") from None
        finally:  # on Ctrl-C too: queued files are dropped, not run to the end
            pool.shutdown(wait=False, cancel_futures=True)


_LOCAL_WORKER: CorpusWorker | None = None


def _start_local_worker(settings: CorpusSettings, threads: int) -> None:
    global _LOCAL_WORKER
    _LOCAL_WORKER = CorpusWorker(settings, threads)


def _local_transcribe(file: CorpusFile, sha: str | None) -> dict:
    return _LOCAL_WORKER.transcribe(file, sha)


class RayPool:
    """`workers` Ray actors, each holding a model; one task per file, at most one in flight per
    actor. A task whose actor dies is retried (Ray restarts the actor) up to TASK_RETRIES times,
    then the file gets an error line and a fresh actor takes its place."""

    def __init__(self, settings: CorpusSettings, address: str = "local", workers: int = 0):
        self.settings, self.address, self.workers = settings, address, workers

    def _connect(self):
        import ray

        env = {k: v for k, v in os.environ.items() if k.startswith(("MAXWHISPER_", "MODULAR_"))}
        options = {"include_dashboard": False, "log_to_driver": False,
                   "runtime_env": {"env_vars": env}}
        try:
            if self.address == "local":
                ray.init(address="local", num_cpus=os.cpu_count(), **options)
            else:
                ray.init(address=self.address, **options)
        except ConnectionError as exc:
            raise MaxWhisperError(f"no Ray cluster at {self.address!r} ({_one_line(exc)}); "
                                  "start one (`ray start --head`) or use --ray local") from None
        return ray

    def run(self, jobs: list[Job], on_result: Callable[[dict], None]) -> None:
        ray = self._connect()
        try:
            self._schedule(ray, jobs, on_result)
        finally:
            ray.shutdown()

    def _schedule(self, ray, jobs: list[Job], on_result: Callable[[dict], None]) -> None:
        # --workers N: N actors sharing the cluster's cores; by default one single-threaded
        # actor per core (the most files at once; a model is small next to a node's memory)
        cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
        count = self.workers or cpus
        threads = max(1, cpus // count)
        actor_class = ray.remote(num_cpus=threads, max_restarts=-1,
                                 max_task_retries=TASK_RETRIES)(CorpusWorker)
        idle = [actor_class.remote(self.settings, threads) for _ in range(min(count, len(jobs)))]
        queue, running = deque(jobs), {}
        while queue or running:
            while queue and idle:
                actor, (file, sha) = idle.pop(), queue.popleft()
                running[actor.transcribe.remote(file, sha)] = (actor, file, sha)
            done, _ = ray.wait(list(running), num_returns=1)
            actor, file, sha = running.pop(done[0])
            try:
                record = ray.get(done[0])
            except ray.exceptions.RayError as exc:  # died more often than it was retried
                record = {"path": file.path, "sha256": sha, "engine": self.settings.engine,
                          "model": self.settings.model, "options": self.settings.key(),
                          "error": f"the worker died on this file {TASK_RETRIES + 1} times "
                                   f"({_one_line(exc)})"}
                ray.kill(actor)
                actor = actor_class.remote(self.settings, threads)
            idle.append(actor)
            on_result(record)


def transcript_writer(files: list[CorpusFile], folder: Path, output_format: str
                      ) -> Callable[[CorpusFile, dict], None]:
    """An `on_record` that writes each result as <stem>.<format> in `folder` (stems that occur
    twice in the corpus get the first 8 hex digits of the file's hash)."""
    from collections import Counter

    from .outputs import write_outputs
    from .results import Transcription

    stems = Counter(Path(f.path).stem for f in files)

    def write(file: CorpusFile, record: dict) -> None:
        if "error" in record:
            return
        stem = Path(file.path).stem
        name = f"{stem}-{record['sha256'][:8]}" if stems[stem] > 1 else stem
        result = Transcription(record["text"], record["segments"], record["language"],
                               record["engine"], record["model"],
                               record["options"].get("beam_size") or 1, record["duration_s"],
                               {"transcribe_s": record["seconds"]})
        write_outputs(result, Path(name), folder, output_format)

    return write


# ---------------------------------------------------------------- the run and its summary


@dataclass
class CorpusSummary:
    files: int = 0  # in the input
    transcribed: int = 0  # this run
    skipped: int = 0  # already in the output
    errors: int = 0  # error lines in the output for these files
    audio_s: float = 0.0  # of all files with a result
    run_audio_s: float = 0.0  # transcribed this run
    wall_s: float = 0.0  # this run, model loading included
    workers: str = ""
    wer: float | None = None
    wer_files: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def x_real_time(self) -> float:
        return self.run_audio_s / self.wall_s if self.wall_s > 0 else 0.0

    def lines(self) -> list[str]:
        out = [f"corpus: {self.files} files, {self.audio_s / 3600:.3f} h of audio: "
               f"{self.transcribed} transcribed now, {self.skipped} already done, "
               f"{self.errors} errors"]
        if self.workers:
            out.append(f"corpus: {self.run_audio_s:.1f} s of audio in {self.wall_s:.1f} s "
                       f"({self.x_real_time:.1f}x real time, {self.workers}, model loading "
                       "included)")
        else:
            out.append("corpus: nothing to do, every file has a result for these options")
        if self.wer is not None:
            out.append(f"corpus: WER {100 * self.wer:.2f} % on {self.wer_files} files with "
                       "references (Whisper's English normaliser)")
        return out + [f"corpus: {note}" for note in self.notes]


def run_corpus(files: list[CorpusFile], output: str | Path, settings: CorpusSettings,
               workers: int | None = None, ray_address: str | None = None,
               retry_errors: bool = False,
               on_record: Callable[[CorpusFile, dict], None] | None = None,
               progress: bool | None = None) -> CorpusSummary:
    """Transcribe `files` into the JSONL `output`, skipping those already there. `workers`:
    processes on this machine (default 1), or with `ray_address` ("local", "auto" or a cluster
    address) Ray actors (default one per core of the cluster). `on_record(file, record)` sees
    each record as it is written."""
    from tqdm.auto import tqdm

    start = time.perf_counter()
    log = ResultLog(output, retry_errors)
    try:
        jobs, known, total = _pending_jobs(files, log.lookup(settings), log.records)
        by_path = {f.path: f for f in files}
        summary = CorpusSummary(files=len(files), skipped=len(files) - len(jobs))
        bar = tqdm(total=round(total, 1), unit="s", desc="corpus",
                   disable=not jobs or (progress is False) or (progress is None
                                                                and not sys.stderr.isatty()))

        def finished(record: dict) -> None:
            log.append(record)
            summary.transcribed += "error" not in record
            summary.run_audio_s += record.get("duration_s", 0.0)
            bar.update(round(record.get("duration_s", 0.0), 1))
            if on_record:
                on_record(by_path[record["path"]], record)

        if jobs:
            if ray_address:
                pool = RayPool(settings, ray_address, workers or 0)
                summary.workers = f"Ray ({ray_address})"
            else:
                pool = LocalPool(settings, workers or 1)
                summary.workers = f"{pool.workers} worker{'s' * (pool.workers > 1)}"
            pool.run(jobs, finished)
        bar.close()
    finally:
        log.close()
    summary.wall_s = time.perf_counter() - start
    _summarise(summary, files, log.lookup(settings), known)
    return summary


def _pending_jobs(files: list[CorpusFile], stored: dict[str, dict], records: list[dict]
                  ) -> tuple[list[Job], dict, float]:
    """The files without a stored result, longest first, with their hashes; every file's hash
    by path (None: unreadable); and the pending files' seconds of audio (from their headers,
    read once). A file with the size and mtime of a stored record (any options) keeps that
    record's hash instead of being read again."""
    stamped = {(r["path"], r.get("bytes"), r.get("mtime_ns")): r["sha256"] for r in records
               if r.get("sha256") and "bytes" in r}
    hashes: dict[str, str | None] = {}
    jobs = []
    for file in files:
        stamp = _file_stamp(file.path)
        known = stamped.get((file.path, stamp.get("bytes"), stamp.get("mtime_ns")))
        try:
            hashes[file.path] = known or content_hash(file.path)
        except OSError:
            hashes[file.path] = None
        if (hashes[file.path] or file.path) not in stored:
            jobs.append((file, hashes[file.path]))
    seconds = {file.path: audio_duration(file.path) for file, _ in jobs}
    jobs.sort(key=lambda job: -seconds[job[0].path])
    return jobs, hashes, sum(seconds.values())


def _summarise(summary: CorpusSummary, files: list[CorpusFile], stored: dict[str, dict],
               hashes: dict[str, str | None]) -> None:
    records = [(f, stored.get(hashes[f.path] or f.path)) for f in files]
    records = [(f, r) for f, r in records if r is not None]
    summary.errors = sum("error" in r for _, r in records)
    summary.audio_s = sum(r.get("duration_s", 0.0) for _, r in records if "error" not in r)
    scored = [(f.reference, r["text"]) for f, r in records
              if f.reference is not None and "error" not in r]
    if scored:
        try:
            from .speech import word_error_rate

            summary.wer = word_error_rate([r for r, _ in scored], [h for _, h in scored])
            summary.wer_files = len(scored)
        except ImportError as exc:
            summary.notes.append(f"no WER: {exc} (pip install 'maxwhisper[baselines]')")
