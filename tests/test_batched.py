"""The batched mode: VAD chunks decoded N at a time, each row attending to its own chunk."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import max_model

from maxwhisper import speech
from maxwhisper.audio import N_FRAMES, load_audio, log_mel_spectrogram, pad_or_trim
from maxwhisper.decoding import DecodingOptions, decode, decode_batch
from maxwhisper.transcribe import speech_chunks, transcribe_batched


def test_speech_chunks_merge_consecutive_regions_up_to_30_s():
    second = 16000
    regions = [{"start": 0, "end": 10 * second}, {"start": 12 * second, "end": 25 * second},
               {"start": 26 * second, "end": 34 * second}, {"start": 40 * second,
                                                            "end": 41 * second}]
    chunks = speech_chunks(regions)
    assert [len(c) for c in chunks] == [2, 2]  # 10 + 13 s; then 8 + 1 s
    assert speech_chunks([]) == []


@pytest.mark.parametrize(("beam_size", "patience"), [(None, None), (5, None), (5, 0.5)],
                         ids=["greedy", "beam5", "beam5-patience0.5"])
def test_rows_of_a_batch_decode_as_their_windows_alone(speech_clips, beam_size, patience):
    """Chunks of different lengths in one batch: each window's tokens are exactly those of
    its window decoded on its own (greedy: a row a window; beam search: five rows a window,
    windows finishing at different steps), with and without timestamps."""
    model = max_model("tiny.en")
    clips = [c for c in speech_clips if c.duration_s <= 30][:4]
    mels = np.stack([pad_or_trim(log_mel_spectrogram(load_audio(c.path)), N_FRAMES)
                     for c in clips])
    features = model.encode(mels)
    for without_timestamps in (False, True):
        options = DecodingOptions(language="en", without_timestamps=without_timestamps,
                                  beam_size=beam_size, patience=patience)
        batched = decode_batch(model, features, options)
        for i, result in enumerate(batched):
            alone = decode(model, mels[i], options, features=features.window(i))
            assert result.tokens == alone.tokens, clips[i].name
            assert result.avg_logprob == pytest.approx(alone.avg_logprob, abs=1e-5)
            assert result.no_speech_prob == pytest.approx(alone.no_speech_prob, abs=1e-6)
        assert len({len(r.tokens) for r in batched}) > 1  # the windows end at different steps
    with pytest.raises(ValueError, match="best_of"):
        decode_batch(model, features, DecodingOptions(temperature=0.5, best_of=3))


@pytest.mark.slow
def test_batched_long_form_keeps_the_exact_modes_accuracy(longform):
    model = max_model("tiny.en")
    audio = load_audio(longform.path)
    exact = speech.word_error_rate([longform.reference],
                                   [model.transcribe(audio, temperature=0.0)["text"]])
    for without_timestamps in (True, False):
        result = transcribe_batched(model, audio, batch_size=8,
                                    without_timestamps=without_timestamps)
        wer = speech.word_error_rate([longform.reference], [result["text"]])
        assert wer <= exact + 0.005, (without_timestamps, wer, exact)
        starts = [s["start"] for s in result["segments"]]
        assert starts == sorted(starts) and 0 <= starts[0]
        assert all(s["start"] <= s["end"] <= longform.duration_s + 0.01
                   for s in result["segments"])
    # batch size 1 gives the same text as 8: batching changes the speed, not the result
    one = transcribe_batched(model, audio, batch_size=1, without_timestamps=True)
    eight = transcribe_batched(model, audio, batch_size=8, without_timestamps=True)
    assert [s["tokens"] for s in one["segments"]] == [s["tokens"] for s in eight["segments"]]
    # a path is read in blocks, the VAD fed on the way: the same chunks, the same result
    streamed = transcribe_batched(model, str(longform.path), batch_size=8,
                                  without_timestamps=True)
    assert streamed["segments"] == eight["segments"]


@pytest.mark.slow
@pytest.mark.parametrize("word_timestamps", [False, True], ids=["segments", "words"])
def test_batched_without_timestamps_equals_faster_whispers_pipeline(longform, jfk,
                                                                     word_timestamps):
    """faster-whisper's BatchedInferencePipeline, setting for setting: the same chunks, the same
    segment times and the same text (its default: no timestamps); with word timestamps the
    same words, each start and end within 0.02 s."""
    from maxwhisper.engines import load_engine
    from maxwhisper.results import TranscribeOptions

    options = TranscribeOptions(batch_size=8, without_timestamps=True,
                                word_timestamps=word_timestamps)
    ours, theirs = load_engine("max", "tiny.en", verbose=False), load_engine("faster", "tiny.en")
    for clip in (longform, jfk):  # jfk: shorter than one chunk
        audio = load_audio(clip.path)
        a, b = ours.transcribe(audio, options), theirs.transcribe(audio, options)
        assert [s["text"] for s in a.segments] == [s["text"] for s in b.segments], clip.name
        for x, y in zip(a.segments, b.segments, strict=True):
            assert x["start"] == pytest.approx(y["start"], abs=0.02)
            assert x["end"] == pytest.approx(y["end"], abs=0.02)
        if not word_timestamps:
            assert all("words" not in s for s in a.segments)
            continue
        ours_words = [w for s in a.segments for w in s["words"]]
        their_words = [w for s in b.segments for w in s["words"]]
        assert [w["word"] for w in ours_words] == [w["word"] for w in their_words], clip.name
        assert len(ours_words) > 10
        for x, y in zip(ours_words, their_words, strict=True):
            assert x["start"] == pytest.approx(y["start"], abs=0.02), x
            assert x["end"] == pytest.approx(y["end"], abs=0.02), x
            assert x["start"] <= x["end"]


def test_no_speech_gives_an_empty_batched_result(tmp_path):
    model = max_model("tiny.en")
    noise = (np.random.default_rng(0).standard_normal(16000 * 10) * 0.001).astype(np.float32)
    assert transcribe_batched(model, noise, batch_size=8) == {
        "text": "", "segments": [], "language": "en"}


def test_cli_batch_size(tmp_path, jfk):
    done = subprocess.run([sys.executable, "-m", "maxwhisper.cli", "transcribe", str(jfk.path),
                           "--batch-size", "4", "-o", str(tmp_path)], capture_output=True,
                          text=True, check=True)
    assert speech.word_error_rate([jfk.reference], [done.stdout]) < 0.1
    bad = subprocess.run([sys.executable, "-m", "maxwhisper.cli", "transcribe", str(jfk.path),
                          "--batch-size", "4", "--vad-filter"], capture_output=True, text=True)
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1
    # word timestamps in the batched mode, as JSON (one word per spoken word, in order)
    subprocess.run([sys.executable, "-m", "maxwhisper.cli", "transcribe", str(jfk.path),
                    "--batch-size", "4", "--word-timestamps", "-f", "json", "-o", str(tmp_path)],
                   capture_output=True, text=True, check=True)
    segments = json.loads((tmp_path / "jfk.json").read_text())["segments"]
    words = [w for s in segments for w in s["words"]]
    assert speech.word_error_rate([jfk.reference], [" ".join(w["word"] for w in words)]) < 0.1
    assert all(0 <= a["start"] <= a["end"] <= b["start"] + 0.01
               for a, b in zip(words, words[1:], strict=False))
