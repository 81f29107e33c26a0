"""Measure start-up: `python -m maxwhisper.startup [MODEL] [AUDIO]`.

Prints the seconds from process start (as the kernel recorded it) to: imports done, compiled
graphs loaded, and the first decoded token. Run it with an empty cache
(MAXWHISPER_CACHE_DIR and MODULAR_CACHE_DIR pointing at new folders) for the cold start.
"""

from __future__ import annotations

import os
import sys
import time


def process_start_time() -> float:
    """Wall-clock time at which this process started (from /proc)."""
    with open("/proc/self/stat") as handle:
        start_ticks = int(handle.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as handle:
        uptime = float(handle.read().split()[0])
    return time.time() - uptime + start_ticks / os.sysconf("SC_CLK_TCK")


def main() -> None:
    started = process_start_time()
    model_name = sys.argv[1] if len(sys.argv) > 1 else "tiny.en"
    import numpy as np

    from . import audio as A
    from . import get_tokenizer, load_model
    from .settings import speech_dir

    path = sys.argv[2] if len(sys.argv) > 2 else speech_dir() / "jfk.wav"
    imported = time.time()
    model = load_model(model_name)
    loaded = time.time()
    mel = A.log_mel_spectrogram(A.pad_or_trim(A.load_audio(path)))
    features = model.encode(mel[None])
    sot = get_tokenizer(model.dims.is_multilingual).sot
    logits = model.decode_step(np.array([[sot]]), features, model.new_cache(1), [-1])
    first_token = int(logits[0, -1].argmax())
    done = time.time()
    print(f"imports {imported - started:.2f} s, graphs loaded {loaded - started:.2f} s "
          f"({model.report.entries}), first token ({first_token}) {done - started:.2f} s "
          "after process start")


if __name__ == "__main__":
    main()
