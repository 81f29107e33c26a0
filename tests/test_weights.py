"""Weight extraction: the CTranslate2 reader, the mapping to openai-whisper names, the .npz,
`.pt` checkpoints, corrupt input, and the proof that the extracted weights are right."""

from __future__ import annotations

import numpy as np
import pytest

from maxwhisper import weights as W
from maxwhisper.errors import ModelNameError, WeightsError


@pytest.mark.parametrize("name,n_tensors,d,layers", [("tiny.en", 167, 384, 4), ("base", 245, 512, 6)])
def test_extracted_models_have_openai_names_and_dims(name, n_tensors, d, layers):
    weights = W.load_weights(name)
    assert len(weights.tensors) == n_tensors
    assert weights.dims.n_audio_state == d and weights.dims.n_text_layer == layers
    assert set(weights.tensors) == set(W.expected_shapes(weights.dims))
    assert weights.alignment_heads.shape == (8, 2)
    assert weights.source_sha256 and weights.content_sha256 == W.content_sha256(weights.tensors)


def test_fused_projections_are_split_row_wise(tiny_weights):
    parts, _ = W.packaged_ctranslate2_files("tiny.en")
    raw = W.read_ctranslate2_bin(parts[0].read_bytes())
    fused = raw["decoder/layer_1/self_attention/linear_0/weight"]
    d = tiny_weights.dims.n_text_state
    t = tiny_weights.tensors
    np.testing.assert_array_equal(t["decoder.blocks.1.attn.query.weight"], fused[:d])
    np.testing.assert_array_equal(t["decoder.blocks.1.attn.key.weight"], fused[d : 2 * d])
    np.testing.assert_array_equal(t["decoder.blocks.1.attn.value.weight"], fused[2 * d :])
    cross = raw["decoder/layer_2/attention/linear_1/weight"]
    np.testing.assert_array_equal(t["decoder.blocks.2.cross_attn.value.weight"], cross[d:])
    # the key bias CTranslate2 stores is all zeros; openai-whisper has none
    assert not np.any(raw["decoder/layer_2/attention/linear_1/bias"][:d])
    assert "decoder.blocks.2.cross_attn.key.bias" not in t
    # the tied output projection is an alias of the token embedding
    assert raw["decoder/projection/weight"] is raw["decoder/embeddings/weight"]


def test_truncated_ctranslate2_file_is_refused(tmp_path):
    parts, _ = W.packaged_ctranslate2_files("tiny.en")
    data = parts[0].read_bytes()
    with pytest.raises(WeightsError, match="truncated"):
        W.read_ctranslate2_bin(data[: len(data) // 2], "half.bin")
    with pytest.raises(WeightsError, match="binary version"):
        W.read_ctranslate2_bin(b"\x07\x00\x00\x00" + data[4:], "v7.bin")
    with pytest.raises(WeightsError):
        W.read_ctranslate2_bin(b"not a model at all", "junk.bin")


def test_ctranslate2_folder_with_mismatched_tensor_is_refused(tmp_path):
    parts, folder = W.packaged_ctranslate2_files("tiny.en")
    variables = W.read_ctranslate2_bin(parts[0].read_bytes())
    del variables["decoder/layer_3/ffn/linear_1/weight"]
    with pytest.raises(WeightsError, match="missing"):
        W.ctranslate2_to_whisper(variables)


def test_npz_checksum_detects_corruption(tmp_path, tiny_weights):
    path = W.save_npz(tmp_path / "tiny.npz", tiny_weights)
    assert W.load_npz(path).content_sha256 == tiny_weights.content_sha256
    tampered = dict(tiny_weights.tensors)
    tampered["decoder.ln.bias"] = tampered["decoder.ln.bias"] + np.float16(1)
    bad = W.WhisperWeights(**{**tiny_weights.__dict__, "tensors": tampered})
    W.save_npz(tmp_path / "bad.npz", bad)
    with pytest.raises(WeightsError, match="checksum"):
        W.load_npz(tmp_path / "bad.npz")
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 definitely not a zip")
    with pytest.raises(WeightsError, match="corrupt"):
        W.load_npz(tmp_path / "garbage.npz")


def test_unknown_model_name():
    with pytest.raises(ModelNameError, match="unknown model"):
        W.resolve_weights("tiny.xx")


def test_openai_checkpoint_round_trip(tmp_path, tiny_weights):
    """A user's openai-whisper .pt checkpoint (dims from the file) extracts to the same tensors."""
    torch = pytest.importorskip("torch")
    from dataclasses import asdict

    state = {k: torch.from_numpy(v.copy()) for k, v in tiny_weights.tensors.items()}
    path = tmp_path / "my-tiny.pt"
    torch.save({"dims": asdict(tiny_weights.dims), "model_state_dict": state}, path)
    npz = W.extract(str(path), tmp_path)
    loaded = W.load_npz(npz)
    assert loaded.dims == tiny_weights.dims and loaded.name == "my-tiny"
    assert loaded.content_sha256 == tiny_weights.content_sha256
    # a checkpoint whose tensor does not match its dims is refused
    state["decoder.ln.weight"] = torch.zeros(5)
    torch.save({"dims": asdict(tiny_weights.dims), "model_state_dict": state}, path)
    with pytest.raises(WeightsError, match="shape"):
        W.extract(str(path), tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(WeightsError, match="not a readable"):
        W.extract(str(tmp_path / "junk.pt"), tmp_path)


@pytest.mark.parametrize("name", ["tiny.en", "base"])
def test_strict_load_and_transcript_equals_faster_whisper(name, jfk):
    """The proof: openai-whisper on our extracted weights transcribes JFK exactly as
    faster-whisper does on the original CTranslate2 files (greedy, timestamps included)."""
    from maxwhisper.compare import run_engine

    openai = run_engine("openai", [jfk.path], name)[0]  # loads with strict=True inside
    faster = run_engine("faster", [jfk.path], name)[0]
    assert openai["text"].strip() == faster["text"].strip()
    assert [(s["start"], s["end"]) for s in openai["segments"]] == \
        [(s["start"], s["end"]) for s in faster["segments"]]
    assert "country" in openai["text"]
