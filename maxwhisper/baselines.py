"""The reference engines: openai-whisper (PyTorch) and faster-whisper (CTranslate2).

openai-whisper runs from our extracted `.npz` (loaded strictly into `whisper.model.Whisper`;
nothing is downloaded); faster-whisper runs from the CTranslate2 folder of the same packaged
model, in float32 or int8. Both get numpy samples from `maxwhisper.load_audio` (openai-whisper
would otherwise shell out to an ffmpeg binary) and the same options.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import whisper

from .audio import SAMPLE_RATE
from .results import (
    TranscribeOptions,
    Transcription,
    from_whisper_result,
    segment_dict,
    word_dict,
)
from .vad import segments_in_speech, speech_timestamps
from .weights import DEFAULT_MODEL, WhisperWeights, ctranslate2_dir, load_weights


def torch_whisper(weights: WhisperWeights) -> whisper.model.Whisper:
    """openai-whisper's model with our extracted weights, loaded strictly (every name and shape)."""
    dims = whisper.model.ModelDimensions(**{k: getattr(weights.dims, k)
                                            for k in weights.dims.__dataclass_fields__})
    model = whisper.model.Whisper(dims)
    state = {name: torch.from_numpy(weights.float32(name)) for name in weights.tensors}
    model.load_state_dict(state, strict=True)
    if len(weights.alignment_heads):  # the checkpoint's heads, as the MAX engine uses them
        mask = torch.zeros(dims.n_text_layer, dims.n_text_head, dtype=torch.bool)
        mask[weights.alignment_heads[:, 0], weights.alignment_heads[:, 1]] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
    return model.eval()


class OpenAIWhisperEngine:
    name = "openai"

    def __init__(self, model: str = DEFAULT_MODEL, threads: int | None = None):
        start = time.perf_counter()
        if threads:
            torch.set_num_threads(threads)
        self.model_name = model
        self.model = torch_whisper(load_weights(model))
        self.load_seconds = time.perf_counter() - start

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions = TranscribeOptions(),
                   progress: bool | None = None) -> Transcription:
        if options.vad_filter or options.batch_size:
            raise ValueError("openai-whisper has no vad_filter or batched mode; use --engine max "
                             "or faster")
        start = time.perf_counter()
        with torch.inference_mode():
            result = self.model.transcribe(
                audio, fp16=False, temperature=options.temperature, beam_size=options.beams,
                best_of=options.best_of,
                language=options.language, task=options.task,
                without_timestamps=options.without_timestamps,
                condition_on_previous_text=options.condition_on_previous_text,
                initial_prompt=options.initial_prompt, word_timestamps=options.word_timestamps,
                clip_timestamps=options.clip_timestamps,
                carry_initial_prompt=options.carry_initial_prompt,
                hallucination_silence_threshold=options.hallucination_silence_threshold,
                verbose=None if not progress else False)
        if options.vad:  # the same gate as the MAX engine's
            result["segments"] = segments_in_speech(result["segments"], speech_timestamps(audio))
            result["text"] = "".join(s["text"] for s in result["segments"])
        return from_whisper_result(result, self.name, self.model_name, options, len(audio),
                                   self.load_seconds, time.perf_counter() - start)


class FasterWhisperEngine:
    def __init__(self, model: str = DEFAULT_MODEL, compute_type: str = "float32",
                 threads: int | None = None):
        start = time.perf_counter()
        self.name = "faster" if compute_type == "float32" else f"faster-{compute_type}"
        self.model_name = model
        folder: Path = ctranslate2_dir(model)
        from faster_whisper import WhisperModel  # here: openai's engine runs without it

        self.model = WhisperModel(str(folder), device="cpu", compute_type=compute_type,
                                  cpu_threads=threads or os.cpu_count() or 0, local_files_only=True)
        self.load_seconds = time.perf_counter() - start

    def transcribe(self, audio: np.ndarray, options: TranscribeOptions = TranscribeOptions(),
                   progress: bool | None = None) -> Transcription:
        if options.carry_initial_prompt:
            raise ValueError("faster-whisper has no carry_initial_prompt")
        start = time.perf_counter()
        temperature = options.temperature
        if options.batch_size:
            return self._transcribe_batched(audio, options, start)
        segments_iter, info = self.model.transcribe(
            audio, beam_size=options.beam_size or 1, best_of=options.best_of or 1,
            temperature=list(temperature) if isinstance(temperature, (tuple, list)) else [temperature],
            language=options.language, task=options.task,
            without_timestamps=options.without_timestamps,
            condition_on_previous_text=options.condition_on_previous_text,
            initial_prompt=options.initial_prompt, word_timestamps=options.word_timestamps,
            clip_timestamps=options.clip_timestamps,
            hallucination_silence_threshold=options.hallucination_silence_threshold,
            vad_filter=options.vad_filter)
        segments = [_segment(s) for s in segments_iter]
        if options.vad:  # the same gate as the MAX engine's
            segments = segments_in_speech(segments, speech_timestamps(audio))
        return self._transcription(segments, info.language, audio, options, start)

    def _transcribe_batched(self, audio: np.ndarray, options: TranscribeOptions, start: float
                            ) -> Transcription:
        """faster-whisper's BatchedInferencePipeline (its VAD, its chunks, batch_size at once)."""
        from faster_whisper import BatchedInferencePipeline

        temperature = options.temperature
        segments_iter, info = BatchedInferencePipeline(self.model).transcribe(
            audio, batch_size=options.batch_size, beam_size=options.beam_size or 1,
            temperature=temperature[0] if isinstance(temperature, (tuple, list)) else temperature,
            language=options.language, task=options.task,
            without_timestamps=options.without_timestamps, initial_prompt=options.initial_prompt,
            word_timestamps=options.word_timestamps)
        segments = [_segment(s) for s in segments_iter]
        return self._transcription(segments, info.language, audio, options, start)

    def _transcription(self, segments: list[dict], language: str, audio: np.ndarray,
                       options: TranscribeOptions, start: float) -> Transcription:
        seconds = time.perf_counter() - start
        return Transcription("".join(s["text"] for s in segments), segments, language,
                             self.name, self.model_name, options.beam_size or 1,
                             len(audio) / SAMPLE_RATE,
                             {"load_s": self.load_seconds, "transcribe_s": seconds})


def _segment(segment) -> dict:
    """A faster-whisper `Segment` as our segment dict (with its words when it has them)."""
    words = ({"words": [word_dict(w.word, w.start, w.end, w.probability) for w in segment.words]}
             if segment.words is not None else {})
    return segment_dict(segment.start, segment.end, segment.text, segment.tokens,
                        avg_logprob=segment.avg_logprob, no_speech_prob=segment.no_speech_prob,
                        **words)
