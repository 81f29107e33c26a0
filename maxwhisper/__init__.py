"""MAX-Whisper: OpenAI's Whisper on Modular's MAX Graph API, with real weights.

The names follow openai-whisper, so `import maxwhisper as whisper` runs code written for it:
`load_model(name).transcribe(audio)`, `available_models`, `load_audio`, `log_mel_spectrogram`,
`pad_or_trim`, `transcribe`, `decode`, `detect_language`, `DecodingOptions`, `DecodingResult`,
`ModelDimensions`, and the `audio`, `decoding` and `tokenizer` modules.
Importing this package imports neither torch nor MAX; `load_model` brings in MAX.
"""

from . import audio, decoding, tokenizer
from .audio import load_audio, log_mel_spectrogram, pad_or_trim
from .decoding import DecodingOptions, DecodingResult
from .errors import AudioError, MaxWhisperError, ModelNameError, WeightsError
from .tokenizer import get_tokenizer
from .weights import ModelDimensions, extract, load_weights

__all__ = ["load_audio", "log_mel_spectrogram", "pad_or_trim", "get_tokenizer",
           "ModelDimensions", "DecodingOptions", "DecodingResult", "load_model", "transcribe",
           "decode", "detect_language", "extract", "load_weights", "MaxWhisperError",
           "AudioError", "WeightsError", "ModelNameError", "available_models", "audio",
           "decoding", "tokenizer"]


def available_models() -> list[str]:
    """The model names `load_model` finds without a path (the packaged weights)."""
    from .weights import PACKAGED_MODELS

    return list(PACKAGED_MODELS)


def load_model(name: str = "tiny.en", device=None, download_root: str | None = None,
               in_memory: bool = False, dtype: str = "float32", verbose: bool = True):
    """A compiled MAX Whisper model: `tiny.en`, `base`, a `.pt`/`.npz` path or a CTranslate2 folder.

    openai-whisper's signature: `device` None picks the accelerator when MAX sees one ("cuda"
    means the GPU); `download_root` is a folder searched for `<name>.pt` (nothing is ever
    downloaded: a name found nowhere is a one-line error); `in_memory` is accepted and has no
    effect (the weights are always read into memory). The returned model has
    `.transcribe(audio, **options)` returning {"text", "segments", "language"} like
    `whisper.transcribe`.
    """
    from pathlib import Path

    from .runtime import MaxWhisperModel, device_name

    if download_root is not None and (Path(download_root).expanduser() / f"{name}.pt").is_file():
        name = str(Path(download_root).expanduser() / f"{name}.pt")
    return MaxWhisperModel(load_weights(name), device=device_name(device), dtype=dtype,
                           verbose=verbose)


def transcribe(model, audio, **options) -> dict:
    """openai-whisper's `whisper.transcribe(model, audio, ...)`: `model.transcribe(audio, ...)`."""
    return model.transcribe(audio, **options)


def decode(model, mel, options: DecodingOptions | None = None, **kwargs):
    """Decode one (n_mels, 3000) window, or a batch of them (a list of results), as
    openai-whisper's `whisper.decode`; keyword arguments replace fields of `options`."""
    return model.decode(mel, options, **kwargs)


def detect_language(model, mel, tokenizer=None):
    """The most likely language token and every language's probability, for one window
    (a token and a dict) or a batch (an array and a list of dicts), as openai-whisper's."""
    return model.detect_language(mel, tokenizer)
