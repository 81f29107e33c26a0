"""openai-whisper's names on maxwhisper: `import maxwhisper as whisper` code paths."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import max_model

import maxwhisper as whisper


def test_module_level_names():
    for name in ("available_models", "load_model", "load_audio", "log_mel_spectrogram",
                 "pad_or_trim", "transcribe", "decode", "detect_language", "DecodingOptions",
                 "DecodingResult", "ModelDimensions"):
        assert hasattr(whisper, name), name
    assert whisper.available_models() == ["tiny.en", "base"]
    assert whisper.tokenizer.get_tokenizer is whisper.get_tokenizer
    assert whisper.audio.SAMPLE_RATE == 16000


def test_an_unknown_model_name_is_a_clear_error():
    with pytest.raises(whisper.ModelNameError):
        whisper.load_model("large-v3-not-here", device="cpu")


def test_model_to_device_and_properties(jfk):
    model = max_model("tiny.en")
    assert model.to("cpu") is model and model.device == "cpu"
    assert model.num_languages == model.dims.num_languages and not model.is_multilingual
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(whisper.load_audio(jfk.path)))
    result = whisper.decode(model, mel, whisper.DecodingOptions(without_timestamps=True))
    assert isinstance(result, whisper.DecodingResult) and "country" in result.text
    batch = model.decode(np.stack([mel, mel]), without_timestamps=True)
    assert [r.tokens for r in batch] == [result.tokens, result.tokens]
    with pytest.raises(ValueError, match="language tokens"):
        model.detect_language(mel)


def test_detect_language_returns_tokens_and_probabilities(jfk):
    model = max_model("base")
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(whisper.load_audio(jfk.path)))
    token, probs = whisper.detect_language(model, mel)
    tokenizer = whisper.get_tokenizer(True, num_languages=model.num_languages)
    assert token == tokenizer.to_language_token("en") and max(probs, key=probs.get) == "en"
    assert abs(sum(probs.values()) - 1) < 1e-4
    tokens, batch = model.detect_language(np.stack([mel, mel]))
    assert tokens.tolist() == [token, token] and batch[0] == probs


def _tokens(result: dict) -> list[int]:
    return [t for s in result["segments"] for t in s["tokens"]]


@pytest.mark.slow
@pytest.mark.parametrize("options", [{"clip_timestamps": "3.5,41.2,100,130"},
                                     {"initial_prompt": "Printing history.",
                                      "carry_initial_prompt": True}])
def test_clip_timestamps_and_carried_prompt_equal_openai(longform, options):
    from maxwhisper.compare import run_engine

    (ours,) = run_engine("max", [longform.path], "tiny.en", **options)
    (theirs,) = run_engine("openai", [longform.path], "tiny.en", **options)
    assert _tokens(ours) and _tokens(ours) == _tokens(theirs)
    assert [(s["start"], s["end"]) for s in ours["segments"]] == \
        [(s["start"], s["end"]) for s in theirs["segments"]]
    if "clip_timestamps" in options:
        assert ours["segments"][0]["start"] >= 3.5 and ours["segments"][-1]["end"] <= 130


@pytest.mark.slow
@pytest.mark.parametrize("task", ["transcribe", "translate"])
def test_german_clip_transcribed_and_translated_as_openai_does(task):
    """audio/wetter_de.wav (espeak-ng, German): base detects German, and its tokens for both
    tasks equal openai-whisper's on the same weights."""
    from maxwhisper.compare import run_engine
    from maxwhisper.settings import REPO_ROOT

    clip = REPO_ROOT / "audio" / "wetter_de.wav"
    (ours,) = run_engine("max", [clip], "base", task=task)
    (theirs,) = run_engine("openai", [clip], "base", task=task)
    assert ours["language"] == theirs["language"] == "de"
    assert _tokens(ours) and _tokens(ours) == _tokens(theirs)


def test_set_alignment_heads_reads_openai_whispers_encoding():
    """openai-whisper's `_ALIGNMENT_HEADS` strings (base85 of a gzipped mask) name the same
    heads as the packaged checkpoints carry."""
    openai_whisper = pytest.importorskip("whisper")
    model = max_model("tiny.en")
    packaged = model.alignment_heads.copy()
    try:
        model.set_alignment_heads(openai_whisper._ALIGNMENT_HEADS["tiny.en"])
        assert sorted(map(tuple, model.alignment_heads)) == sorted(map(tuple, packaged))
        model.set_alignment_heads([(3, 1)])
        assert model.alignment_heads.tolist() == [[3, 1]]
        with pytest.raises(ValueError):
            model.set_alignment_heads([(9, 0)])
    finally:
        model.set_alignment_heads(packaged)


@pytest.mark.slow
def test_hallucination_silence_threshold_equals_openai(longform):
    from maxwhisper.compare import run_engine

    options = {"word_timestamps": True, "hallucination_silence_threshold": 1.0}
    (ours,) = run_engine("max", [longform.path], "tiny.en", **options)
    (theirs,) = run_engine("openai", [longform.path], "tiny.en", **options)
    assert _tokens(ours) and _tokens(ours) == _tokens(theirs)


def test_load_model_takes_openai_whispers_arguments(tmp_path):
    """download_root is searched for <name>.pt (nothing is downloaded; without the file the
    packaged weights are used); in_memory is accepted; device None picks what MAX sees."""
    model = whisper.load_model("tiny.en", device=None, download_root=str(tmp_path),
                               in_memory=True, verbose=False)
    assert model.weights.name == "tiny.en" and model.device == "cpu"


def test_a_path_is_read_in_blocks_with_the_same_tokens(longform):
    """transcribe(path) makes its log-mel window by window (bounded memory) and gives the
    tokens transcribe(samples) gives."""
    model = max_model("tiny.en")
    streamed = model.transcribe(str(longform.path), temperature=0.0)
    loaded = model.transcribe(whisper.load_audio(longform.path), temperature=0.0)
    assert [s["tokens"] for s in streamed["segments"]] == [s["tokens"] for s in
                                                          loaded["segments"]]
    assert [s["start"] for s in streamed["segments"]] == [s["start"] for s in loaded["segments"]]


def test_batch_size_in_transcribe_is_the_batched_mode(jfk):
    """`model.transcribe(audio, batch_size=N)` runs `transcribe_batched` (words included), and
    says which options the batched mode does not take."""
    from maxwhisper.transcribe import transcribe_batched

    model = max_model("tiny.en")
    audio = whisper.load_audio(jfk.path)
    result = model.transcribe(audio, batch_size=4, word_timestamps=True)
    assert result == transcribe_batched(model, audio, batch_size=4, word_timestamps=True)
    assert [w["word"] for s in result["segments"] for w in s["words"]][-1].strip() == "country."
    with pytest.raises(ValueError, match="clip_timestamps, hallucination_silence_threshold"):
        model.transcribe(audio, batch_size=4, clip_timestamps="0,5",
                         hallucination_silence_threshold=2.0)
