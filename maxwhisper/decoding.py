"""Whisper's decoding rules for one 30-s window, in numpy, independent of the engine.

Mirrors `whisper.decoding` so that, given the same logits, the same tokens come out: the
start-of-transcript sequence, suppress-blank and the suppress-tokens set, the timestamp rules,
greedy and beam search (Whisper's candidate scoring, patience and ranking), the no-speech
probability and the compression ratio used for temperature fallback.

The engine is anything with `encode(mel) -> features`, `new_cache(batch)` and
`decode_step(tokens, features, cache) -> logits (B, S, V)`, where the B rows (beams or samples) share
one window's features; `cache.repeated(B)` turns the one-row cache of the shared prompt into B
rows, `cache.reorder(rows)` follows the beams that were kept and `cache.rewind(n)` forgets the
last n tokens (a guess that was not taken).
`MaxWhisperModel` is the one this package runs.
"""

from __future__ import annotations

import gzip
import statistics
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .audio import CHUNK_LENGTH
from .settings import text_guess_setting, timestamp_guess_allowed
from .tokenizer import Tokenizer, get_tokenizer


class WhisperEngine(Protocol):
    dims: object

    def encode(self, mel: np.ndarray): ...
    def new_cache(self, batch: int): ...
    def decode_step(self, tokens: np.ndarray, features, cache,
               positions: list[int] | None = None) -> np.ndarray: ...


@dataclass(frozen=True)
class DecodingOptions:
    """What to decode and how; defaults and meaning as in openai-whisper."""

    task: str = "transcribe"  # or "translate" (X -> English)
    language: str | None = None  # None: detect it (multilingual models)
    temperature: float = 0.0  # 0: greedy or beam search; > 0: sampling
    sample_len: int | None = None  # most tokens to sample; default n_text_ctx // 2 = 224
    best_of: int | None = None  # independent samples when temperature > 0
    beam_size: int | None = None  # beams when temperature == 0; None: greedy
    patience: float | None = None  # finished candidates to wait for = beam_size * patience
    length_penalty: float | None = None  # None: rank by logprob / length; else Google NMT alpha
    prompt: str | list[int] | None = None  # previous text, to condition on
    prefix: str | list[int] | None = None  # forced start of this window's text
    suppress_tokens: str | list[int] | None = "-1"  # "-1": the non-speech symbol set
    suppress_blank: bool = True  # no blank or end-of-text as the first sampled token
    without_timestamps: bool = False  # <|notimestamps|>: text tokens only
    max_initial_timestamp: float | None = 1.0  # the first timestamp is at most this (seconds)
    seed: int = 0  # random generator seed for temperature > 0
    fp16: bool = True  # openai-whisper's; accepted and ignored (the model's dtype decides)


@dataclass
class DecodingResult:
    language: str
    tokens: list[int] = field(default_factory=list)
    text: str = ""
    avg_logprob: float = float("nan")
    no_speech_prob: float = float("nan")
    temperature: float = float("nan")
    compression_ratio: float = float("nan")
    language_probs: dict[str, float] | None = None


def compression_ratio(text: str) -> float:
    """How well gzip compresses `text`; above 2.4 Whisper treats the output as a repetition loop."""
    data = text.encode("utf-8")
    return len(data) / len(gzip.compress(data)) if data else 0.0


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    shifted = x - x.max(axis=-1, keepdims=True)  # a new array: the normaliser comes off in place
    shifted -= np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    return shifted


def logsumexp_rows(x: np.ndarray) -> np.ndarray:
    """log(sum(exp(row))) of each row of a 2-D array, shifted by the row's maximum (-inf for a
    row of -inf)."""
    top = x.max(axis=1)
    finite = top > -np.inf
    totals = np.full(len(x), -np.inf)
    shifted = x[finite] - top[finite, None]
    totals[finite] = top[finite] + np.log(np.sum(np.exp(shifted), axis=1))
    return totals


# --------------------------------------------------------------------------------------------
# Logit filters: each masks logits (B, V) in place given the tokens so far (B, T)
# --------------------------------------------------------------------------------------------


@dataclass
class SuppressBlank:
    """At the first sampled position, forbid a blank (' ') and end-of-text."""

    tokenizer: Tokenizer
    sample_begin: int

    def __post_init__(self) -> None:
        self.blank = self.tokenizer.encode(" ") + [self.tokenizer.eot]

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        if tokens.shape[1] == self.sample_begin:
            logits[:, self.blank] = -np.inf


@dataclass
class SuppressTokens:
    suppress: list[int]

    def __post_init__(self) -> None:
        self._columns = np.array(self.suppress, dtype=np.int64)  # not a list to convert each step

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        logits[:, self._columns] = -np.inf


@dataclass
class ApplyTimestampRules:
    """Timestamps come in pairs and never decrease; the first is at most max_initial; a
    timestamp is forced when the timestamps' total probability beats every text token."""

    tokenizer: Tokenizer
    sample_begin: int
    max_initial_timestamp_index: int | None

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        tk = self.tokenizer
        begin = tk.timestamp_begin
        logits[:, tk.no_timestamps] = -np.inf
        for k in range(tokens.shape[0]):
            sampled = tokens[k, self.sample_begin :]
            last_was_timestamp = len(sampled) >= 1 and sampled[-1] >= begin
            penultimate_was_timestamp = len(sampled) < 2 or sampled[-2] >= begin
            if last_was_timestamp:
                if penultimate_was_timestamp:  # a pair just closed: text must follow
                    logits[k, begin:] = -np.inf
                else:  # an open pair: another timestamp (or end of text) must follow
                    logits[k, : tk.eot] = -np.inf
            timestamps = sampled[sampled >= begin]
            if timestamps.size > 0:
                # no going back in time; and a segment must have non-zero length
                if last_was_timestamp and not penultimate_was_timestamp:
                    last = timestamps[-1]
                else:
                    last = timestamps[-1] + 1
                logits[k, begin:last] = -np.inf

        if tokens.shape[1] == self.sample_begin:
            logits[:, :begin] = -np.inf  # the text starts with a timestamp
            if self.max_initial_timestamp_index is not None:
                logits[:, begin + self.max_initial_timestamp_index + 1 :] = -np.inf

        # Whisper compares log-probabilities: the timestamps' total against the best text
        # token. Both sides carry the same normaliser, so the raw logits decide it alike (in
        # float64, no less exact than float32 log-probabilities), without a softmax over the
        # whole vocabulary each step; all rows at once (each row's sum the same bits as the
        # row's alone, tested).
        logits[timestamp_forced(logits[:, begin:], logits[:, :begin].max(1)), :begin] = -np.inf


def timestamp_forced(timestamp_logits: np.ndarray, best_text: np.ndarray) -> np.ndarray:
    """Rows whose timestamps' logsumexp (float64) beats their best text logit. The sum lies
    between the row's largest timestamp logit and that plus log(number of timestamps), so
    most rows are decided by those bounds alone; the float64 sum runs only for rows the
    bounds leave open, and decides them as it always did."""
    top = timestamp_logits.max(axis=1).astype(np.float64)
    best = best_text.astype(np.float64)
    forced = top > best  # the sum is at least its largest term
    # ... and at most log(n) more (a margin for the float64 sum's own rounding)
    open_rows = ~forced & (top + np.log(timestamp_logits.shape[1]) + 1e-6 > best)
    if open_rows.any():
        totals = logsumexp_rows(timestamp_logits[open_rows].astype(np.float64))
        forced[open_rows] = totals > best[open_rows]
    return forced


# --------------------------------------------------------------------------------------------
# Token selection
# --------------------------------------------------------------------------------------------


class GreedyDecoder:
    """Argmax at temperature 0; otherwise sample from softmax(logits / T)."""

    def __init__(self, temperature: float, eot: int, seed: int = 0):
        self.temperature, self.eot = temperature, eot
        self.rng = np.random.default_rng(seed)

    def update(self, tokens, logits, sum_logprobs, cache) -> tuple[np.ndarray, bool]:
        if self.temperature == 0:
            next_tokens = logits.argmax(axis=-1)
        else:
            probs = np.exp(log_softmax(logits / self.temperature).astype(np.float64))
            next_tokens = np.array([self.rng.choice(p.size, p=p / p.sum()) for p in probs])
        logprobs = log_softmax(logits)
        current = logprobs[np.arange(len(next_tokens)), next_tokens]
        sum_logprobs += current * (tokens[:, -1] != self.eot)
        next_tokens[tokens[:, -1] == self.eot] = self.eot
        tokens = np.concatenate([tokens, next_tokens[:, None]], axis=-1)
        return tokens, bool((tokens[:, -1] == self.eot).all())

    def finalize(self, tokens, sum_logprobs) -> tuple[list[list[np.ndarray]], list[list[float]]]:
        tokens = np.pad(tokens, ((0, 0), (0, 1)), constant_values=self.eot)
        return [list(tokens)], [sum_logprobs.tolist()]


TOP_K_BLOCK = 1024  # values per block in `_top_k_rows`'s first pass


def _top_k_rows(values: np.ndarray, k: int) -> np.ndarray:
    """(R, V) -> (R, k): each row's indices of its k largest values, largest first, ties in
    index order, in two cheap passes over all rows at once instead of a partition of all 51,865
    logits per beam per step (numpy's introselect takes ~0.5 ms, and ~7 ms when the timestamp
    rule has masked ~50,000 of them to -inf).

    The k-th largest of a row's block maxima is a lower bound of its k-th largest value (k
    blocks hold a value at least that large), so every top-k value is among those at or
    above it: usually a handful, which are sorted (stably, so ties keep index order). When
    fewer than k blocks hold a finite value, the bound is -inf and the finite values are the
    candidates."""
    rows, size = values.shape
    full = size // TOP_K_BLOCK
    block_max = values[:, : full * TOP_K_BLOCK].reshape(rows, full, TOP_K_BLOCK).max(axis=2)
    if size > full * TOP_K_BLOCK:  # the last, shorter block
        tail = values[:, full * TOP_K_BLOCK :].max(axis=1, keepdims=True)
        block_max = np.concatenate([block_max, tail], axis=1)
    blocks = block_max.shape[1]
    if blocks > k:
        bound = np.partition(block_max, blocks - k, axis=1)[:, blocks - k]
    else:
        bound = np.full(rows, -np.inf, dtype=values.dtype)
    top = np.empty((rows, k), dtype=np.int64)
    for r in range(rows):
        row, low = values[r], bound[r]
        # at or above the bound; above it where the bound is -inf (only the finite values)
        candidates = np.flatnonzero(row > low if low == -np.inf else row >= low)
        if candidates.size < k:  # fewer than k finite values: the -inf ones by index order
            candidates = np.arange(size)
        top[r] = candidates[np.argsort(-row[candidates], kind="stable")[:k]]
    return top


class BeamSearchDecoder:
    """Whisper's beam search over one window: beam_size live beams, each extended by its
    beam_size + 1 best tokens; finished candidates are collected until there are
    round(beam_size * patience) of them."""

    def __init__(self, beam_size: int, eot: int, patience: float | None = None):
        self.beam_size, self.eot = beam_size, eot
        self.max_candidates = round(beam_size * (patience or 1.0))
        if self.max_candidates <= 0:
            raise ValueError(f"invalid beam size ({beam_size}) or patience ({patience})")
        self.finished: dict[tuple[int, ...], float] = {}

    def update(self, tokens, logits, sum_logprobs, cache) -> tuple[np.ndarray, bool]:
        logprobs = log_softmax(logits)
        tops = _top_k_rows(logprobs, self.beam_size + 1)
        rows = np.arange(self.beam_size)[:, None]
        totals = (sum_logprobs[:, None] + logprobs[rows, tops]).tolist()  # float32 sums
        # Whisper keys each candidate by its whole sequence, so that beams which are copies of
        # each other (all of them at the first step) yield each extension once, scored and
        # sourced by the last beam that made it. Equal prefixes are found once a beam (one
        # hash of the prefix) and a candidate is (prefix, token): the same keys, in the same
        # insertion order, without building a tuple of the whole sequence per candidate.
        prefixes: dict[tuple[int, ...], int] = {}
        scores: dict[tuple[int, int], float] = {}
        sources: dict[tuple[int, int], int] = {}
        for j, (row_tops, row_totals) in enumerate(zip(tops.tolist(), totals, strict=True)):
            prefix = prefixes.setdefault(tuple(tokens[j].tolist()), j)
            for token, total in zip(row_tops, row_totals, strict=True):
                scores[prefix, token] = total
                sources[prefix, token] = j
        kept, newly_finished = [], {}
        for candidate in sorted(scores, key=scores.get, reverse=True):
            if candidate[1] == self.eot:
                newly_finished[candidate] = scores[candidate]
            else:
                sum_logprobs[len(kept)] = scores[candidate]
                kept.append(candidate)
                if len(kept) == self.beam_size:
                    break
        source_rows = np.array([sources[candidate] for candidate in kept])
        cache.reorder(source_rows)
        for candidate in sorted(newly_finished, key=newly_finished.get, reverse=True):
            if len(self.finished) >= self.max_candidates:
                break
            prefix, token = candidate
            self.finished[tuple(tokens[prefix].tolist()) + (token,)] = newly_finished[candidate]
        next_tokens = np.array([token for _, token in kept], dtype=tokens.dtype)
        return np.concatenate([tokens[source_rows], next_tokens[:, None]], axis=1), \
            len(self.finished) >= self.max_candidates

    def finalize(self, tokens, sum_logprobs) -> tuple[list[list[np.ndarray]], list[list[float]]]:
        if len(self.finished) < self.beam_size:  # not enough finished: add the live beams
            for j in np.argsort(sum_logprobs)[::-1]:
                self.finished[tuple(tokens[j].tolist() + [self.eot])] = float(sum_logprobs[j])
                if len(self.finished) >= self.beam_size:
                    break
        return ([[np.array(s) for s in self.finished]], [list(self.finished.values())])


class _Reorder:
    """Stands in for the cache while one window's beams are updated: keeps the rows it asks for."""

    rows: np.ndarray

    def reorder(self, source_rows: np.ndarray) -> None:
        self.rows = source_rows


class WindowsBeamSearch:
    """Beam search over G windows decoded together: rows g*beam_size ... (g+1)*beam_size - 1
    are window g's beams, each window searched by its own `BeamSearchDecoder`, and one reorder
    of the shared cache follows all of them. A window that has its candidates stops there (its
    tokens and scores kept as they were, its rows riding along on <|endoftext|>), so each
    window's result is the one `decode` gives it alone."""

    def __init__(self, windows: int, beam_size: int, eot: int, patience: float | None = None):
        self.windows = [BeamSearchDecoder(beam_size, eot, patience) for _ in range(windows)]
        self.beam_size, self.eot = beam_size, eot
        self.done: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # window -> tokens, scores

    def update(self, tokens, logits, sum_logprobs, cache) -> tuple[np.ndarray, bool]:
        beams, parts, sources = self.beam_size, [], []
        for g, window in enumerate(self.windows):
            rows = slice(g * beams, (g + 1) * beams)
            if g in self.done:
                parts.append(np.pad(tokens[rows], ((0, 0), (0, 1)), constant_values=self.eot))
                sources.append(np.arange(rows.start, rows.stop))
                continue
            kept = _Reorder()  # sum_logprobs[rows] is a view: the window's scores update in place
            window_tokens, completed = window.update(tokens[rows], logits[rows],
                                                     sum_logprobs[rows], kept)
            parts.append(window_tokens)
            sources.append(rows.start + kept.rows)
            if completed:
                self.done[g] = (window_tokens, sum_logprobs[rows].copy())
        cache.reorder(np.concatenate(sources))
        return np.concatenate(parts), len(self.done) == len(self.windows)

    def finalize(self, tokens, sum_logprobs) -> tuple[list[list[np.ndarray]], list[list[float]]]:
        """Each window's candidates and their scores (lists of G)."""
        beams, candidates, scores = self.beam_size, [], []
        for g, window in enumerate(self.windows):
            rows = slice(g * beams, (g + 1) * beams)
            window_tokens, window_scores = self.done.get(g, (tokens[rows], sum_logprobs[rows]))
            found, found_scores = window.finalize(window_tokens, window_scores)
            candidates.append(found[0])
            scores.append(found_scores[0])
        return candidates, scores


def rank(tokens: list[list[int]], sum_logprobs: list[float], length_penalty: float | None) -> int:
    """Index of the best candidate: highest log-probability per (penalised) length."""
    scores = []
    for sequence, logprob in zip(tokens, sum_logprobs, strict=True):
        length = len(sequence)
        penalty = length if length_penalty is None else ((5 + length) / 6) ** length_penalty
        scores.append(logprob / penalty)
    return int(np.argmax(scores))


# --------------------------------------------------------------------------------------------
# One window
# --------------------------------------------------------------------------------------------


def suppress_token_ids(tokenizer: Tokenizer, suppress_tokens) -> list[int]:
    if isinstance(suppress_tokens, str):
        suppress_tokens = [int(t) for t in suppress_tokens.split(",") if t.strip()]
    suppress = list(suppress_tokens or [])
    if -1 in suppress:
        suppress = [t for t in suppress if t >= 0] + list(tokenizer.non_speech_tokens)
    elif not suppress:
        return []
    suppress += [tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev,
                 tokenizer.sot_lm, tokenizer.no_speech]
    return sorted(set(suppress))


def detect_language(model: WhisperEngine, features, tokenizer: Tokenizer
                    ) -> tuple[str, dict[str, float]]:
    """The most likely language token after <|startoftranscript|>, and every language's probability."""
    logits = model.decode_step(np.array([[tokenizer.sot]]), features, model.new_cache(1),
                               [0])[0, 0]
    language_tokens = np.array(tokenizer.all_language_tokens)
    language_logits = logits[language_tokens].astype(np.float64)
    probs = np.exp(language_logits - language_logits.max())
    probs /= probs.sum()
    by_code = dict(zip(tokenizer.all_language_codes, probs.tolist(), strict=True))
    return tokenizer.all_language_codes[int(np.argmax(language_logits))], by_code


def initial_tokens(tokenizer: Tokenizer, options: DecodingOptions, n_ctx: int,
                   sample_len: int) -> list[int]:
    """[<|startofprev|> prompt...] sot [language task] [<|notimestamps|>] [prefix...]"""
    tokens = list(tokenizer.sot_sequence_including_notimestamps if options.without_timestamps
                  else tokenizer.sot_sequence)
    if options.prefix:
        prefix = options.prefix
        prefix_tokens = tokenizer.encode(" " + prefix.strip()) if isinstance(prefix, str) else prefix
        tokens += list(prefix_tokens)[-(n_ctx // 2 - sample_len):]  # [-0:] keeps all, as Whisper
    if options.prompt:
        prompt = options.prompt
        prompt_tokens = tokenizer.encode(" " + prompt.strip()) if isinstance(prompt, str) else prompt
        tokens = [tokenizer.sot_prev] + list(prompt_tokens)[-(n_ctx // 2 - 1):] + tokens
    return tokens


@dataclass(frozen=True)
class DecodingSetup:
    """What decoding a window under `options` needs before the first step: the language, the
    tokenizer, the prompt and the logit filters (one window or a batch alike)."""

    language: str
    language_probs: dict | None
    tokenizer: Tokenizer
    initial: list[int]  # the prompt: [<|startofprev|> ...] <|startoftranscript|> ...
    sample_begin: int  # where the sampled tokens start
    sot_index: int  # where <|startoftranscript|> is (its logits give the no-speech probability)
    sample_len: int
    filters: list


def decoding_setup(model: WhisperEngine, options: DecodingOptions, features) -> DecodingSetup:
    dims = model.dims
    if options.beam_size is not None and options.best_of is not None:
        raise ValueError("beam_size and best_of can't be given together")
    if options.temperature == 0 and options.best_of is not None:
        raise ValueError("best_of with greedy sampling (T=0) is not compatible")
    if options.patience is not None and options.beam_size is None:
        raise ValueError("patience requires beam_size to be given")
    language, language_probs = options.language or "en", None
    if dims.is_multilingual and options.language is None:
        probe = get_tokenizer(True, num_languages=dims.num_languages)
        language, language_probs = detect_language(model, features, probe)
    tokenizer = get_tokenizer(dims.is_multilingual, num_languages=dims.num_languages,
                              language=language, task=options.task)

    n_ctx = dims.n_text_ctx
    sample_len = options.sample_len or n_ctx // 2
    initial = initial_tokens(tokenizer, options, n_ctx, sample_len)
    sample_begin = len(initial)

    filters: list = []
    if options.suppress_blank:
        filters.append(SuppressBlank(tokenizer, sample_begin))
    suppress = suppress_token_ids(tokenizer, options.suppress_tokens)
    if suppress:
        filters.append(SuppressTokens(suppress))
    if not options.without_timestamps:
        precision = CHUNK_LENGTH / dims.n_audio_ctx
        max_initial = (round(options.max_initial_timestamp / precision)
                       if options.max_initial_timestamp else None)
        filters.append(ApplyTimestampRules(tokenizer, sample_begin, max_initial))
    return DecodingSetup(language, language_probs, tokenizer, initial, sample_begin,
                         initial.index(tokenizer.sot), sample_len, filters)


def _result(setup: DecodingSetup, options: DecodingOptions, tokens: list[int], sum_logprob: float,
            no_speech_prob: float) -> DecodingResult:
    text = setup.tokenizer.decode(tokens).strip()
    return DecodingResult(
        language=setup.language, tokens=tokens, text=text,
        avg_logprob=sum_logprob / (len(tokens) + 1), no_speech_prob=no_speech_prob,
        temperature=options.temperature, compression_ratio=compression_ratio(text),
        language_probs=setup.language_probs)


def _sampled(row: np.ndarray, setup: DecodingSetup) -> list[int]:
    """A row's sampled tokens, up to (not including) the first <|endoftext|>."""
    row = row[setup.sample_begin:]
    ends = np.nonzero(row == setup.tokenizer.eot)[0]
    return row[: int(ends[0]) if len(ends) else len(row)].tolist()


def _can_guess(selector, tokens: np.ndarray) -> bool:
    """Whether `_guess` applies to this window's decoding: one row, greedy."""
    return (tokens.shape[0] == 1 and isinstance(selector, GreedyDecoder)
            and selector.temperature == 0)


def _guess(setup: DecodingSetup, tokens: np.ndarray, n_ctx: int, timestamps: bool = True,
           text: bool = True) -> tuple[int, str] | None:
    """The next token, guessed where a guess costs little to check.

    The decoder runs the token just chosen and the guess as two positions of one step, which
    reads the weights once (3.4 against 3.2 ms on a Zen 4 with AVX-512, 9.2 against 7.0 ms on
    a Zen 3 with AVX2). The logits of each position are those
    of separate steps, bit for bit (the decoder's rows and positions are computed
    independently; tested on the real decoder), so when the rules pick the guessed token the
    second position's logits are the next step's and a step is saved; otherwise the guess is
    forgotten (`cache.rewind`). Where `_can_guess`, and with room in the text context for the
    extra token. Two guesses:
    - `timestamps`: a segment's closing timestamp is followed by the next segment's opening
      one (or the end), and Whisper opens the next segment where the last one closed: all 44
      pairs of the 229-s clip repeat the timestamp.
    - `text`: after a text token, the token that followed the same tokens earlier in the
      window's prompt or text (`_follower`): right about one time in eight, which pays where a
      second position costs little (`GuessCosts` decides).
    Returns the guessed token and which kind of guess it is."""
    if tokens.shape[1] + 1 > n_ctx:
        return None
    begin, eot = setup.tokenizer.timestamp_begin, setup.tokenizer.eot
    sampled = tokens[0, setup.sample_begin:]
    if timestamps and len(sampled) >= 2 and sampled[-1] >= begin > sampled[-2]:
        return int(sampled[-1]), "timestamps"
    if text and len(sampled) >= 1 and sampled[-1] < eot:
        follower = _follower(tokens[0], eot)
        return None if follower is None else (follower, "text")
    return None


@dataclass
class GuessCosts:
    """What a checked text guess costs and wins with one engine on this machine, learnt while
    decoding, to decide whether to guess (`MAXWHISPER_TEXT_GUESS` unset).

    A step that also runs a guessed token costs the second position (`two - one`) on every try
    and saves a whole step (`one`) when the guess is taken, so a guess that is taken a fraction
    p of the time pays where `two - one < p * one`. Text guesses are taken about one time in
    eight; the second position's cost is the machine's: 0.2 ms of a 3.2-ms step on a Zen 4 with
    AVX-512 (guessing pays), 2.2 ms of a 7-ms step on a Zen 3 with AVX2, where a row's float32
    sums take twice the registers (guessing loses: 229-s clip 12.9 s with, 12.1-12.5 s without).
    The step times are medians of the latest steps of each kind (a two-token step is also a
    timestamp guess, which is right nearly always and is always made); the hit rate starts
    from one in eight. Until both kinds of step have been timed a few times, guess."""

    one: deque = field(default_factory=lambda: deque(maxlen=GUESS_COST_STEPS))
    two: deque = field(default_factory=lambda: deque(maxlen=GUESS_COST_STEPS))
    text_tries: int = 8  # the prior: one right in eight tries
    text_hits: int = 1

    def record_step(self, positions: int, seconds: float) -> None:
        (self.one if positions == 1 else self.two).append(seconds)

    def record_text_guess(self, taken: bool) -> None:
        self.text_tries += 1
        self.text_hits += taken

    def text_guess_pays(self) -> bool:
        if min(len(self.one), len(self.two)) < GUESS_COST_MIN_STEPS:
            return True
        one, two = statistics.median(self.one), statistics.median(self.two)
        return two - one < self.text_hits / self.text_tries * one


GUESS_COST_STEPS = 64  # the latest steps of each kind whose median is a step's cost
GUESS_COST_MIN_STEPS = 8
_guess_costs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def guess_costs(model: WhisperEngine) -> GuessCosts:
    """The engine's `GuessCosts`, kept across windows and calls for as long as the engine lives."""
    try:
        return _guess_costs.setdefault(model, GuessCosts())
    except TypeError:  # an engine that cannot be a weak key (unhashable): learn per window
        return GuessCosts()


def _follower(row: np.ndarray, eot: int) -> int | None:
    """The text token that followed the row's last two tokens where they last occurred
    earlier in it, else the one that followed its last token; None if neither occurred."""
    followers = row[1:]  # followers[j] is what came after row[j]
    after_last = (row[:-1] == row[-1]) & (followers < eot)
    after_pair = after_last.copy()
    after_pair[0] = False
    after_pair[1:] &= row[:-2] == row[-2]
    for found in (after_pair, after_last):
        where = np.flatnonzero(found)
        if where.size:
            return int(followers[where[-1]])
    return None


def _sample(model: WhisperEngine, features, cache, setup: DecodingSetup, selector,
            tokens: np.ndarray, sum_logprobs: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """From the prompt's last logits: filter, pick, run the picked tokens, until every row has
    ended or the text context is full. Returns the tokens, prompt included."""
    timestamps, text_setting = timestamp_guess_allowed(), text_guess_setting()
    guessing = (timestamps or text_setting is not False) and _can_guess(selector, tokens)
    costs = guess_costs(model) if guessing and text_setting is None else None
    ahead = None  # the logits after a guessed token, computed with the step before it
    for step in range(setup.sample_len):
        guess = None
        if step > 0 and ahead is not None:  # the guess was taken: this step is done already
            logits, ahead = ahead, None
        elif step > 0:
            if guessing:
                text = text_setting if costs is None else costs.text_guess_pays()
                guess = _guess(setup, tokens, model.dims.n_text_ctx, timestamps, text)
            started = time.perf_counter() if costs is not None else 0.0  # the rule's timings
            if guess is None:
                logits = model.decode_step(tokens[:, -1:], features, cache, positions=[-1])[:, -1]
            else:
                pair = np.array([[tokens[0, -1], guess[0]]], dtype=np.int64)
                both = model.decode_step(pair, features, cache, positions=[0, 1])
                logits, ahead = both[:, 0], both[:, 1]
            if costs is not None:
                costs.record_step(1 if guess is None else 2, time.perf_counter() - started)
        logits = np.array(logits, dtype=np.float32)
        for logit_filter in setup.filters:
            logit_filter.apply(logits, tokens)
        tokens, completed = selector.update(tokens, logits, sum_logprobs, cache)
        if guess is not None:
            taken = bool(tokens[0, -1] == guess[0])
            if costs is not None and guess[1] == "text":
                costs.record_text_guess(taken)
            if not taken:
                cache.rewind(1)
                ahead = None
        if completed or tokens.shape[-1] > model.dims.n_text_ctx:
            break
    return tokens


def decode(model: WhisperEngine, mel: np.ndarray, options: DecodingOptions = DecodingOptions(),
           features=None) -> DecodingResult:
    """Decode one (n_mels, 3000) window; `features` skips the encoder when already computed."""
    if features is None:
        features = model.encode(mel[None] if mel.ndim == 2 else mel)
    setup = decoding_setup(model, options, features)
    tokenizer = setup.tokenizer

    if options.beam_size is not None:
        n_group = options.beam_size
        selector = BeamSearchDecoder(options.beam_size, tokenizer.eot, options.patience)
    else:
        n_group = options.best_of or 1
        selector = GreedyDecoder(options.temperature, tokenizer.eot, options.seed)

    cache = model.new_cache(1)
    tokens = np.tile(np.array(setup.initial, dtype=np.int64), (n_group, 1))
    sum_logprobs = np.zeros(n_group, dtype=np.float32)
    # the whole prompt, once: every row (beam or sample) starts from it and gets a copy of its
    # keys and values, instead of n_group identical prefills; logits at <|startoftranscript|>
    # (the no-speech probability) and at the end
    logits = model.decode_step(tokens[:1], features, cache, positions=[setup.sot_index, -1])
    no_speech_prob = float(np.exp(log_softmax(logits[0, 0]))[tokenizer.no_speech])
    if n_group > 1:
        cache, logits = cache.repeated(n_group), np.repeat(logits, n_group, axis=0)
    tokens = _sample(model, features, cache, setup, selector, tokens, sum_logprobs,
                     logits[:, -1])

    candidates, candidate_logprobs = selector.finalize(tokens, sum_logprobs)
    return _best_result(setup, options, candidates[0], candidate_logprobs[0], no_speech_prob)


def _best_result(setup: DecodingSetup, options: DecodingOptions, candidates: list[np.ndarray],
                 scores: list[float], no_speech_prob: float) -> DecodingResult:
    """The result of one window's best-ranked candidate (beams or samples)."""
    texts = [_sampled(c, setup) for c in candidates]
    best = rank(texts, scores, options.length_penalty)
    return _result(setup, options, texts[best], scores[best], no_speech_prob)


def decode_batch(model: WhisperEngine, features, options: DecodingOptions = DecodingOptions()
                 ) -> list[DecodingResult]:
    """The B windows in `features` decoded together under the same rules as `decode`, each
    row attending to its own window: greedy, one row a window; beam search, `beam_size` rows a
    window (`WindowsBeamSearch`). A window's tokens are those `decode` gives it alone. Every
    step reads the decoder's weights once for all rows; rows whose window is done ride along
    until the last one is."""
    if (options.best_of or 1) > 1:
        raise ValueError("decode_batch takes greedy or beam search; decode best_of samples "
                         "window by window with `decode`")
    setup = decoding_setup(model, options, features.window(0) if features.windows > 1
                           else features)
    tokenizer, windows = setup.tokenizer, features.windows
    cache = model.new_cache(windows)
    tokens = np.tile(np.array(setup.initial, dtype=np.int64), (windows, 1))
    # the prompt once per window; beams then start from copies of its keys and values
    logits = model.decode_step(tokens, features, cache, positions=[setup.sot_index, -1])
    no_speech_probs = np.exp(log_softmax(logits[:, 0]))[:, tokenizer.no_speech]
    if options.beam_size is None:
        selector = GreedyDecoder(options.temperature, tokenizer.eot, options.seed)
        sum_logprobs = np.zeros(windows, dtype=np.float32)
        tokens = _sample(model, features, cache, setup, selector, tokens, sum_logprobs,
                         logits[:, -1])
        return [_result(setup, options, _sampled(tokens[i], setup), float(sum_logprobs[i]),
                        float(no_speech_probs[i])) for i in range(windows)]
    beams = options.beam_size
    selector = WindowsBeamSearch(windows, beams, tokenizer.eot, options.patience)
    sum_logprobs = np.zeros(windows * beams, dtype=np.float32)
    tokens = _sample(model, features, cache.repeated(beams), setup, selector,
                     np.repeat(tokens, beams, axis=0), sum_logprobs,
                     np.repeat(logits[:, -1], beams, axis=0))
    candidates, scores = selector.finalize(tokens, sum_logprobs)
    return [_best_result(setup, options, candidates[i], scores[i], float(no_speech_probs[i]))
            for i in range(windows)]
