"""Word-level timestamps: when each word of a window's text was said, from cross-attention.

openai-whisper's method, step for step, in numpy: the decoder is run once more over the
window's text (the MAX alignment graph, which also returns every layer's cross-attention
weights); the checkpoint's alignment heads' weights over the window's audio frames are
normalised per frame, median-filtered along time, averaged over the heads, and dynamic time
warping (DTW) finds the monotonic path of text tokens through audio frames. A word starts
where the path first reaches its first token. Punctuation is merged into neighbouring words and
words at sentence and segment boundaries are kept from stretching over pauses, as openai-whisper
does, so the same alignment gives the same times.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from .audio import HOP_LENGTH, SAMPLE_RATE
from .tokenizer import Tokenizer

TOKENS_PER_SECOND = SAMPLE_RATE / (2 * HOP_LENGTH)  # audio positions per second: 50
PREPEND_PUNCTUATIONS = "\"'“¿([{-"
APPEND_PUNCTUATIONS = "\"'.。,，!！?？:：”)]}、"
SENTENCE_END_MARKS = ".。!！?？"


@dataclass
class WordTiming:
    word: str
    tokens: list[int]
    start: float
    end: float
    probability: float


def median_filter(x: np.ndarray, width: int) -> np.ndarray:
    """Median over a sliding window of odd `width` along the last axis, reflect-padded
    (torch's F.pad(mode="reflect") then unfold + sort, as openai-whisper)."""
    if width <= 0 or width % 2 == 0:
        raise ValueError("the median filter's width must be a positive odd number")
    pad = width // 2
    if x.shape[-1] <= pad:  # reflect padding needs more frames than that
        return x
    padded = np.pad(x, [(0, 0)] * (x.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.sort(windows, axis=-1)[..., pad]


def dtw(cost_matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lowest-cost monotonic path through `cost_matrix` (N text tokens x M frames) from
    (0, 0) to (N-1, M-1); returns (text indices, time indices) along it.

    Anti-diagonals are computed as vectors (a cell needs only the two diagonals before it),
    with openai-whisper's float32 cost table and its tie-breaking (diagonal, then up, then
    left), so the path is the same."""
    n, m = cost_matrix.shape
    x = cost_matrix.astype(np.float64)
    cost = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    cost[0, 0] = 0
    for diagonal in range(2, n + m + 1):  # cells with i + j == diagonal, i in 1..n, j in 1..m
        i = np.arange(max(1, diagonal - m), min(n, diagonal - 1) + 1)
        j = diagonal - i
        c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
        choice = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        best = np.choose(choice, [c0, c1, c2])
        cost[i, j] = (x[i - 1, j - 1] + best.astype(np.float64)).astype(np.float32)
        trace[i, j] = choice
    return _backtrace(trace)


def _backtrace(trace: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    i, j = trace.shape[0] - 1, trace.shape[1] - 1
    trace[0, :] = 2
    trace[:, 0] = 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        elif step == 2:
            j -= 1
        else:
            raise ValueError("DTW trace has an unreachable cell")
    steps = np.array(path[::-1]).T
    return steps[0], steps[1]


@dataclass
class Alignment:
    """What DTW worked on and found for one window's text: the heads' normalised, filtered
    and averaged attention (text tokens + 1, frames), the path through it, and each text
    token's probability."""

    matrix: np.ndarray
    text_indices: np.ndarray
    time_indices: np.ndarray
    token_probs: np.ndarray


def align(model, tokenizer: Tokenizer, text_tokens: list[int], features, num_frames: int,
          alignment_heads: np.ndarray, medfilt_width: int = 7, qk_scale: float = 1.0
          ) -> Alignment:
    """Run the alignment graph over the window's text and find the DTW path (openai-whisper's
    `find_alignment` up to the path). `model.cross_attention` runs the graph; `features` are
    the window's encoder output; `num_frames` its mel frames that hold audio."""
    tokens = [*tokenizer.sot_sequence, tokenizer.no_timestamps, *text_tokens, tokenizer.eot]
    logits, cross_weights = model.cross_attention(np.array([tokens]), features)
    first = len(tokenizer.sot_sequence)
    sampled = logits[0, first:, : tokenizer.eot].astype(np.float64)
    probs = np.exp(sampled - sampled.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    token_probs = probs[np.arange(len(text_tokens)), text_tokens]

    # (heads, tokens, frames): the graph's weights are softmaxed over all 1500 positions;
    # openai-whisper softmaxes the scores over the audio's frames only, which is the same as
    # renormalising the weights over them (qk_scale 1: the scores as the model computed them)
    frames = num_frames // 2
    weights = np.stack([cross_weights[layer, 0, head] for layer, head in alignment_heads])
    weights = weights[:, :, :frames].astype(np.float64)
    if qk_scale != 1.0:
        weights = np.log(np.maximum(weights, np.finfo(np.float64).tiny)) * qk_scale
        weights = np.exp(weights - weights.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    weights = weights.astype(np.float32)
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True)
    weights = median_filter((weights - mean) / std, medfilt_width)
    matrix = weights.mean(axis=0)[first:-1]
    text_indices, time_indices = dtw(-matrix)
    return Alignment(matrix, text_indices, time_indices, token_probs)


def find_alignment(model, tokenizer: Tokenizer, text_tokens: list[int], features,
                   num_frames: int, alignment_heads: np.ndarray, **kwargs) -> list[WordTiming]:
    """Words of `text_tokens` with start and end times (seconds from the window's start) and
    their mean token probability: a word starts where the DTW path first reaches its first
    token."""
    if not text_tokens:
        return []
    found = align(model, tokenizer, text_tokens, features, num_frames, alignment_heads, **kwargs)
    words, word_tokens = tokenizer.split_to_word_tokens(text_tokens + [tokenizer.eot])
    if len(word_tokens) <= 1:  # only end-of-text
        return []
    boundaries = np.pad(np.cumsum([len(t) for t in word_tokens[:-1]]), (1, 0))
    jumps = np.pad(np.diff(found.text_indices), (1, 0), constant_values=1).astype(bool)
    jump_times = found.time_indices[jumps] / TOKENS_PER_SECOND
    starts, ends = jump_times[boundaries[:-1]], jump_times[boundaries[1:]]
    probabilities = [float(np.mean(found.token_probs[i:j]))
                     for i, j in zip(boundaries[:-1], boundaries[1:], strict=True)]
    return [WordTiming(word, list(toks), float(start), float(end), probability)
            for word, toks, start, end, probability
            in zip(words, word_tokens, starts, ends, probabilities, strict=False)]


def merge_punctuations(alignment: list[WordTiming], prepended: str, appended: str) -> None:
    """Opening punctuation joins the word after it, closing punctuation the word before it."""
    i, j = len(alignment) - 2, len(alignment) - 1
    while i >= 0:
        previous, following = alignment[i], alignment[j]
        if previous.word.startswith(" ") and previous.word.strip() in prepended:
            following.word = previous.word + following.word
            following.tokens = previous.tokens + following.tokens
            previous.word, previous.tokens = "", []
        else:
            j = i
        i -= 1
    i, j = 0, 1
    while j < len(alignment):
        previous, following = alignment[i], alignment[j]
        if not previous.word.endswith(" ") and following.word in appended:
            previous.word = previous.word + following.word
            previous.tokens = previous.tokens + following.tokens
            following.word, following.tokens = "", []
        else:
            i = j
        j += 1


def add_word_timestamps(*, segments: list[dict], model, tokenizer: Tokenizer, features,
                        num_frames: int, alignment_heads: np.ndarray,
                        last_speech_timestamp: float,
                        prepend_punctuations: str = PREPEND_PUNCTUATIONS,
                        append_punctuations: str = APPEND_PUNCTUATIONS, **kwargs) -> None:
    """Give every segment of one window its `words` (word, start, end, probability), and
    pull segment starts and ends to the first and last word, as openai-whisper does."""
    if not segments:
        return
    text_tokens_per_segment = [[t for t in s["tokens"] if t < tokenizer.eot] for s in segments]
    text_tokens = list(itertools.chain.from_iterable(text_tokens_per_segment))
    alignment = find_alignment(model, tokenizer, text_tokens, features, num_frames,
                               alignment_heads, **kwargs)
    durations = np.array([t.end - t.start for t in alignment])
    durations = durations[durations.nonzero()]
    median_duration = min(0.7, float(np.median(durations)) if len(durations) else 0.0)
    max_duration = median_duration * 2

    # words at sentence boundaries may not be longer than twice the median word
    if len(durations):
        for i in range(1, len(alignment)):
            if alignment[i].end - alignment[i].start > max_duration:
                if alignment[i].word in SENTENCE_END_MARKS:
                    alignment[i].end = alignment[i].start + max_duration
                elif alignment[i - 1].word in SENTENCE_END_MARKS:
                    alignment[i].start = alignment[i].end - max_duration

    merge_punctuations(alignment, prepend_punctuations, append_punctuations)
    time_offset = segments[0]["seek"] * HOP_LENGTH / SAMPLE_RATE
    word_index = 0
    for segment, tokens in zip(segments, text_tokens_per_segment, strict=True):
        saved_tokens, words = 0, []
        while word_index < len(alignment) and saved_tokens < len(tokens):
            timing = alignment[word_index]
            if timing.word:
                words.append({"word": timing.word, "start": round(time_offset + timing.start, 2),
                              "end": round(time_offset + timing.end, 2),
                              "probability": timing.probability})
            saved_tokens += len(timing.tokens)
            word_index += 1
        if words:
            _fit_segment_to_words(segment, words, last_speech_timestamp, median_duration,
                                  max_duration)
            last_speech_timestamp = segment["end"]
        segment["words"] = words


def _fit_segment_to_words(segment: dict, words: list[dict], last_speech_timestamp: float,
                          median_duration: float, max_duration: float) -> None:
    """The first and second word after a pause may not stretch over it; the segment's start
    and end move to its words unless a word is implausibly long."""
    first_too_long = (words[0]["end"] - words[0]["start"] > max_duration
                      or (len(words) > 1 and words[1]["end"] - words[0]["start"] > max_duration * 2))
    if words[0]["end"] - last_speech_timestamp > median_duration * 4 and first_too_long:
        if len(words) > 1 and words[1]["end"] - words[1]["start"] > max_duration:
            boundary = max(words[1]["end"] / 2, words[1]["end"] - max_duration)
            words[0]["end"] = words[1]["start"] = boundary
        words[0]["start"] = max(0, words[0]["end"] - max_duration)

    if segment["start"] < words[0]["end"] and segment["start"] - 0.5 > words[0]["start"]:
        words[0]["start"] = max(0, min(words[0]["end"] - median_duration, segment["start"]))
    else:
        segment["start"] = words[0]["start"]

    if segment["end"] > words[-1]["start"] and segment["end"] + 0.5 < words[-1]["end"]:
        words[-1]["end"] = max(words[-1]["start"] + median_duration, segment["end"])
    else:
        segment["end"] = words[-1]["end"]
