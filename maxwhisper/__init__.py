"""MAX-Whisper: OpenAI's Whisper on Modular's MAX Graph API, with real weights.

The names follow openai-whisper: `load_audio`, `log_mel_spectrogram`, `pad_or_trim`,
`get_tokenizer`, `ModelDimensions`, `load_model(name).transcribe(audio)`.
Importing this package imports neither torch nor MAX; `load_model` brings in MAX.
"""

from .audio import load_audio, log_mel_spectrogram, pad_or_trim
from .errors import AudioError, MaxWhisperError, ModelNameError, WeightsError
from .tokenizer import get_tokenizer
from .weights import ModelDimensions, extract, load_weights

__all__ = ["load_audio", "log_mel_spectrogram", "pad_or_trim", "get_tokenizer",
           "ModelDimensions", "load_model", "extract", "load_weights", "MaxWhisperError",
           "AudioError", "WeightsError", "ModelNameError", "available_models"]


def available_models() -> list[str]:
    from .weights import PACKAGED_MODELS

    return list(PACKAGED_MODELS)


def load_model(name: str = "tiny.en", device: str = "auto", dtype: str = "float32",
               verbose: bool = True):
    """A compiled MAX Whisper model: `tiny.en`, `base`, a `.pt`/`.npz` path or a CTranslate2 folder.

    The returned model has `.transcribe(audio, **options)` returning {"text", "segments",
    "language"} like `whisper.transcribe`.
    """
    from .runtime import MaxWhisperModel

    return MaxWhisperModel(load_weights(name), device=device, dtype=dtype, verbose=verbose)
