"""The three environment files agree, notebooks are stripped, and the MAX path has no torch."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines) -> dict[str, str]:
    pins = {}
    for line in lines:
        m = re.match(r"\s*-?\s*\"?([A-Za-z0-9_.\-]+)\s*(?:=\s*\")?==([^\"\s,]+)", line)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def test_pyproject_environment_and_pixi_pin_the_same_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    expected = _pins(project["project"]["dependencies"])
    assert expected["max"] == "26.7.0" and expected["torch"] == "2.13.0"
    env = _pins((ROOT / "environment.yml").read_text().splitlines())
    pixi_table = tomllib.loads((ROOT / "pixi.toml").read_text())["pypi-dependencies"]
    pixi = {k.lower(): v.lstrip("=") for k, v in pixi_table.items() if isinstance(v, str)}
    assert env == expected
    assert pixi == expected


def test_lock_file_agrees_with_direct_pins():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    expected = _pins(project["project"]["dependencies"])
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
