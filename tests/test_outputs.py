"""The srt and vtt writers with word timestamps, against openai-whisper's writers."""

from __future__ import annotations

import io

import pytest
from conftest import max_model

from maxwhisper.outputs import SubtitleOptions, to_srt, to_vtt
from maxwhisper.results import TranscribeOptions, from_whisper_result

LAYOUTS = [SubtitleOptions(), SubtitleOptions(highlight_words=True),
           SubtitleOptions(max_line_width=24, max_line_count=2),
           SubtitleOptions(highlight_words=True, max_line_width=30, max_line_count=1),
           SubtitleOptions(max_words_per_line=3)]


@pytest.fixture(scope="module")
def word_result(jfk):
    from maxwhisper import load_audio

    audio = load_audio(jfk.path)
    result = max_model("tiny.en").transcribe(audio, word_timestamps=True)
    return result, from_whisper_result(result, "max", "tiny.en", TranscribeOptions(), len(audio),
                                       0.0, 0.0)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_subtitles_equal_openai_whispers_writers(word_result, layout, tmp_path):
    utils = pytest.importorskip("whisper.utils")
    raw, result = word_result
    options = {"highlight_words": layout.highlight_words, "max_line_width": layout.max_line_width,
               "max_line_count": layout.max_line_count,
               "max_words_per_line": layout.max_words_per_line}
    for ours, writer in ((to_srt, utils.WriteSRT), (to_vtt, utils.WriteVTT)):
        expected = io.StringIO()
        writer(str(tmp_path)).write_result(raw, expected, options)
        assert ours(result, layout) == expected.getvalue()
