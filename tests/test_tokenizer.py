"""The tiktoken tokenizer: special tokens and ids equal openai-whisper's, round trips."""

from __future__ import annotations

import pytest

from maxwhisper.tokenizer import LANGUAGES, get_tokenizer

SPECIAL = ["eot", "sot", "transcribe", "translate", "sot_lm", "sot_prev", "no_speech",
           "no_timestamps", "timestamp_begin", "sot_sequence",
           "sot_sequence_including_notimestamps", "non_speech_tokens"]


@pytest.mark.parametrize("multilingual", [False, True])
def test_special_tokens_equal_openai_whisper(multilingual):
    reference = pytest.importorskip("whisper.tokenizer").get_tokenizer(multilingual)
    ours = get_tokenizer(multilingual)
    for name in SPECIAL:
        assert str(getattr(ours, name)) == str(getattr(reference, name)), name
    assert set(ours.all_language_tokens) == set(reference.all_language_tokens)
    assert ours.encoding.n_vocab == reference.encoding.n_vocab


def test_known_ids():
    english = get_tokenizer(False)
    assert (english.eot, english.sot, english.translate, english.no_timestamps) == \
        (50256, 50257, 50357, 50362)
    assert english.timestamp_begin == 50363 and english.encoding.n_vocab == 51864
    assert english.decode_with_timestamps([50363 + 54]) == "<|1.08|>"
    multi = get_tokenizer(True, language="de", task="translate")
    assert multi.sot_sequence == (50258, multi.to_language_token("de"), 50358)
    assert multi.encoding.n_vocab == 51865 and len(multi.all_language_tokens) == 99
    assert get_tokenizer(True, language="German").language == "de"
    with pytest.raises(ValueError, match="unsupported language"):
        get_tokenizer(True, language="klingon")
    assert len(LANGUAGES) >= 99


@pytest.mark.parametrize("multilingual", [False, True])
def test_round_trip_and_equal_ids_on_every_reference_text(multilingual, speech_clips):
    reference = pytest.importorskip("whisper.tokenizer").get_tokenizer(multilingual)
    ours = get_tokenizer(multilingual)
    for clip in speech_clips:
        text = " " + clip.reference
        ids = ours.encode(text)
        assert ids == reference.encode(text), clip.name
        assert ours.decode(ids) == text
        # timestamps are left out of decode() and shown by decode_with_timestamps()
        stamped = [ours.timestamp_begin] + ids + [ours.timestamp_begin + 50]
        assert ours.decode(stamped) == text
        assert ours.decode_with_timestamps(stamped) == f"<|0.00|>{text}<|1.00|>"


@pytest.mark.parametrize("multilingual", [False, True])
def test_word_splits_equal_openai_whispers(multilingual):
    """split_to_word_tokens / split_tokens_on_unicode / split_tokens_on_spaces, as word timing
    uses them, against openai-whisper's tokenizer on the same token lists."""
    reference = pytest.importorskip("whisper.tokenizer")
    ours = get_tokenizer(multilingual)
    theirs = reference.get_tokenizer(multilingual)
    texts = [" And so, my fellow Americans: ask not!", " l'histoire d'élite, 1465 années",
             " 다람쥐 헌 쳇바퀴에", ' It\'s 3.5% of (the) "total".']
    for text in texts:
        tokens = ours.encode(text) + [ours.eot]
        assert tokens == theirs.encode(text) + [theirs.eot]
        for method in ("split_to_word_tokens", "split_tokens_on_unicode", "split_tokens_on_spaces"):
            assert getattr(ours, method)(tokens) == getattr(theirs, method)(tokens), (text, method)
    if multilingual:  # openai-whisper's own example: a token that holds part of a character
        words, _ = ours.split_tokens_on_unicode([8404, 871, 287, 6, 246, 526, 3210, 20378])
        assert words == [" elle", " est", " l", "'", "\ufffd", "é", "rit", "oire"]
