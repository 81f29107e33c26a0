"""Word-level timestamps: the numpy pieces against their plain definitions, and the MAX
engine's words against openai-whisper's `word_timestamps=True` on the same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from maxwhisper.compare import run_engine
from maxwhisper.settings import build_dir
from maxwhisper.timing import dtw, median_filter

MODELS = ["tiny.en", "base"]
# base's words are checked on the first three clips of each part of the speech set (JFK,
# LibriSpeech, LJ Speech): on all 25 the test took 380 s of a ~40-min CI run (openai-whisper's
# base with word timestamps is the slow part), where tiny.en checks every clip in 117 s.
CLIPS_PER_SUBSET = {"tiny.en": None, "base": 3}


def _reference_dtw(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """openai-whisper's DTW as a plain double loop (float32 costs, its tie-breaking)."""
    n, m = x.shape
    cost = np.full((n + 1, m + 1), np.inf, dtype=np.float32)
    trace = -np.ones((n + 1, m + 1), dtype=np.float32)
    cost[0, 0] = 0
    for j in range(1, m + 1):
        for i in range(1, n + 1):
            c0, c1, c2 = cost[i - 1, j - 1], cost[i - 1, j], cost[i, j - 1]
            if c0 < c1 and c0 < c2:
                c, t = c0, 0
            elif c1 < c0 and c1 < c2:
                c, t = c1, 1
            else:
                c, t = c2, 2
            cost[i, j] = x[i - 1, j - 1] + c
            trace[i, j] = t
    i, j = n, m
    trace[0, :], trace[:, 0] = 2, 1
    path = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        t = trace[i, j]
        i, j = (i - 1, j - 1) if t == 0 else (i - 1, j) if t == 1 else (i, j - 1)
    path = np.array(path[::-1]).T
    return path[0], path[1]


@pytest.mark.parametrize("shape", [(1, 1), (3, 40), (17, 60), (40, 23)])
def test_dtw_equals_the_double_loop(shape):
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    x = rng.standard_normal(shape)
    x[:, ::7] = x[:, ::7].round(0)  # ties, where the tie-breaking decides
    ours, reference = dtw(x), _reference_dtw(x)
    assert np.array_equal(ours[0], reference[0]) and np.array_equal(ours[1], reference[1])


def test_median_filter_equals_a_sliding_median():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 31)).astype(np.float32)
    padded = np.pad(x, [(0, 0), (0, 0), (3, 3)], mode="reflect")
    expected = np.stack([np.median(padded[..., i : i + 7], axis=-1) for i in range(31)], -1)
    assert np.array_equal(median_filter(x, 7), expected)
    assert np.array_equal(median_filter(x[..., :3], 7), x[..., :3])  # too short to filter
    with pytest.raises(ValueError):
        median_filter(x, 4)


def _words(result: dict) -> list[dict]:
    return [w for s in result["segments"] for w in s.get("words", [])]


@pytest.mark.slow
@pytest.mark.parametrize("name", MODELS)
def test_words_and_times_equal_openai(name, short_clips):
    """Same words as openai-whisper's word_timestamps=True on every clip (base: a sample, see
    CLIPS_PER_SUBSET), every start and end within 0.02 s; the worst difference per clip, and
    the mean difference to faster-whisper's word times, are printed and written to build/."""
    short_clips = _sample(short_clips, CLIPS_PER_SUBSET[name])
    paths = [c.path for c in short_clips]
    ours = run_engine("max", paths, name, word_timestamps=True)
    reference = run_engine("openai", paths, name, word_timestamps=True)
    faster = run_engine("faster", paths, name, word_timestamps=True)
    report = {}
    for clip, mine, theirs, fw in zip(short_clips, ours, reference, faster, strict=True):
        a, b, c = _words(mine), _words(theirs), _words(fw)
        assert [w["word"] for w in a] == [w["word"] for w in b], clip.name
        assert a, clip.name
        worst = max(max(abs(x["start"] - y["start"]), abs(x["end"] - y["end"]))
                    for x, y in zip(a, b, strict=True))
        to_faster = (float(np.mean([abs(x["start"] - y["start"]) + abs(x["end"] - y["end"])
                                    for x, y in zip(a, c, strict=True)]) / 2)
                     if [w["word"].strip() for w in a] == [w["word"].strip() for w in c]
                     else None)
        report[clip.name] = {"words": len(a), "worst_vs_openai_s": worst,
                             "mean_vs_faster_s": to_faster}
        print(f"{name} {clip.name}: {len(a)} words, worst |MAX - openai| {worst:.3f} s, "
              f"mean |MAX - faster| {to_faster if to_faster is None else round(to_faster, 3)}")
        assert worst <= 0.02 + 1e-9, (clip.name, worst)
    out = build_dir() / f"word-timestamps-{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))


def _sample(clips: list, per_subset: int | None) -> list:
    """The first `per_subset` clips of each subset of the speech set (all when None)."""
    if per_subset is None:
        return clips
    by_subset: dict[str, list] = {}
    for clip in clips:
        by_subset.setdefault(clip.subset, []).append(clip)
    return [clip for group in by_subset.values() for clip in group[:per_subset]]


@pytest.mark.slow
def test_longform_words_move_forward_within_their_segments(longform):
    """On the 229-s clip: words never go back in time, and sit in their segment (openai-whisper
    may start a segment's first word up to its median word duration, at most 0.7 s, before
    the segment when the segment-level start is kept)."""
    (result,) = run_engine("max", [longform.path], "tiny.en", word_timestamps=True)
    (reference,) = run_engine("openai", [longform.path], "tiny.en", word_timestamps=True)
    words = _words(result)
    assert len(words) > 400
    assert [w["word"] for w in words] == [w["word"] for w in _words(reference)]
    assert all(w["start"] <= w["end"] for w in words)
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in zip(words, words[1:], strict=False))
    for segment in result["segments"]:
        for w in segment["words"]:
            assert segment["start"] - 0.7 <= w["start"] and w["end"] <= segment["end"] + 1e-6


@pytest.mark.slow
def test_words_with_beam_search_equal_openai(speech_clips):
    """Beam search picks other tokens than greedy on some clips; the words follow them."""
    names = ["jfk.wav", "1221-135766-0001.wav", "LJ001-0014.wav"]
    paths = [c.path for c in speech_clips if c.name in names]
    ours = run_engine("max", paths, "tiny.en", word_timestamps=True, beam_size=5)
    reference = run_engine("openai", paths, "tiny.en", word_timestamps=True, beam_size=5)
    for mine, theirs in zip(ours, reference, strict=True):
        a, b = _words(mine), _words(theirs)
        assert a and [w["word"] for w in a] == [w["word"] for w in b]
        assert max(max(abs(x["start"] - y["start"]), abs(x["end"] - y["end"]))
                   for x, y in zip(a, b, strict=True)) <= 0.02 + 1e-9


def test_punctuation_options_decide_what_joins_a_word(speech_clips):
    """With nothing to append, the commas and the final period stand as words of their own;
    with openai-whisper's default set they join the word before."""
    from conftest import max_model

    from maxwhisper import load_audio

    clip = next(c for c in speech_clips if c.name == "LJ001-0001.wav")  # has commas
    audio = load_audio(clip.path)
    model = max_model("tiny.en")
    default = _words(model.transcribe(audio, temperature=0.0, word_timestamps=True))
    apart = _words(model.transcribe(audio, temperature=0.0, word_timestamps=True,
                                    append_punctuations=""))
    assert not any(w["word"] in (",", ".") for w in default)
    assert any(w["word"] in (",", ".") for w in apart) and len(apart) > len(default)
