"""What every engine takes and gives: `TranscribeOptions` and the `Transcription` record.

Kept apart from `engines.py` (which builds an engine by name, the baselines lazily) so that the
baselines and the MAX engine share these types without importing each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .audio import SAMPLE_RATE


@dataclass
class TranscribeOptions:
    """Decoding options every engine understands. beam_size None or 1 means greedy."""

    beam_size: int | None = None
    task: str = "transcribe"  # or "translate" (X -> English, multilingual models)
    temperature: float | tuple[float, ...] = 0.0  # a tuple enables Whisper's fallback schedule
    best_of: int | None = None  # candidates sampled at temperature > 0 (None: the engine's)
    language: str | None = None
    without_timestamps: bool = False
    condition_on_previous_text: bool = True
    initial_prompt: str | None = None
    word_timestamps: bool = False  # segments gain `words`: {word, start, end, probability}
    clip_timestamps: str = "0"  # "start,end,...": only these stretches (seconds)
    carry_initial_prompt: bool = False  # the initial prompt before every window (not faster)
    hallucination_silence_threshold: float | None = None  # seconds; needs word timestamps
    vad: bool = False  # Silero VAD as a gate: only segments that meet speech are kept
    vad_filter: bool = False  # faster-whisper's vad_filter: only the speech is transcribed
    batch_size: int | None = None  # the batched mode: VAD chunks, N at a time (faster's pipeline)

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


def word_dict(word: str, start: float, end: float, probability: float) -> dict:
    return {"word": word, "start": float(start), "end": float(end),
            "probability": float(probability)}


def from_whisper_result(result: dict, engine: str, model: str, options: TranscribeOptions,
                        samples: int, load_s: float, transcribe_s: float) -> Transcription:
    """A `Transcription` from the {"text", "segments", "language"} dict whisper.transcribe
    returns (our MAX transcribe returns the same shape)."""
    segments = [segment_dict(s["start"], s["end"], s["text"], s["tokens"],
                             avg_logprob=s["avg_logprob"], no_speech_prob=s["no_speech_prob"],
                             **({"words": [word_dict(**w) for w in s["words"]]}
                                if "words" in s else {}))
                for s in result["segments"]]
    return Transcription(result["text"], segments, result["language"], engine, model,
                         options.beam_size or 1, samples / SAMPLE_RATE,
                         {"load_s": load_s, "transcribe_s": transcribe_s})
