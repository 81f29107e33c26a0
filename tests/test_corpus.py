"""`maxwhisper corpus`: inputs, the results file, resuming, local workers, Ray, killed runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile
from conftest import max_model

from maxwhisper import corpus as corpus_module
from maxwhisper import speech
from maxwhisper.corpus import (
    CorpusFile,
    CorpusSettings,
    ResultLog,
    find_files,
    read_manifest,
    run_corpus,
)
from maxwhisper.errors import MaxWhisperError


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "maxwhisper.cli", "corpus", *args]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _texts(path: Path) -> dict[str, str]:
    return {r["path"]: r.get("text", r.get("error")) for r in _records(path)}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, short_clips):
    """A manifest of eight speech clips (with references), one file that is not audio and one
    silent file; the last two live in a temporary folder."""
    folder = tmp_path_factory.mktemp("corpus")
    broken, silent = folder / "broken.wav", folder / "silent.flac"
    broken.write_text("not audio")
    soundfile.write(silent, np.zeros(16000 * 3, dtype=np.float32), 16000)
    clips = short_clips[:8]
    manifest = folder / "manifest.tsv"
    rows = [f"{c.path}\t{c.reference}" for c in clips] + [f"{broken.name}\t", f"{silent.name}\t"]
    manifest.write_text("path\treference\n" + "\n".join(rows) + "\n")
    return {"folder": folder, "manifest": manifest, "clips": clips, "broken": broken,
            "silent": silent}


def test_find_files_reads_folders_and_every_manifest_kind(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("a/one.wav", "a/b/two.FLAC", "a/b/notes.txt", "three.mp3"):
        (tmp_path / name).write_bytes(b"")
    found = [Path(f.path).name for f in find_files([tmp_path / "a"])]
    assert found == ["two.FLAC", "one.wav"] or found == ["one.wav", "two.FLAC"]
    (tmp_path / "m.tsv").write_text("file\treference_text\na/one.wav\tHELLO\n")
    (tmp_path / "m.csv").write_text("path,reference\nthree.mp3,\"hi, there\"\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": "a/b/two.FLAC"}) + "\n")
    assert read_manifest(tmp_path / "m.tsv") == [CorpusFile(str(tmp_path / "a/one.wav"), "HELLO")]
    assert read_manifest(tmp_path / "m.csv")[0].reference == "hi, there"
    assert read_manifest(tmp_path / "m.jsonl")[0].reference is None
    # a file named twice is listed once, with the reference either place gives it
    both = find_files([tmp_path / "a", tmp_path / "m.tsv"])
    assert len(both) == 2 and {f.reference for f in both} == {None, "HELLO"}
    with pytest.raises(MaxWhisperError, match="no such file"):
        find_files([tmp_path / "missing"])
    (tmp_path / "bad.csv").write_text("name\nx.wav\n")
    with pytest.raises(MaxWhisperError, match="no 'path'"):
        find_files([tmp_path / "bad.csv"])


def test_result_log_repairs_a_torn_line_and_keeps_one_line_per_file(tmp_path):
    path = tmp_path / "r.jsonl"
    good = {"path": "/a.wav", "sha256": "1", "options": {}, "text": "a"}
    error = {"path": "/b.wav", "sha256": "2", "options": {}, "error": "AudioError: bad"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(error) + "\n" + '{"path": "/c.w')
    log = ResultLog(path)
    log.close()
    assert _records(path) == [good, error]  # the unfinished line is gone
    log = ResultLog(path, retry_errors=True)
    log.append({**good, "path": "/d.wav", "sha256": "4"})
    log.close()
    assert [r["path"] for r in _records(path)] == ["/a.wav", "/d.wav"]


def test_corpus_run_writes_every_file_once_and_resumes(corpus, tmp_path, monkeypatch):
    files = find_files([corpus["manifest"]])
    output = tmp_path / "results.jsonl"
    summary = run_corpus(files, output, CorpusSettings(), progress=False)
    records = {Path(r["path"]).name: r for r in _records(output)}
    assert len(records) == len(files) == 10
    assert records["broken.wav"]["error"].startswith("AudioError")
    assert records["silent.flac"]["text"] == "" and records["silent.flac"]["silent"]
    model = max_model("tiny.en")
    for clip in corpus["clips"][:3]:  # the same tokens as the MAX engine on its own
        expected = model.transcribe(str(clip.path))
        got = records[clip.name]
        assert [s["tokens"] for s in got["segments"]] == [s["tokens"] for s in
                                                           expected["segments"]]
        assert got["sha256"] and got["duration_s"] == pytest.approx(clip.duration_s, abs=0.01)
    assert (summary.files, summary.transcribed, summary.skipped, summary.errors) == (10, 9, 0, 1)
    assert summary.wer == pytest.approx(speech.word_error_rate(
        [c.reference for c in corpus["clips"]], [records[c.name]["text"] for c in corpus["clips"]]))
    before = output.read_text()
    real_hash, read = corpus_module.content_hash, []
    monkeypatch.setattr(corpus_module, "content_hash", lambda p: read.append(p) or real_hash(p))
    again = run_corpus(files, output, CorpusSettings(), progress=False)
    assert (again.transcribed, again.skipped, again.errors) == (0, 10, 1)
    assert output.read_text() == before
    assert read == []  # each file's size and mtime were stored: no file was read to hash it
    retried = run_corpus(files, output, CorpusSettings(), retry_errors=True, progress=False)
    assert (retried.skipped, retried.errors) == (9, 1)
    assert Counter(r["path"] for r in _records(output)).most_common(1)[0][1] == 1


def test_two_workers_give_the_same_results_and_write_transcripts(corpus, tmp_path):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    subprocess.run(_cli(str(corpus["manifest"]), "--output", str(one)), check=True)
    done = subprocess.run(_cli(str(corpus["manifest"]), "--output", str(two), "--workers", "2",
                               "-f", "txt", "-o", str(tmp_path / "txt")),
                          check=True, capture_output=True, text=True)
    assert _texts(one) == _texts(two)
    assert "10 files" in done.stderr and "2 workers" in done.stderr and "WER" in done.stderr
    clip = corpus["clips"][0]
    written = (tmp_path / "txt" / f"{clip.path.stem}.txt").read_text()
    assert written.split() == _texts(two)[str(clip.path.resolve())].split()
    assert not (tmp_path / "txt" / "broken.txt").exists()


def _wait_for_lines(path: Path, count: int, process: subprocess.Popen, limit: float = 240):
    deadline = time.time() + limit
    while time.time() < deadline:
        if path.exists() and path.read_text().count("\n") >= count:
            return
        assert process.poll() is None, "the run ended before it could be interrupted"
        time.sleep(0.05)
    raise AssertionError(f"no {count} results in {limit} s")


@pytest.mark.parametrize("workers", [["--workers", "2"], ["--ray", "local"]],
                         ids=["local", "ray"])
def test_killed_run_restarts_and_finishes_each_file_once(corpus, tmp_path, workers):
    output = tmp_path / "results.jsonl"
    run = subprocess.Popen(_cli(str(corpus["manifest"]), "--output", str(output), *workers),
                           start_new_session=True, stderr=subprocess.DEVNULL)
    _wait_for_lines(output, 2, run)
    os.killpg(run.pid, signal.SIGKILL)  # the driver and its workers, mid-run
    run.wait()
    partial = _records(output)  # every line whole
    assert 2 <= len(partial) < 10
    subprocess.run(_cli(str(corpus["manifest"]), "--output", str(output), *workers), check=True,
                   stderr=subprocess.DEVNULL)
    counts = Counter(r["path"] for r in _records(output))
    assert len(counts) == 10 and set(counts.values()) == {1}
    assert _records(output)[: len(partial)] == partial  # finished work was kept, not redone


@pytest.mark.slow
def test_ray_local_equals_the_local_run_and_retries_a_killed_worker(corpus, tmp_path):
    import psutil

    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    subprocess.run(_cli(str(corpus["manifest"]), "--output", str(local)), check=True,
                   stderr=subprocess.DEVNULL)
    run = subprocess.Popen(_cli(str(corpus["manifest"]), "--output", str(on_ray), "--ray",
                                "local"), stderr=subprocess.PIPE, text=True)
    _wait_for_lines(on_ray, 1, run)
    killed = None
    deadline = time.time() + 60
    while killed is None and time.time() < deadline:  # a worker in the middle of a file
        for process in psutil.process_iter(["pid", "cmdline"]):
            if "CorpusWorker.transcribe" in " ".join(process.info["cmdline"] or []):
                process.kill()
                killed = process.info["pid"]
                break
        else:
            assert run.poll() is None, "the Ray run ended before a worker could be killed"
            time.sleep(0.02)
    assert killed, "no Ray worker found busy with a file"
    _, stderr = run.communicate(timeout=300)
    assert run.returncode == 0, stderr
    counts = Counter(r["path"] for r in _records(on_ray))
    assert len(counts) == 10 and set(counts.values()) == {1}
    assert _texts(on_ray) == _texts(local)  # the killed worker's file was redone, not lost
    assert "Ray (local)" in stderr
