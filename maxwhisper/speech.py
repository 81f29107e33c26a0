"""The evaluation speech set (`settings.speech_dir()`) and word error rate.

WER uses openai-whisper's `EnglishTextNormalizer` on both sides (LibriSpeech references are
upper case without punctuation, LJ Speech and JFK keep both). The normaliser module is loaded
from openai-whisper's files without importing the `whisper` package, so measuring WER does not
pull torch into a MAX process.
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from .settings import speech_dir


@dataclass(frozen=True)
class Clip:
    path: Path
    duration_s: float
    sample_rate: int
    subset: str
    reference: str

    @property
    def name(self) -> str:
        return self.path.name


def manifest(folder: Path | None = None) -> list[Clip]:
    """Every clip in MANIFEST.tsv (tab-separated, no quoting), in file order."""
    folder = Path(folder) if folder else speech_dir()
    table = folder / "MANIFEST.tsv"
    if not table.is_file():
        raise FileNotFoundError(f"no MANIFEST.tsv in {folder}; set MAXWHISPER_SPEECH_DIR")
    with table.open(newline="", encoding="utf-8") as handle:
        rows = csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        return [Clip(folder / r["file"], float(r["duration_s"]), int(r["sample_rate"]),
                     r["subset"], r["reference_text"]) for r in rows]


def clip(name: str, folder: Path | None = None) -> Clip:
    for c in manifest(folder):
        if c.name == name:
            return c
    raise KeyError(f"{name} is not in the speech manifest")


def reference_for(path: str | Path) -> str | None:
    """The reference transcript of a speech-set file, or None for any other audio."""
    path = Path(path)
    try:
        by_name = {c.name: c for c in manifest(path.parent)}
    except FileNotFoundError:
        return None
    found = by_name.get(path.name)
    return found.reference if found else None


@lru_cache(maxsize=1)
def english_normalizer():
    """openai-whisper's EnglishTextNormalizer, loaded without importing torch."""
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("openai-whisper is needed for its English text normaliser")
    folder = Path(next(iter(spec.submodule_search_locations))) / "normalizers"
    name = "_maxwhisper_whisper_normalizers"
    if name not in sys.modules:
        module_spec = importlib.util.spec_from_file_location(
            name, folder / "__init__.py", submodule_search_locations=[str(folder)])
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        module_spec.loader.exec_module(module)
    return sys.modules[name].EnglishTextNormalizer()


def normalize(text: str) -> str:
    return english_normalizer()(text)


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER (total edits / total reference words) after normalising both sides."""
    import jiwer

    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r.strip()]
    return float(jiwer.wer([refs[i] for i in keep], [hyps[i] for i in keep]))
