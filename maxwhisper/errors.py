"""Errors that MAX-Whisper raises for bad input.

Every user-facing failure (a missing file, audio that is not audio, weights that do not match)
is one of these, so the CLI can print a one-line message instead of a traceback from deep
inside a library.
"""


class MaxWhisperError(Exception):
    """Base class: the message names the problem and the offending path or value."""


class AudioError(MaxWhisperError):
    """The audio file is missing, unreadable, not audio, empty or silent."""


class WeightsError(MaxWhisperError):
    """The weights are missing, corrupt, or do not match the expected model."""


class ModelNameError(MaxWhisperError):
    """The model name is neither a known packaged model nor an existing file."""
