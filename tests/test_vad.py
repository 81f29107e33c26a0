"""Silero VAD: the same speech regions as faster-whisper's, noise and tones give no text, speech
keeps its text (`--vad`), and `--vad-filter` gives faster-whisper's `vad_filter` tokens."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import max_model

from maxwhisper import vad
from maxwhisper.audio import load_audio

BATCHED = vad.VadOptions(max_speech_duration_s=30, min_silence_duration_ms=160)


def _noise(seconds: float = 10.0) -> np.ndarray:
    """Quiet white noise: Whisper writes ". . . ." for it without a VAD."""
    return (np.random.default_rng(0).standard_normal(int(16000 * seconds)) * 0.001).astype(
        np.float32)


def _tone(seconds: float = 15.0) -> np.ndarray:
    """A pure 440 Hz tone: Whisper writes "A" for it without a VAD."""
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(16000 * seconds)) / 16000)).astype(
        np.float32)


def test_the_model_file_is_the_one_faster_whisper_ships():
    folder = Path(next(iter(importlib.util.find_spec("faster_whisper")
                            .submodule_search_locations)))
    theirs = (folder / "assets" / "silero_vad_v6.onnx").read_bytes()
    assert hashlib.sha256(vad.MODEL_PATH.read_bytes()).digest() == hashlib.sha256(theirs).digest()


def test_speech_regions_equal_faster_whispers_on_the_speech_set(speech_clips):
    from faster_whisper import vad as faster_vad

    for clip in speech_clips:
        audio = load_audio(clip.path)
        probabilities = vad.speech_probabilities(audio)
        for options in (vad.VadOptions(), BATCHED):
            theirs = faster_vad.get_speech_timestamps(audio, faster_vad.VadOptions(
                **options.__dict__))
            assert vad.speech_regions(probabilities, len(audio), options) == theirs, clip.name
        # fed in uneven blocks, as audio read piece by piece: the same probabilities
        stream = vad.SpeechProbabilities()
        pieces = [stream.feed(audio[i:i + 7777]) for i in range(0, len(audio), 7777)]
        assert np.array_equal(np.concatenate([*pieces, stream.finish()]), probabilities)


def test_edge_cases_of_the_region_rules():
    # nothing above the threshold: no regions; all speech: one region over everything
    assert vad.speech_regions(np.zeros(100), 51200) == []
    assert vad.speech_regions(np.ones(100), 51200) == [{"start": 0, "end": 51200}]
    # a long region is split at max_speech_duration_s where there is no pause
    regions = vad.speech_regions(np.ones(2000), 2000 * 512, vad.VadOptions(
        max_speech_duration_s=10, speech_pad_ms=0))
    assert len(regions) > 1 and all(r["end"] - r["start"] <= 10 * 16000 for r in regions)
    # the map moves times inside region k by the silence removed before it
    speech_map = vad.SpeechMap([{"start": 16000, "end": 32000}, {"start": 64000, "end": 80000}])
    assert speech_map.file_time(0.5) == 1.5 and speech_map.file_time(1.5) == 4.5
    assert speech_map.file_time(1.0, is_end=True) == 2.0


def test_noise_and_a_tone_give_no_text_with_vad():
    model = max_model("tiny.en")
    for audio in (_noise(), _tone()):
        assert model.transcribe(audio)["text"].strip()  # the failure the VAD is for
        for mode in ("vad", "vad_filter"):
            result = model.transcribe(audio, **{mode: True})
            assert result["text"] == "" and result["segments"] == [], mode


def test_cli_says_in_one_line_that_there_is_no_speech(tmp_path):
    path = tmp_path / "tone.wav"
    soundfile.write(path, _tone(), 16000)
    done = subprocess.run([sys.executable, "-m", "maxwhisper.cli", "transcribe", str(path),
                           "--vad", "-o", str(tmp_path)], capture_output=True, text=True,
                          check=True)
    assert "no speech found (VAD)" in done.stderr and done.stdout.strip() == ""
    assert (tmp_path / "tone.txt").read_text() == ""


@pytest.mark.slow
def test_speech_keeps_its_text_with_vad_and_vad_filter_equals_faster_whisper(speech_clips):
    from maxwhisper.engines import load_engine
    from maxwhisper.results import TranscribeOptions

    model = max_model("tiny.en")
    faster = load_engine("faster", "tiny.en")
    for clip in speech_clips:
        audio = load_audio(clip.path)
        plain = model.transcribe(audio, temperature=0.0)
        gated = model.transcribe(audio, temperature=0.0, vad=True)
        assert gated["text"] == plain["text"], clip.name  # --vad: speech keeps its text
        filtered = model.transcribe(audio, temperature=0.0, vad_filter=True)
        theirs = faster.transcribe(audio, TranscribeOptions(vad_filter=True))
        assert [t for s in filtered["segments"] for t in s["tokens"]] == theirs.tokens, clip.name
        for ours, reference in zip(filtered["segments"], theirs.segments, strict=True):
            assert ours["start"] == pytest.approx(reference["start"], abs=0.02), clip.name
            assert ours["end"] == pytest.approx(reference["end"], abs=0.02), clip.name
