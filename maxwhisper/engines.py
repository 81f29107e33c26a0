"""One small interface over the three engines: MAX (ours), openai-whisper and faster-whisper.

Every engine takes the same 16 kHz samples and the same options (beam size, temperature,
timestamps, language) mapped the same way, and returns a `Transcription` with text, segments,
tokens and timings (both types are in `results.py`, which the baselines import too). Only
`MaxEngine` lives here; the baselines are imported on demand from `baselines.py`, so running the
MAX engine never imports torch, whisper or faster_whisper.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from .results import TranscribeOptions, Transcription, from_whisper_result
from .weights import DEFAULT_MODEL, load_weights

ENGINES = ("max", "openai", "faster")


class MaxEngine:
    """Whisper on MAX Graph: our encoder and decoder graphs plus Whisper's decoding rules."""

    name = "max"

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "float32",
                 verbose: bool = True):
        from .runtime import MaxWhisperModel

        start = time.perf_counter()
        self.model_name = model
        self.model = MaxWhisperModel(load_weights(model), device=device, dtype=dtype,
                                     verbose=verbose)
        self.load_seconds = time.perf_counter() - start

    def transcribe(self, audio: np.ndarray | str | Path,
                   options: TranscribeOptions = TranscribeOptions(),
                   progress: bool | None = None) -> Transcription:
        """`audio`: 16 kHz samples, or a path (read in blocks: memory stays bounded for hours
        of audio in the sequential mode)."""
        from .audio import load_audio, sample_count
        from .transcribe import transcribe, transcribe_batched

        start = time.perf_counter()
        if isinstance(audio, (str, Path)):
            samples = sample_count(audio)
            if options.vad or options.vad_filter:
                audio = load_audio(audio)  # the gate and the filter take the whole signal
        else:
            samples = len(audio)
        if options.batch_size:
            result = transcribe_batched(
                self.model, audio, batch_size=options.batch_size, beam_size=options.beams,
                temperature=options.temperature, without_timestamps=options.without_timestamps,
                initial_prompt=options.initial_prompt, word_timestamps=options.word_timestamps,
                language=options.language, task=options.task, progress=progress)
            return from_whisper_result(result, self.name, self.model_name, options, samples,
                                       self.load_seconds, time.perf_counter() - start)
        result = transcribe(self.model, audio, temperature=options.temperature,
                            beam_size=options.beams, best_of=options.best_of,
                            language=options.language, task=options.task,
                            without_timestamps=options.without_timestamps,
                            condition_on_previous_text=options.condition_on_previous_text,
                            initial_prompt=options.initial_prompt,
                            word_timestamps=options.word_timestamps,
                            clip_timestamps=options.clip_timestamps,
                            carry_initial_prompt=options.carry_initial_prompt,
                            hallucination_silence_threshold=options.hallucination_silence_threshold,
                            vad=options.vad, vad_filter=options.vad_filter,
                            progress=progress)
        return from_whisper_result(result, self.name, self.model_name, options, samples,
                                   self.load_seconds, time.perf_counter() - start)


def load_engine(engine: str, model: str = DEFAULT_MODEL, device: str = "auto",
                dtype: str = "float32", compute_type: str = "float32", verbose: bool = True,
                threads: int | None = None):
    """Build an engine by name: max, openai, or faster (faster-whisper; compute_type float32|int8).
    `threads` caps a baseline's CPU threads (None: all cores). MAX 26.7 has no working cap:
    `InferenceSession(num_threads=...)` aborts the process, because the session creates the host
    CPU device with default options before it applies the count; so a MAX engine uses every core."""
    if engine == "max":
        return MaxEngine(model, device=device, dtype=dtype, verbose=verbose)
    if engine == "openai":
        from .baselines import OpenAIWhisperEngine

        return OpenAIWhisperEngine(model, threads=threads)
    if engine in ("faster", "faster-fp32", "faster-int8"):
        from .baselines import FasterWhisperEngine

        if engine != "faster":
            compute_type = "int8" if engine.endswith("int8") else "float32"
        return FasterWhisperEngine(model, compute_type=compute_type, threads=threads)
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
