"""Every notebook runs headless with papermill (quick parameters) without an error cell, and
ends in its own assert cells on the numbers it computed."""

from __future__ import annotations

import json

import pytest

from maxwhisper.notebooks import execute, notebooks
from maxwhisper.settings import build_dir

pytestmark = pytest.mark.notebooks


def test_the_suite_has_seven_numbered_notebooks_with_parameters():
    paths = notebooks()
    assert [p.name[:2] for p in paths] == ["01", "02", "03", "04", "05", "06", "07"]
    for path in paths:
        cells = json.loads(path.read_text())["cells"]
        tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1 and "quick = False" in "".join(tagged[0]["source"]), path.name
        assert "assert" in "".join(cells[-1]["source"]), f"{path.name} must end with checks"


@pytest.mark.parametrize("path", notebooks(), ids=lambda p: p.stem)
def test_notebook_executes_headless(path):
    executed = execute(path, quick=True, out_dir=build_dir() / "notebooks-test", html=False)
    cells = json.loads(executed.read_text())["cells"]
    errors = [o for c in cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
