"""The MAX Graph Whisper against openai-whisper on the same weights.

Per-stage max-abs differences (encoder output, decoder logits with the KV cache), then exact
greedy token sequences on every clip of the speech set for tiny.en and base, with and without
timestamps, the long-form clip's segments, beam search, WER, silence and the no-torch rule.
openai-whisper runs in its own worker process (maxwhisper.compare), its answers cached on disk.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import max_model

from maxwhisper import audio as A
from maxwhisper.compare import run_engine
from maxwhisper.settings import build_dir
from maxwhisper.speech import word_error_rate

MODELS = ["tiny.en", "base"]
# Clips on which openai-whisper's own float32 encoder is more than 1e-3 from the same encoder
# evaluated in float64 (measured 2026-11-25): 1.7e-3 for tiny.en, 1.1e-3 and 1.2e-3 for base.
# There "within 1e-3 of torch" cannot be promised by a float32 implementation that is more
# exact than torch, so a model whose encoder starts in float64 (base) is held to the exact
# result, and an all-float32 one (tiny.en) to torch or, where torch is further from the exact
# result, to that (`_as_exact_as_torch`). See docs/performance.md, "Precision".
HARD_CLIPS = {"tiny.en": ["1089-134691-0000.flac"], "base": ["1221-135766-0002.wav",
                                                            "LJ001-0009.wav"]}


def _torch_model(weights):
    from maxwhisper.baselines import torch_whisper

    return torch_whisper(weights)


def _as_exact_as_torch(ours_torch: float, ours_exact: float, torch_exact: float) -> bool:
    """An encoder output passes when it is within 1e-3 of openai-whisper's float32 one
    (`ours_torch`, a max-abs difference), or no further from the exact (float64) result than
    that float32 output is (1e-3 at least).

    Why both: float32 results depend on the CPU's kernels. On the AVX-512 machine MAX stayed
    within 1e-3 of torch on every clip; on an AVX2 machine (Zen 3, 2026-11-29) torch's own
    float32 encoder moved to 2.2e-3 from the exact result on a hard clip while MAX stayed
    within 9.2e-4 of it, 1.3e-3 from torch: closer to the exact result than the reference."""
    return bool(ours_torch <= 1e-3 or ours_exact <= max(1e-3, torch_exact))


@pytest.fixture
def float64_layer_norm(monkeypatch):
    """openai-whisper's LayerNorm computes in float32 whatever its input; let float64 be float64
    (float32 inputs give the same values either way)."""
    torch = pytest.importorskip("torch")
    import whisper.model

    monkeypatch.setattr(whisper.model.LayerNorm, "forward", torch.nn.LayerNorm.forward)


def _encoder_distances(ours: np.ndarray, reference, mel: np.ndarray) -> tuple[float, float, float]:
    """Max-abs distances of MAX's encoder output `ours` to openai-whisper's float32 output and
    to the exact (float64) result, and of that float32 output to the exact result."""
    import torch

    with torch.no_grad():
        torch_float32 = reference.float().encoder(torch.from_numpy(mel)).numpy()
        exact = reference.double().encoder(torch.from_numpy(mel).double()).numpy()
    reference.float()
    return (float(np.abs(ours - torch_float32).max()), float(np.abs(ours - exact).max()),
            float(np.abs(torch_float32 - exact).max()))


@pytest.mark.parametrize("name", MODELS)
def test_encoder_and_decoder_logits_match_per_stage(name, jfk, float64_layer_norm):
    torch = pytest.importorskip("torch")
    model = max_model(name)
    reference = _torch_model(model.weights)
    mel = A.log_mel_spectrogram(A.pad_or_trim(A.load_audio(jfk.path)))[None]
    features = model.encode(mel)
    distances = _encoder_distances(features.audio, reference, mel)
    assert _as_exact_as_torch(*distances), distances
    with torch.no_grad():
        # the decoder stage on the same audio features (ours): a prompt, then tokens fed one
        # at a time through the cache, against one full pass of openai-whisper's decoder
        tokens = [50257, 50362, 843, 523, 616, 5891, 3399, 11, 1265, 407]
        if model.dims.is_multilingual:
            tokens = [50258, 50259, 50359, 50363, 400, 370, 452, 7177, 6280, 11]
        ref_logits = reference.decoder(torch.tensor([tokens]),
                                       torch.from_numpy(features.audio)).numpy()[0]
    cache = model.new_cache(1)
    ours = [model.decode_step(np.array([tokens[:3]]), features, cache)[0]]
    ours += [model.decode_step(np.array([[t]]), features, cache)[0] for t in tokens[3:]]
    ours = np.concatenate(ours)
    assert ours.shape == ref_logits.shape
    assert np.abs(ours - ref_logits).max() <= 1e-3
    assert (ours.argmax(-1) == ref_logits.argmax(-1)).all()


@pytest.mark.parametrize("name", MODELS)
def test_encoder_where_torch_float32_is_far_from_exact(name, speech_clips, float64_layer_norm):
    model = max_model(name)
    reference = _torch_model(model.weights)
    clips = [c for c in speech_clips if c.name in HARD_CLIPS[name]]
    assert len(clips) == len(HARD_CLIPS[name])
    ours_exact, ours_torch, torch_exact = [], [], []
    for clip in clips:
        mel = A.log_mel_spectrogram(A.pad_or_trim(A.load_audio(clip.path)))[None]
        to_torch, to_exact, torch_to_exact = _encoder_distances(model.encode(mel).audio,
                                                                reference, mel)
        ours_torch.append(to_torch)
        ours_exact.append(to_exact)
        torch_exact.append(torch_to_exact)
    report = {"max-exact": ours_exact, "max-torch": ours_torch, "torch-exact": torch_exact}
    assert max(torch_exact) > 1e-3, report  # what makes these clips hard
    if model.float64_blocks:
        assert max(ours_exact) <= 1e-3, report
        assert max(ours_exact) < max(torch_exact), report
    else:
        assert all(_as_exact_as_torch(*clip) for clip in
                   zip(ours_torch, ours_exact, torch_exact, strict=True)), report


def _tokens(result):
    return [s["tokens"] for s in result["segments"]]


def _compare_all(name, clips, **options):
    ours = run_engine("max", [c.path for c in clips], name, **options)
    reference = run_engine("openai", [c.path for c in clips], name, **options)
    for mine, theirs, clip in zip(ours, reference, clips, strict=True):
        assert mine["modules"] == [], f"MAX worker imported {mine['modules']}"
        assert _tokens(mine) == _tokens(theirs), (clip.name, mine["text"], theirs["text"])
        assert [(s["start"], s["end"]) for s in mine["segments"]] == \
            [(s["start"], s["end"]) for s in theirs["segments"]], clip.name
    return ours, reference


@pytest.mark.slow
@pytest.mark.parametrize("without_timestamps", [False, True])
@pytest.mark.parametrize("name", MODELS)
def test_greedy_tokens_identical_on_every_clip(name, without_timestamps, short_clips):
    ours, reference = _compare_all(name, short_clips, without_timestamps=without_timestamps)
    if name == "tiny.en" and not without_timestamps:
        _write_wer("greedy", name, short_clips, {"max": ours, "openai": reference})


@pytest.mark.slow
def test_longform_segments_identical(longform):
    ours, _ = _compare_all("tiny.en", [longform])
    segments = ours[0]["segments"]
    assert segments[-1]["end"] > 200 and len(segments) > 20
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in zip(segments, segments[1:], strict=False))


@pytest.mark.slow
def test_beam5_transcripts_equal_openai(short_clips):
    ours = run_engine("max", [c.path for c in short_clips], "tiny.en", beam_size=5)
    reference = run_engine("openai", [c.path for c in short_clips], "tiny.en", beam_size=5)
    pairs = zip(ours, reference, short_clips, strict=True)
    differences = [(c.name, a["text"], b["text"]) for a, b, c in pairs if a["text"] != b["text"]]
    assert not differences, differences


def _write_wer(label, name, clips, results_by_engine):
    faster = run_engine("faster", [c.path for c in clips], name)
    results_by_engine = {**results_by_engine, "faster": faster}
    scored = [i for i, c in enumerate(clips) if c.subset in ("test-clean", "LJSpeech")]
    refs = [clips[i].reference for i in scored]
    wer = {engine: word_error_rate(refs, [results[i]["text"] for i in scored])
           for engine, results in results_by_engine.items()}
    out = build_dir() / f"wer-{name}-{label}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": name, "decoding": label, "clips": len(scored),
                               "wer": wer}, indent=2))
    assert wer["max"] == wer["openai"], wer


def test_silence_gives_an_empty_transcript():
    model = max_model("tiny.en")
    result = model.transcribe(np.zeros(A.SAMPLE_RATE * 5, dtype=np.float32))
    assert result["text"].strip() == ""
    assert all(s["text"].strip() == "" for s in result["segments"])


def test_language_detection_and_forcing(jfk):
    model = max_model("base")
    samples = A.load_audio(jfk.path)
    assert model.transcribe(samples)["language"] == "en"
    forced = model.transcribe(samples, language="de")
    assert forced["language"] == "de" and forced["text"].strip()
