"""One small interface over the three engines: MAX (ours), openai-whisper and faster-whisper.

Every engine takes the same 16 kHz samples and the same options (beam size, temperature,
timestamps, language) mapped the same way, and returns a `Transcription` with text, segments,
tokens and timings. Only `MaxEngine` lives here; the baselines are imported on demand from
`baselines.py`, so running the MAX engine never imports torch, whisper or faster_whisper.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

from .audio import SAMPLE_RATE
from .weights import DEFAULT_MODEL, load_weights

ENGINES = ("max", "openai", "faster")


@dataclass
class TranscribeOptions:
    """Decoding options every engine understands. beam_size None or 1 means greedy."""

    beam_size: int | None = None
    temperature: float | tuple[float, ...] = 0.0  # a tuple enables Whisper's fallback schedule
    language: str | None = None
    without_timestamps: bool = False
    condition_on_previous_text: bool = True
    initial_prompt: str | None = None

    @property
    def beams(self) -> int | None:
        return self.beam_size if self.beam_size and self.beam_size > 1 else None


@dataclass
class Transcription:
    text: str
    segments: list[dict]
    language: str
    engine: str
    model: str
    beam_size: int
    audio_seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tokens(self) -> list[int]:
        return [t for s in self.segments for t in s.get("tokens", [])]

    def to_dict(self) -> dict:
        return asdict(self)


def segment_dict(start: float, end: float, text: str, tokens, **extra) -> dict:
    return {"start": float(start), "end": float(end), "text": text,
            "tokens": [int(t) for t in tokens], **extra}


def from_whisper_result(result: dict, engine: str, model: str, options: TranscribeOptions,
                        samples: int, load_s: float, transcribe_s: float) -> Transcription:
    """A `Transcription` from the {"text", "segments", "language"} dict whisper.transcribe
    returns (our MAX transcribe returns the same shape)."""
    segments = [segment_dict(s["start"], s["end"], s["text"], s["tokens"],
                             avg_logprob=s["avg_logprob"], no_speech_prob=s["no_speech_prob"])
                for s in result["segments"]]
    return Transcription(result["text"], segments, result["language"], engine, model,
                         options.beam_size or 1, samples / SAMPLE_RATE,
                         {"load_s": load_s, "transcribe_s": transcribe_s})


class MaxEngine:
    """Whisper on MAX Graph: our encoder and decoder graphs plus Whisper's decoding rules."""

    name = "max"

    def __init__(self, model: str = DEFAULT_MODEL, device: str = "auto", dtype: str = "float32",
                 verbose: bool = True):
        from .engine import MaxWhisperModel

        start = time.perf_counter()
        self.model_name = model
        self.model = MaxWhisperModel(load_weights(model), device=device, dtype=dtype,
                                     verbose=verbose)
        self.load_seconds = time.perf_counter() - start

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions = TranscribeOptions(),
                   progress: bool | None = None) -> Transcription:
        from .transcribe import transcribe

        start = time.perf_counter()
        result = transcribe(self.model, audio, temperature=options.temperature,
                            beam_size=options.beams, language=options.language,
                            without_timestamps=options.without_timestamps,
                            condition_on_previous_text=options.condition_on_previous_text,
                            initial_prompt=options.initial_prompt, progress=progress)
        return from_whisper_result(result, self.name, self.model_name, options, len(audio),
                                   self.load_seconds, time.perf_counter() - start)


def load_engine(engine: str, model: str = DEFAULT_MODEL, device: str = "auto",
                dtype: str = "float32", compute_type: str = "float32", verbose: bool = True):
    """Build an engine by name: max, openai, or faster (faster-whisper; compute_type float32|int8)."""
    if engine == "max":
        return MaxEngine(model, device=device, dtype=dtype, verbose=verbose)
    if engine == "openai":
        from .baselines import OpenAIWhisperEngine

        return OpenAIWhisperEngine(model)
    if engine in ("faster", "faster-fp32", "faster-int8"):
        from .baselines import FasterWhisperEngine

        if engine != "faster":
            compute_type = "int8" if engine.endswith("int8") else "float32"
        return FasterWhisperEngine(model, compute_type=compute_type)
    raise ValueError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}")
