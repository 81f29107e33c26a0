"""The `maxwhisper` command: transcripts in every format, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from maxwhisper.speech import word_error_rate


def run_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "maxwhisper.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=900)


@pytest.mark.parametrize("engine", ["openai", "faster", "max"])
def test_transcribe_json_prints_the_jfk_sentence(engine, jfk, tmp_path):
    proc = run_cli("transcribe", jfk.path, "--engine", engine, "--output-format", "json",
                   "--output-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert word_error_rate([jfk.reference], [proc.stdout]) == 0.0, proc.stdout
    record = json.loads((tmp_path / "jfk.json").read_text())
    assert record["engine"] == engine and record["model"] == "tiny.en"
    assert record["beam_size"] == 1 and abs(record["audio_seconds"] - 11.0) < 0.01
    assert record["language"] == "en" and record["timings"]["transcribe_s"] > 0
    assert record["segments"] and all({"start", "end", "text", "tokens"} <= set(s)
                                      for s in record["segments"])
    assert record["tokens"] == [t for s in record["segments"] for t in s["tokens"]]


def test_all_output_formats(jfk, tmp_path):
    proc = run_cli("transcribe", jfk.path, "--output-format", "all", "--output-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    srt = (tmp_path / "jfk.srt").read_text()
    assert srt.startswith("1\n00:00:00,000 --> ") and "country" in srt
    vtt = (tmp_path / "jfk.vtt").read_text()
    assert vtt.startswith("WEBVTT\n\n00:00.000 --> ")
    assert "country" in (tmp_path / "jfk.txt").read_text()


def _bad_inputs(tmp_path):
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("hello, I am text")
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    silent = tmp_path / "silent.wav"
    soundfile.write(silent, np.zeros(16000 * 3, dtype=np.float32), 16000)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"PK\x03\x04 broken")
    return [
        ([tmp_path / "missing.wav"], "no such file"),
        ([tmp_path], "is a directory"),
        ([not_audio], "not a readable audio file"),
        ([empty], "no audio samples"),
        ([silent], "silent"),
    ], corrupt


@pytest.mark.parametrize("engine", ["max", "openai", "faster"])
def test_bad_input_gives_one_line_error(engine, tmp_path, jfk):
    cases, corrupt = _bad_inputs(tmp_path)
    cases += [(["--model", "tiny.xx", jfk.path], "unknown model")]
    if engine != "faster":
        cases += [(["--model", corrupt, jfk.path], "corrupt")]
    for args, message in cases:
        proc = run_cli("transcribe", "--engine", engine, *args)
        assert proc.returncode == 1, (args, proc.stderr)
        assert "Traceback" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.startswith("maxwhisper: error")]
        assert len(lines) == 1 and message in lines[0], (args, proc.stderr)
        assert proc.stdout == ""


def test_extract_command(tmp_path):
    proc = run_cli("extract", "--model", "tiny.en", "--output-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "tiny.en.npz").is_file() and "n_audio_state=384" in proc.stdout


def test_openai_whispers_option_spellings_parse_alike():
    from maxwhisper.cli import build_parser

    parser = build_parser()
    ours = parser.parse_args(["transcribe", "a.wav", "--word-timestamps", "--beam-size", "5",
                              "--output-format", "srt", "--output-dir", "subs",
                              "--max-line-width", "30"])
    theirs = parser.parse_args(["transcribe", "a.wav", "--word_timestamps", "True",
                                "--beam_size", "5", "-f", "srt", "-o", "subs",
                                "--max_line_width", "30", "--highlight_words", "False"])
    assert vars(ours) == vars(theirs)
    with pytest.raises(SystemExit):
        parser.parse_args(["transcribe", "a.wav", "--word_timestamps", "maybe"])


def test_temperature_options_make_openai_whispers_schedule():
    from maxwhisper.cli import build_parser, temperature_schedule

    parser = build_parser()

    def schedule(*argv):
        return temperature_schedule(parser.parse_args(["transcribe", "a.wav", *argv]))

    assert schedule() == 0.0 and schedule("--temperature", "0.3") == 0.3
    assert schedule("--fallback") == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert schedule("--temperature", "0.4", "--temperature_increment_on_fallback", "0.2") == \
        (0.4, 0.6, 0.8, 1.0)
    args = parser.parse_args(["transcribe", "a.wav", "--task", "translate", "--best_of", "3"])
    assert args.task == "translate" and args.best_of == 3
