"""Shared fixtures: the real speech set (from MAXWHISPER_SPEECH_DIR), weights, compiled models.

The speech set lives outside the repository; its absence is a failure, not a skip, because
every parity and accuracy claim rests on it.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MODULAR_TELEMETRY_ENABLED", "0")

from maxwhisper import speech  # noqa: E402
from maxwhisper.settings import speech_dir  # noqa: E402


@pytest.fixture(scope="session")
def speech_clips():
    folder = speech_dir()
    if not (folder / "MANIFEST.tsv").is_file():
        pytest.fail(f"speech set not found at {folder}; set MAXWHISPER_SPEECH_DIR")
    return speech.manifest(folder)


@pytest.fixture(scope="session")
def jfk(speech_clips):
    return next(c for c in speech_clips if c.name == "jfk.wav")


@pytest.fixture(scope="session")
def short_clips(speech_clips):
    """Every clip of at most 30 s (all but the long-form one)."""
    return [c for c in speech_clips if c.duration_s <= 30]


@pytest.fixture(scope="session")
def longform(speech_clips):
    return next(c for c in speech_clips if c.duration_s > 30)


@pytest.fixture(scope="session")
def tiny_weights():
    from maxwhisper.weights import load_weights

    return load_weights("tiny.en")


@pytest.fixture(scope="session")
def base_weights():
    from maxwhisper.weights import load_weights

    return load_weights("base")


_models: dict = {}


def max_model(name: str):
    """One compiled MAX model per weights name for the whole session."""
    if name not in _models:
        from maxwhisper import load_model

        _models[name] = load_model(name, verbose=False)
    return _models[name]
