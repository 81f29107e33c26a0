"""Run an engine over many clips in its own process, and keep the baselines' answers on disk.

Tests, notebooks and the WER report compare MAX with openai-whisper and faster-whisper. Each
engine runs in a worker process (`python -m maxwhisper.compare SPEC`), so torch, CTranslate2
and MAX never share a process. Baseline results are cached under `build/reference-cache/`,
keyed by engine, package versions, weights checksum, options and each file's checksum: the
references are computed by running the baselines, once, and re-run whenever any input changes.
MAX results are never cached.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

from .settings import build_dir


def _file_sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _cache_path(spec: dict) -> Path:
    from .weights import load_weights

    versions = {p: metadata.version(p) for p in ("openai-whisper", "faster-whisper", "torch",
                                                  "ctranslate2")}
    key = {"spec": spec, "versions": versions,
           "weights": load_weights(spec["model"], verify=False).content_sha256,
           "files": [_file_sha(a) for a in spec["audio"]]}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
    return build_dir() / "reference-cache" / f"{spec['engine']}-{digest}.json"


def run_engine(engine: str, audio: list[str | Path], model: str = "tiny.en",
               use_cache: bool | None = None, **options) -> list[dict]:
    """Transcribe every file with `engine` in a worker process; a list of Transcription dicts."""
    spec = {"engine": engine, "model": model, "audio": [str(Path(a).resolve()) for a in audio],
            "options": options}
    if use_cache is None:
        use_cache = engine != "max"
    cache = _cache_path(spec) if use_cache else None
    if cache is not None and cache.is_file():
        return json.loads(cache.read_text())
    proc = subprocess.run([sys.executable, "-m", "maxwhisper.compare", json.dumps(spec)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} worker failed:\n{proc.stderr[-4000:]}")
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(json.dumps(results))
    return results


def _worker(spec: dict) -> None:
    from .audio import load_audio
    from .engines import load_engine
    from .results import TranscribeOptions

    engine = load_engine(spec["engine"], spec["model"], verbose=False)
    options = TranscribeOptions(**spec["options"])
    results = []
    for path in spec["audio"]:
        result = engine.transcribe(load_audio(path), options)
        record = asdict(result)
        record["audio"] = path
        record["modules"] = sorted(m for m in ("torch", "whisper", "faster_whisper", "ctranslate2")
                                   if m in sys.modules)
        results.append(record)
    print(json.dumps(results))


if __name__ == "__main__":
    _worker(json.loads(sys.argv[1]))
