"""Long-form transcription: Whisper's seek loop over 30-s windows, with temperature fallback.

Follows `whisper.transcribe.transcribe` so the segments match the reference: each window is
decoded (falling back to higher temperatures when the text is too repetitive or too unlikely),
skipped when it is silence, split into segments at timestamp pairs, and the next window starts
at the last complete timestamp. The previous text conditions the next window unless a window
needed a temperature above 0.5. With `word_timestamps`, each window's words are timed from
the alignment heads' cross-attention (`timing.py`).

`transcribe_batched` is faster-whisper's batched pipeline instead: VAD chunks decoded N at a time.
"""

from __future__ import annotations

import bisect
import sys
import warnings
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np

from .audio import (
    CHUNK_LENGTH,
    FRAMES_PER_SECOND,
    HOP_LENGTH,
    N_FRAMES,
    N_SAMPLES,
    SAMPLE_RATE,
    AudioSpool,
    LogMelStream,
    load_audio,
    log_mel_spectrogram,
    pad_or_trim,
)
from .decoding import DecodingOptions, DecodingResult, decode, decode_batch, detect_language
from .errors import AudioError
from .timing import APPEND_PUNCTUATIONS, PREPEND_PUNCTUATIONS, add_word_timestamps
from .tokenizer import LANGUAGES, get_tokenizer
from .vad import (
    SpeechMap,
    SpeechProbabilities,
    VadOptions,
    collect_speech,
    segments_in_speech,
    speech_regions,
    speech_timestamps,
)

# what openai-whisper leaves out when it scores words for hallucinations
PUNCTUATION = "\"'“¿([{-\"'.。,，!！?？:：”)]}、"


def _fallback_decode(model, mel_window: np.ndarray, options: DecodingOptions,
                     temperatures: tuple[float, ...], compression_ratio_threshold: float | None,
                     logprob_threshold: float | None,
                     no_speech_threshold: float | None) -> tuple[DecodingResult, object]:
    """Decode one window, falling back to higher temperatures; returns the result and the
    window's encoder features (the word aligner reuses them)."""
    features = model.encode(mel_window[None])
    result = None
    for t in temperatures:
        if t > 0:
            window_options = replace(options, temperature=t, beam_size=None, patience=None)
        else:
            window_options = replace(options, temperature=t, best_of=None)
        result = decode(model, mel_window, window_options, features=features)
        needs_fallback = (
            (compression_ratio_threshold is not None
             and result.compression_ratio > compression_ratio_threshold)
            or (logprob_threshold is not None and result.avg_logprob < logprob_threshold))
        if (no_speech_threshold is not None and logprob_threshold is not None
                and result.no_speech_prob > no_speech_threshold
                and result.avg_logprob < logprob_threshold):
            needs_fallback = False  # silence: no point sampling harder
        if not needs_fallback:
            break
    return result, features


def transcribe(
    model,
    audio: str | Path | np.ndarray,
    *,
    verbose: bool | None = None,
    temperature: float | tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0),
    compression_ratio_threshold: float | None = 2.4,
    logprob_threshold: float | None = -1.0,
    no_speech_threshold: float | None = 0.6,
    condition_on_previous_text: bool = True,
    initial_prompt: str | None = None,
    carry_initial_prompt: bool = False,
    word_timestamps: bool = False,
    prepend_punctuations: str = PREPEND_PUNCTUATIONS,
    append_punctuations: str = APPEND_PUNCTUATIONS,
    hallucination_silence_threshold: float | None = None,
    clip_timestamps: str | list[float] = "0",
    vad: bool | VadOptions = False,
    vad_filter: bool | VadOptions = False,
    batch_size: int | None = None,
    progress: bool | None = None,
    **decode_options,
) -> dict:
    """Transcribe `audio` (a path or 16 kHz float32 samples) with `model` (a MaxWhisperModel).

    Returns {"text", "segments", "language"} like `whisper.transcribe`; each segment has id,
    seek, start, end, text, tokens, temperature, avg_logprob, compression_ratio, no_speech_prob.
    `progress` shows a bar over the audio (default: when stderr is a terminal).
    With `word_timestamps`, every segment also has `words` ({word, start, end, probability},
    from the alignment graph and DTW, see `timing.py`), segment bounds follow the words, and
    `hallucination_silence_threshold` (seconds) skips silence around likely hallucinations.
    `clip_timestamps` ("start,end,start,end,..." seconds, or a list) transcribes only those
    stretches; `carry_initial_prompt` puts `initial_prompt` before every window's prompt.
    `vad` (True or `VadOptions`): Silero VAD finds the speech; audio without any gives an empty
    result, otherwise the whole audio is transcribed as without `vad` and only the segments
    that meet speech are kept (so speech keeps exactly its text). `vad_filter`: faster-whisper's
    `vad_filter`, only the speech regions one after the other, times mapped back to the file
    (faster on long silences; the text can differ from the whole audio's where a cut falls).
    A path is read in blocks and its log-mel made window by window (`LogMelStream`: the same
    numbers, memory bounded however long the file is); with `vad` or `vad_filter` it is loaded.
    `batch_size` N: the batched mode instead (`transcribe_batched`: VAD chunks decoded N at a
    time, each alone, at the first temperature of the schedule; `vad` may give its VadOptions).
    """
    if batch_size:
        unsupported = {"vad_filter": bool(vad_filter), "carry_initial_prompt": carry_initial_prompt,
                       "clip_timestamps": _clipped(clip_timestamps),
                       "hallucination_silence_threshold":
                           hallucination_silence_threshold is not None}
        if any(unsupported.values()):
            names = ", ".join(name for name, used in unsupported.items() if used)
            raise ValueError(f"the batched mode (batch_size) does not take {names}")
        return transcribe_batched(
            model, audio, batch_size=batch_size, temperature=temperature,
            initial_prompt=initial_prompt, word_timestamps=word_timestamps,
            prepend_punctuations=prepend_punctuations, append_punctuations=append_punctuations,
            progress=progress, **({"vad_options": vad} if isinstance(vad, VadOptions) else {}),
            **decode_options)
    loop_options = dict(
        verbose=verbose, temperature=temperature,
        compression_ratio_threshold=compression_ratio_threshold,
        logprob_threshold=logprob_threshold, no_speech_threshold=no_speech_threshold,
        condition_on_previous_text=condition_on_previous_text, initial_prompt=initial_prompt,
        carry_initial_prompt=carry_initial_prompt, word_timestamps=word_timestamps,
        prepend_punctuations=prepend_punctuations, append_punctuations=append_punctuations,
        hallucination_silence_threshold=hallucination_silence_threshold, progress=progress,
        **decode_options)
    if isinstance(audio, (str, Path)) and not (vad or vad_filter):
        mel = LogMelStream(audio, model.dims.n_mels, padding=N_SAMPLES)
        try:
            return _seek_loop(model, mel, clip_timestamps=clip_timestamps, **loop_options)
        finally:
            mel.close()
    if isinstance(audio, (str, Path)):
        audio = load_audio(audio)
    audio = np.asarray(audio, dtype=np.float32)
    if audio.size == 0:
        raise AudioError("audio contains no samples")
    if vad or vad_filter:
        if _clipped(clip_timestamps):
            raise ValueError("VAD and clip_timestamps both choose what to transcribe; use one")
        rerun = partial(transcribe, model, **loop_options)
        no_speech_language = decode_options.get("language") or (
            None if model.dims.is_multilingual else "en")
        choice = vad_filter or vad
        vad_options = choice if isinstance(choice, VadOptions) else VadOptions()
        regions = speech_timestamps(audio, vad_options)
        if not regions:
            return {"text": "", "segments": [], "language": no_speech_language}
        if vad_filter:  # only the speech, one region after the other; times mapped back
            result = rerun(collect_speech(audio, regions))
            SpeechMap(regions).restore(result["segments"])
            return result
        result = rerun(audio)  # the whole audio, then only the segments that meet speech
        result["segments"] = segments_in_speech(result["segments"], regions)
        result["text"] = "".join(segment["text"] for segment in result["segments"])
        return result
    mel = log_mel_spectrogram(audio, model.dims.n_mels, padding=N_SAMPLES)
    return _seek_loop(model, mel, clip_timestamps=clip_timestamps, **loop_options)


def _clipped(clip_timestamps: str | list[float]) -> bool:
    """Whether `clip_timestamps` picks stretches of the audio (its default, "0", is all of it)."""
    return clip_timestamps not in ("0", [0], [0.0])


def _seek_loop(model, mel, *, verbose, temperature, compression_ratio_threshold,
               logprob_threshold, no_speech_threshold, condition_on_previous_text,
               initial_prompt, carry_initial_prompt, word_timestamps, prepend_punctuations,
               append_punctuations, hallucination_silence_threshold, clip_timestamps, progress,
               **decode_options) -> dict:
    """openai-whisper's loop over 30-s windows of `mel` (an array, or a `LogMelStream` that
    computes the frames a window needs), with `transcribe`'s arguments."""
    dims = model.dims
    options = DecodingOptions(**decode_options)
    content_frames = mel.shape[-1] - N_FRAMES

    language = options.language
    if language is None:
        if not dims.is_multilingual:
            language = "en"
        else:
            features = model.encode(pad_or_trim(mel[:, :N_FRAMES], N_FRAMES)[None])
            probe = get_tokenizer(True, num_languages=dims.num_languages)
            language, _ = detect_language(model, features, probe)
            if verbose is not None:
                print(f"Detected language: {LANGUAGES[language].title()}", file=sys.stderr)
    elif not dims.is_multilingual:
        language = "en"  # an English-only model has no language token to force
    options = replace(options, language=language)
    if word_timestamps and options.task == "translate":
        warnings.warn("Word-level timestamps on translations may not be reliable.", stacklevel=2)
    tokenizer = get_tokenizer(dims.is_multilingual, num_languages=dims.num_languages,
                              language=language, task=options.task)
    temperatures = (temperature,) if isinstance(temperature, (int, float)) else tuple(temperature)

    input_stride = N_FRAMES // dims.n_audio_ctx  # mel frames per audio position: 2
    time_precision = input_stride * HOP_LENGTH / SAMPLE_RATE  # seconds per timestamp step
    all_tokens: list[int] = []
    all_segments: list[dict] = []
    prompt_reset_since = 0
    initial_prompt_tokens: list[int] = []
    if initial_prompt is not None:
        initial_prompt_tokens = tokenizer.encode(" " + initial_prompt.strip())
        all_tokens.extend(initial_prompt_tokens)

    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm import tqdm

    clips = seek_clips(clip_timestamps, content_frames)
    clip_index, seek, last_speech_timestamp = 0, clips[0][0], 0.0
    # how much earlier text fits beside a carried initial prompt (openai-whisper's arithmetic)
    remaining_prompt_length = dims.n_text_ctx // 2 - 1 - len(initial_prompt_tokens)
    with tqdm(total=content_frames, unit="frames", disable=not progress) as bar:
        while clip_index < len(clips):
            clip_start, clip_end = clips[clip_index]
            seek = max(seek, clip_start)
            if seek >= clip_end:  # this clip is done: on to the next one
                clip_index += 1
                if clip_index < len(clips):
                    seek = clips[clip_index][0]
                continue
            time_offset = float(seek * HOP_LENGTH / SAMPLE_RATE)
            segment_size = min(N_FRAMES, content_frames - seek, clip_end - seek)
            mel_window = pad_or_trim(mel[:, seek : seek + segment_size], N_FRAMES)
            segment_duration = segment_size * HOP_LENGTH / SAMPLE_RATE
            if carry_initial_prompt:  # the initial prompt, then as much recent text as fits
                ignored = max(len(initial_prompt_tokens), prompt_reset_since)
                prompt = initial_prompt_tokens + all_tokens[ignored:][-remaining_prompt_length:]
            else:
                prompt = all_tokens[prompt_reset_since:]
            window_options = replace(options, prompt=prompt)
            result, features = _fallback_decode(model, mel_window, window_options, temperatures,
                                                compression_ratio_threshold, logprob_threshold,
                                                no_speech_threshold)
            tokens = np.array(result.tokens, dtype=np.int64)

            if no_speech_threshold is not None:
                should_skip = result.no_speech_prob > no_speech_threshold
                if logprob_threshold is not None and result.avg_logprob > logprob_threshold:
                    should_skip = False  # confident text despite a high no-speech probability
                if should_skip:
                    seek += segment_size
                    bar.update(segment_size)
                    continue

            previous_seek = seek
            current_segments, seek = split_segments(
                tokens, tokenizer, result, seek, segment_size, segment_duration, time_offset,
                time_precision, input_stride)

            if word_timestamps:
                add_word_timestamps(
                    segments=current_segments, model=model, tokenizer=tokenizer,
                    features=features, num_frames=segment_size,
                    alignment_heads=model.alignment_heads,
                    prepend_punctuations=prepend_punctuations,
                    append_punctuations=append_punctuations,
                    last_speech_timestamp=last_speech_timestamp)
                is_timestamp = tokens >= tokenizer.timestamp_begin
                single_timestamp_ending = is_timestamp[-2:].tolist() == [False, True]
                if not single_timestamp_ending:
                    last_word_end = _last_word_end(current_segments)
                    if last_word_end is not None and last_word_end > time_offset:
                        seek = round(last_word_end * FRAMES_PER_SECOND)
                if hallucination_silence_threshold is not None:
                    window = Window(time_offset, segment_size, previous_seek,
                                    content_frames, single_timestamp_ending)
                    seek, skip = skip_hallucinated_silence(
                        current_segments, seek, window, last_speech_timestamp,
                        hallucination_silence_threshold)
                    if skip:
                        bar.update(min(content_frames, seek) - previous_seek)
                        continue
                last_word_end = _last_word_end(current_segments)
                if last_word_end is not None:
                    last_speech_timestamp = last_word_end

            if verbose:
                for s in current_segments:
                    print(f"[{format_timestamp(s['start'])} --> {format_timestamp(s['end'])}] "
                          f"{s['text']}", file=sys.stderr)
            for segment in current_segments:
                if segment["start"] == segment["end"] or segment["text"].strip() == "":
                    segment["text"], segment["tokens"] = "", []
                    if word_timestamps:
                        segment["words"] = []
            all_segments.extend({"id": i, **s} for i, s in
                                enumerate(current_segments, start=len(all_segments)))
            all_tokens.extend(t for s in current_segments for t in s["tokens"])
            if not condition_on_previous_text or result.temperature > 0.5:
                prompt_reset_since = len(all_tokens)
            bar.update(min(content_frames, seek) - previous_seek)

    return {"text": tokenizer.decode(all_tokens[len(initial_prompt_tokens):]),
            "segments": all_segments, "language": language}


# faster-whisper's batched pipeline cuts speech at pauses of 160 ms into regions of at most 30 s
BATCHED_VAD = VadOptions(max_speech_duration_s=CHUNK_LENGTH, min_silence_duration_ms=160)


def speech_chunks(regions: list[dict], max_samples: int = N_SAMPLES) -> list[list[dict]]:
    """Consecutive speech regions merged into chunks of at most `max_samples` of speech."""
    chunks: list[list[dict]] = []
    length = 0
    for region in regions:
        size = region["end"] - region["start"]
        if not chunks or length + size > max_samples:
            chunks.append([])
            length = 0
        chunks[-1].append(region)
        length += size
    return chunks


def transcribe_batched(
    model,
    audio: str | Path | np.ndarray,
    *,
    batch_size: int = 8,
    beam_size: int | None = None,
    temperature: float | tuple[float, ...] = 0.0,
    without_timestamps: bool = False,
    initial_prompt: str | None = None,
    vad_options: VadOptions = BATCHED_VAD,
    word_timestamps: bool = False,
    prepend_punctuations: str = PREPEND_PUNCTUATIONS,
    append_punctuations: str = APPEND_PUNCTUATIONS,
    progress: bool | None = None,
    **decode_options,
) -> dict:
    """Long audio the way faster-whisper's `BatchedInferencePipeline` does it: Silero VAD finds
    the speech, consecutive regions are merged into chunks of up to 30 s, and `batch_size`
    chunks at a time are encoded and decoded together, each chunk alone (no conditioning on
    earlier text, one temperature: the first of a schedule). The batch's chunks are the rows of
    one decoder batch (greedy: a row each; beam search: `beam_size` rows each), each row
    attending to its own chunk. Segment times are the file's. Returns `transcribe`'s dict.
    A path is read in blocks (the VAD fed on the way) into an `AudioSpool`, and each chunk is
    read back when its batch comes: memory stays bounded however long the file is.
    With `word_timestamps`, each chunk's words are timed from its own window's cross-attention
    (as faster-whisper's pipeline does), then mapped to the file's time like the segments."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(audio, (str, Path)):  # read in blocks, the VAD fed on the way
        stream = SpeechProbabilities()
        probabilities: list[np.ndarray] = []
        spool = AudioSpool(audio, on_block=lambda block: probabilities.append(stream.feed(block)))
        probabilities.append(stream.finish())
        regions = speech_regions(np.concatenate(probabilities), spool.n_samples, vad_options)
        read = spool.read
    else:
        spool = None
        samples = np.asarray(audio, dtype=np.float32)
        if samples.size == 0:
            raise AudioError("audio contains no samples")
        regions = speech_timestamps(samples, vad_options)
        read = lambda start, stop: samples[start:stop]  # noqa: E731
    dims = model.dims
    if not isinstance(temperature, (int, float)):
        temperature = temperature[0]
    options = DecodingOptions(**decode_options, temperature=float(temperature),
                              beam_size=beam_size, without_timestamps=without_timestamps,
                              prompt=initial_prompt)
    if not dims.is_multilingual:
        options = replace(options, language="en")
    chunks = speech_chunks(regions)
    input_stride = N_FRAMES // dims.n_audio_ctx
    time_precision = input_stride * HOP_LENGTH / SAMPLE_RATE
    segments: list[dict] = []
    offset = 0.0  # where the next chunk starts in the speech-only timeline
    if progress is None:
        progress = sys.stderr.isatty()
    from tqdm import tqdm

    # the work: (speech-time offset, the chunk's regions or its samples), read when its batch
    # comes; a chunk whose text stops at a timestamp well before its end goes back in the
    # queue from that timestamp, as the seek loop would continue from there (faster-whisper's
    # pipeline drops that speech: 10.65 % WER on the 229-s clip with timestamps against 5.78 %
    # without)
    queue: list[tuple[float, list[dict] | np.ndarray]] = []
    for chunk in chunks:
        queue.append((offset, chunk))
        offset += sum(r["end"] - r["start"] for r in chunk) / SAMPLE_RATE
    bar = tqdm(total=round(offset, 1), unit="s", disable=not progress)
    word_ends: list[float] = []  # speech time where each worded segment ends, sorted
    while queue:
        batch = [(start, work if isinstance(work, np.ndarray) else
                  np.concatenate([read(r["start"], r["end"]) for r in work]))
                 for start, work in queue[:batch_size]]
        queue = queue[batch_size:]
        # each chunk's log-mel alone, as faster-whisper's feature extractor makes it
        mels = np.stack([pad_or_trim(log_mel_spectrogram(piece, dims.n_mels,
                                                         padding=HOP_LENGTH)[:, :-1], N_FRAMES)
                         for _, piece in batch])
        features = model.encode_windows(mels, reuse=True)  # overwrites the last batch's
        results = decode_batch(model, features, options)
        options = replace(options, language=results[0].language)  # detected once, then kept
        tokenizer = get_tokenizer(dims.is_multilingual, num_languages=dims.num_languages,
                                  language=options.language, task=options.task)
        for index, ((start, piece), result) in enumerate(zip(batch, results, strict=True)):
            duration = len(piece) / SAMPLE_RATE
            segment_size = int(np.ceil(duration)) * FRAMES_PER_SECOND
            chunk_segments, _ = split_segments(
                np.array(result.tokens, dtype=np.int64), tokenizer, result,
                round(start * FRAMES_PER_SECOND), segment_size, duration, start,
                time_precision, input_stride)
            if word_timestamps:
                # the speech before this chunk ends where the latest earlier word ends (a
                # leftover is decoded after later chunks, so "earlier" is by time, not order)
                before = bisect.bisect_right(word_ends, start)
                add_word_timestamps(
                    segments=chunk_segments, model=model, tokenizer=tokenizer,
                    features=features.window(index), num_frames=segment_size,
                    alignment_heads=model.alignment_heads,
                    prepend_punctuations=prepend_punctuations,
                    append_punctuations=append_punctuations,
                    last_speech_timestamp=word_ends[before - 1] if before else 0.0)
                for segment in chunk_segments:
                    if segment.get("words"):
                        bisect.insort(word_ends, segment["end"])
            segments.extend(s for s in chunk_segments if s["text"].strip())
            stop = _last_timestamp(result.tokens, tokenizer, time_precision)
            if stop is not None and MIN_LEFTOVER_S < duration - stop < duration:
                queue.append((start + stop, piece[round(stop * SAMPLE_RATE):]))
                bar.update(round(stop, 1))
            else:
                bar.update(round(duration, 1))
    bar.close()
    if spool is not None:
        spool.close()
    segments.sort(key=lambda s: s["start"])
    SpeechMap(regions).restore(segments)
    return {"text": "".join(s["text"] for s in segments),
            "segments": [{"id": i, **s} for i, s in enumerate(segments)],
            "language": options.language or ("en" if not dims.is_multilingual else None)}


MIN_LEFTOVER_S = 1.0  # a batched chunk's text ending earlier than this before its end is done


def _last_timestamp(tokens: list[int], tokenizer, time_precision: float) -> float | None:
    """Seconds of the last timestamp token in `tokens` (None: no timestamps)."""
    stamps = [t for t in tokens if t >= tokenizer.timestamp_begin]
    return (stamps[-1] - tokenizer.timestamp_begin) * time_precision if stamps else None


def seek_clips(clip_timestamps: str | list[float], content_frames: int) -> list[tuple[int, int]]:
    """(start, end) mel frames of the stretches to transcribe: "0" (the default) is the whole
    audio; an odd count of timestamps leaves the last stretch open to the end."""
    if isinstance(clip_timestamps, str):
        clip_timestamps = [float(t) for t in clip_timestamps.split(",") if t.strip()]
    points = [round(float(t) * FRAMES_PER_SECOND) for t in clip_timestamps] or [0]
    if len(points) % 2 == 1:
        points.append(content_frames)
    return list(zip(points[::2], points[1::2], strict=True))


def _last_word_end(segments: list[dict]) -> float | None:
    """The end of the last word (or of the last segment, if no segment has words)."""
    return next((w["end"] for s in reversed(segments) for w in reversed(s["words"])),
                segments[-1]["end"] if segments else None)


@dataclass(frozen=True)
class Window:
    """Where one 30-s window sits in the file (mel frames), for the hallucination checks."""

    time_offset: float
    segment_size: int
    previous_seek: int
    content_frames: int
    single_timestamp_ending: bool

    @property
    def end_time(self) -> float:
        return (self.previous_seek + N_FRAMES) * HOP_LENGTH / SAMPLE_RATE


def _word_anomaly(word: dict) -> float:
    """How implausible a word is: very improbable, very short or very long."""
    probability, duration = word.get("probability", 0.0), word["end"] - word["start"]
    score = 1.0 if probability < 0.15 else 0.0
    if duration < 0.133:
        score += (0.133 - duration) * 15
    if duration > 2.0:
        score += duration - 2.0
    return score


def _is_anomaly(segment: dict | None) -> bool:
    if segment is None or not segment["words"]:
        return False
    words = [w for w in segment["words"] if w["word"] not in PUNCTUATION][:8]
    score = sum(_word_anomaly(w) for w in words)
    return score >= 3 or score + 0.01 >= len(words)


def _next_with_words(segments: list[dict]) -> dict | None:
    return next((s for s in segments if s["words"]), None)


def skip_hallucinated_silence(segments: list[dict], seek: int, window: Window,
                              last_speech_timestamp: float, threshold: float
                              ) -> tuple[int, bool]:
    """openai-whisper's `hallucination_silence_threshold`: around a run of implausible words
    with silence on both sides, drop them and seek past the silence. May shorten `segments`;
    returns the new seek and whether the whole window is to be dropped."""
    frames_per_second = FRAMES_PER_SECOND
    if not window.single_timestamp_ending:
        last_word_end = _last_word_end(segments)
        if last_word_end is not None and last_word_end > window.time_offset:
            if window.end_time - last_word_end > threshold:
                seek = round(last_word_end * frames_per_second)
            else:
                seek = window.previous_seek + window.segment_size

    first = _next_with_words(segments)  # a leading hallucination: skip the silence before it
    if first is not None and _is_anomaly(first):
        gap = first["start"] - window.time_offset
        if gap > threshold:
            return window.previous_seek + round(gap * frames_per_second), True

    last_end = last_speech_timestamp
    segment_duration = window.segment_size * HOP_LENGTH / SAMPLE_RATE
    content_duration = window.content_frames * HOP_LENGTH / SAMPLE_RATE
    for index, segment in enumerate(segments):
        if not segment["words"]:
            continue
        if _is_anomaly(segment):
            following = _next_with_words(segments[index + 1:])
            next_start = (following["words"][0]["start"] if following is not None
                          else window.time_offset + segment_duration)
            silence_before = (segment["start"] - last_end > threshold
                              or segment["start"] < threshold
                              or segment["start"] - window.time_offset < 2.0)
            silence_after = (next_start - segment["end"] > threshold or _is_anomaly(following)
                             or window.end_time - segment["end"] < 2.0)
            if silence_before and silence_after:
                seek = round(max(window.time_offset + 1, segment["start"]) * frames_per_second)
                if content_duration - segment["end"] < threshold:
                    seek = window.content_frames
                del segments[index:]
                break
        last_end = segment["end"]
    return seek, False


def split_segments(tokens: np.ndarray, tokenizer, result: DecodingResult, seek: int,
                   segment_size: int, segment_duration: float, time_offset: float,
                   time_precision: float, input_stride: int) -> tuple[list[dict], int]:
    """Cut a window's tokens into segments at consecutive timestamps; return them and the new seek."""
    begin = tokenizer.timestamp_begin

    def segment(start: float, end: float, seg_tokens: np.ndarray) -> dict:
        ids = seg_tokens.tolist()
        return {"seek": seek, "start": start, "end": end,
                "text": tokenizer.decode([t for t in ids if t < tokenizer.eot]), "tokens": ids,
                "temperature": result.temperature, "avg_logprob": result.avg_logprob,
                "compression_ratio": result.compression_ratio,
                "no_speech_prob": result.no_speech_prob}

    is_timestamp = tokens >= begin
    single_timestamp_ending = is_timestamp[-2:].tolist() == [False, True]
    consecutive = (np.nonzero(is_timestamp[:-1] & is_timestamp[1:])[0] + 1).tolist()
    segments = []
    if consecutive:
        slices = consecutive + ([len(tokens)] if single_timestamp_ending else [])
        last_slice = 0
        for current in slices:
            piece = tokens[last_slice:current]
            segments.append(segment(time_offset + (int(piece[0]) - begin) * time_precision,
                                    time_offset + (int(piece[-1]) - begin) * time_precision,
                                    piece))
            last_slice = current
        if single_timestamp_ending:
            seek += segment_size
        else:
            seek += (int(tokens[last_slice - 1]) - begin) * input_stride
    else:
        duration = segment_duration
        timestamps = tokens[is_timestamp]
        if len(timestamps) > 0 and int(timestamps[-1]) != begin:
            duration = (int(timestamps[-1]) - begin) * time_precision
        segments.append(segment(time_offset, time_offset + duration, tokens))
        seek += segment_size
    return segments, seek


def format_timestamp(seconds: float, always_include_hours: bool = False,
                     decimal_marker: str = ".") -> str:
    milliseconds = round(seconds * 1000.0)
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    secs, milliseconds = divmod(milliseconds, 1_000)
    hours_marker = f"{hours:02d}:" if always_include_hours or hours > 0 else ""
    return f"{hours_marker}{minutes:02d}:{secs:02d}{decimal_marker}{milliseconds:03d}"


__all__ = ["transcribe", "transcribe_batched", "format_timestamp", "FRAMES_PER_SECOND"]
