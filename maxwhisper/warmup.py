"""Compile (or reload from the cache) the MAX graphs of the given models, two at a time.

MAX compiles a graph on one core, so the encoder and decoder of each model are compiled in
two processes side by side. A second run finds every graph in the cache and takes seconds.
"""

from __future__ import annotations

import subprocess
import sys
import time


def warm(model: str, kind: str) -> None:
    from .runtime import MaxWhisperModel
    from .weights import load_weights

    compiled = MaxWhisperModel(load_weights(model), graphs=(kind,))
    how, seconds = compiled.report.entries[kind]
    print(f"warmup: {model} {kind}: {how} in {seconds:.1f} s", flush=True)


def main(models: list[str]) -> int:
    start = time.perf_counter()
    failures = 0
    for model in models:
        procs = [subprocess.Popen([sys.executable, "-m", "maxwhisper.warmup", "--one", model, kind])
                 for kind in ("encoder", "decoder")]
        failures += sum(p.wait() != 0 for p in procs)
    print(f"warmup: done in {time.perf_counter() - start:.1f} s", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--one"]:
        warm(sys.argv[2], sys.argv[3])
    else:
        sys.exit(main(sys.argv[1:] or ["tiny.en"]))
