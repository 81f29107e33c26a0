"""Voice activity detection: where the speech is, so silence and noise are not transcribed.

The network is Silero VAD v6 in the ONNX export faster-whisper ships (`assets/`, MIT), run with
onnxruntime; nothing here imports torch, faster-whisper or ctranslate2. The rules that turn its
per-window probabilities into speech regions are faster-whisper's (`VadOptions`, the same
defaults), so both engines cut the same audio the same way (tested on the speech set).

- `speech_probabilities(audio)`: one probability per 32 ms window (512 samples at 16 kHz), the
  LSTM state carried across windows; `SpeechProbabilities` does the same over blocks, for audio
  that is read piece by piece.
- `speech_regions(probabilities, n_samples, options)`: [start, end) sample ranges of speech,
  padded, short pauses bridged, long regions split.
- `segments_in_speech`: the VAD as a gate (what `--vad` does): transcripts keep only the
  segments that meet speech.
- `SpeechMap`: times in the concatenated speech back to times in the file (`--vad-filter`,
  faster-whisper's `vad_filter`).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE

WINDOW = 512  # samples a probability covers (32 ms)
CONTEXT = 64  # samples of the previous window the network sees before each window
MODEL_PATH = Path(__file__).resolve().parent / "assets" / "silero_vad_v6.onnx"
BLOCK_WINDOWS = 10000  # windows per onnxruntime call (the state carries across calls)


@dataclass(frozen=True)
class VadOptions:
    """faster-whisper's options and defaults. threshold: a window at or above it is speech;
    neg_threshold (default threshold - 0.15): below it, silence; between them a window keeps
    the state it is in. Regions shorter than min_speech_duration_ms are dropped, pauses shorter
    than min_silence_duration_ms do not end a region, a region longer than max_speech_duration_s
    is split (at a pause of 98 ms or more if there is one), and every region gets speech_pad_ms
    on each side (half the gap each where two regions are closer than two pads)."""

    threshold: float = 0.5
    neg_threshold: float | None = None
    min_speech_duration_ms: int = 0
    max_speech_duration_s: float = float("inf")
    min_silence_duration_ms: int = 2000
    speech_pad_ms: int = 400


@lru_cache(maxsize=1)
def _session():
    try:
        import onnxruntime
    except ImportError:
        from .errors import MaxWhisperError

        raise MaxWhisperError("VAD needs onnxruntime: pip install 'maxwhisper[vad]'") from None
    options = onnxruntime.SessionOptions()
    # one thread: alone, two threads take 0.35 s for 229 s of speech against 0.45 s on one,
    # but in a process that has run MAX (whose runtime threads keep waking on both cores) two
    # threads took 0.34 or 0.61 s by the run and one thread 0.41-0.44 s every time (measured,
    # the batched mode, 2 cores); the probabilities are the same
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 4
    return onnxruntime.InferenceSession(str(MODEL_PATH), sess_options=options,
                                        providers=["CPUExecutionProvider"])


class SpeechProbabilities:
    """Silero's probabilities over audio fed in blocks (any lengths): the network's LSTM state
    and the last CONTEXT samples carry from one window to the next, so feeding a file in
    pieces gives the same numbers as feeding it whole."""

    def __init__(self):
        self.state = (np.zeros((1, 1, 128), np.float32), np.zeros((1, 1, 128), np.float32))
        self.context = np.zeros(CONTEXT, np.float32)
        self.pending = np.zeros(0, np.float32)

    def feed(self, samples: np.ndarray) -> np.ndarray:
        """Probabilities of the whole windows completed by `samples`."""
        samples = np.concatenate([self.pending, np.asarray(samples, np.float32)])
        whole = len(samples) // WINDOW * WINDOW
        self.pending = samples[whole:]
        return self._run(samples[:whole].reshape(-1, WINDOW))

    def finish(self) -> np.ndarray:
        """The last, zero-padded window. As faster-whisper does, a file whose length is a whole
        number of windows still gets one window of zeros at its end."""
        last = np.zeros(WINDOW, np.float32)
        last[:len(self.pending)] = self.pending
        last[-CONTEXT:] = 0  # faster-whisper zeroes these in place (its context trick); so do we
        self.pending = np.zeros(0, np.float32)
        return self._run(last[None])

    def _run(self, windows: np.ndarray) -> np.ndarray:
        if len(windows) == 0:
            return np.zeros(0, np.float32)
        contexts = np.concatenate([self.context[None], windows[:-1, -CONTEXT:]])
        self.context = windows[-1, -CONTEXT:].copy()
        inputs = np.ascontiguousarray(np.concatenate([contexts, windows], axis=1))
        out = []
        for start in range(0, len(inputs), BLOCK_WINDOWS):
            probs, h, c = _session().run(None, {"input": inputs[start:start + BLOCK_WINDOWS],
                                                "h": self.state[0], "c": self.state[1]})
            self.state = (h, c)
            out.append(np.asarray(probs, np.float32).reshape(-1))
        return np.concatenate(out)


def speech_probabilities(audio: np.ndarray) -> np.ndarray:
    """One speech probability per WINDOW samples of 16 kHz audio."""
    stream = SpeechProbabilities()
    return np.concatenate([stream.feed(audio), stream.finish()])


def speech_regions(probabilities: np.ndarray, n_samples: int,
                   options: VadOptions = VadOptions()) -> list[dict]:
    """[{"start", "end"}] sample ranges of speech (faster-whisper's rules, see VadOptions)."""
    rate = SAMPLE_RATE
    threshold = options.threshold
    low = options.neg_threshold if options.neg_threshold is not None else max(threshold - 0.15,
                                                                              0.01)
    pad = rate * options.speech_pad_ms / 1000
    min_speech = rate * options.min_speech_duration_ms / 1000
    min_silence = rate * options.min_silence_duration_ms / 1000
    max_speech = rate * options.max_speech_duration_s - WINDOW - 2 * pad
    split_silence = rate * 98 / 1000  # a pause this long is a place to split a long region

    regions: list[dict] = []
    current: dict = {}
    speaking = False
    silence_start = 0  # where the running pause began (0: none)
    last_split = next_start = 0  # a pause to split at, and where speech resumed after it
    for i, p in enumerate(probabilities):
        at = WINDOW * i
        if p >= threshold and silence_start:
            silence_start = 0
            if next_start < last_split:
                next_start = at
        if p >= threshold and not speaking:
            speaking, current = True, {"start": at}
            continue
        if speaking and at - current["start"] > max_speech:  # too long: split it
            if last_split:
                regions.append({**current, "end": last_split})
                current = {}
                if next_start < last_split:  # still in that pause
                    speaking = False
                else:
                    current = {"start": next_start}
                last_split = next_start = silence_start = 0
            else:  # no pause to split at: cut here
                regions.append({**current, "end": at})
                current, speaking = {}, False
                last_split = next_start = silence_start = 0
                continue
        if p < low and speaking:
            silence_start = silence_start or at
            if at - silence_start > split_silence:
                last_split = silence_start
            if at - silence_start < min_silence:
                continue
            if silence_start - current["start"] > min_speech:
                regions.append({**current, "end": silence_start})
            current, speaking = {}, False
            last_split = next_start = silence_start = 0
    if current and n_samples - current["start"] > min_speech:
        regions.append({**current, "end": n_samples})
    return _pad(regions, pad, n_samples)


def _pad(regions: list[dict], pad: float, n_samples: int) -> list[dict]:
    """Widen each region by `pad` samples a side; two regions closer than two pads meet in the
    middle of the gap."""
    for i, region in enumerate(regions):
        if i == 0:
            region["start"] = int(max(0, region["start"] - pad))
        if i + 1 < len(regions):
            after = regions[i + 1]
            gap = after["start"] - region["end"]
            if gap < 2 * pad:
                region["end"] += int(gap // 2)
                after["start"] = int(max(0, after["start"] - gap // 2))
            else:
                region["end"] = int(min(n_samples, region["end"] + pad))
                after["start"] = int(max(0, after["start"] - pad))
        else:
            region["end"] = int(min(n_samples, region["end"] + pad))
    return regions


def speech_timestamps(audio: np.ndarray, options: VadOptions = VadOptions()) -> list[dict]:
    """The speech regions of 16 kHz `audio`, in samples."""
    return speech_regions(speech_probabilities(audio), len(audio), options)


def collect_speech(audio: np.ndarray, regions: list[dict]) -> np.ndarray:
    """The speech regions one after the other (empty when there are none)."""
    if not regions:
        return np.zeros(0, np.float32)
    return np.concatenate([audio[r["start"]:r["end"]] for r in regions])


def segments_in_speech(segments: list[dict], regions: list[dict],
                       sample_rate: int = SAMPLE_RATE) -> list[dict]:
    """The segments whose time span meets a speech region (text elsewhere was invented from
    noise or silence)."""
    spans = [(r["start"] / sample_rate, r["end"] / sample_rate) for r in regions]
    return [s for s in segments if any(s["start"] <= end and s["end"] >= start
                                       for start, end in spans)]


class SpeechMap:
    """Times in the concatenated speech back to times in the file: a time inside region k moves
    by the silence removed before region k."""

    def __init__(self, regions: list[dict], sample_rate: int = SAMPLE_RATE):
        self.sample_rate = sample_rate
        self.region_ends: list[int] = []  # in concatenated samples
        self.removed_before: list[float] = []  # seconds
        removed = previous_end = 0
        for region in regions:
            removed += region["start"] - previous_end
            previous_end = region["end"]
            self.region_ends.append(region["end"] - removed)
            self.removed_before.append(removed / sample_rate)

    def region_of(self, time: float, is_end: bool = False) -> int:
        sample = int(time * self.sample_rate)
        if is_end and sample in self.region_ends:  # an end exactly at a region's end stays in it
            return self.region_ends.index(sample)
        return min(bisect.bisect(self.region_ends, sample), len(self.region_ends) - 1)

    def file_time(self, time: float, region: int | None = None, is_end: bool = False) -> float:
        region = self.region_of(time, is_end) if region is None else region
        return round(self.removed_before[region] + time, 2)

    def restore(self, segments: list[dict]) -> list[dict]:
        """Segments (and their words) from speech time to file time, as faster-whisper maps
        them: each word by the region of its middle, a worded segment spans its words."""
        for segment in segments:
            words = segment.get("words")
            if words:
                for word in words:
                    region = self.region_of((word["start"] + word["end"]) / 2)
                    word["start"] = self.file_time(word["start"], region)
                    word["end"] = self.file_time(word["end"], region)
                segment["start"], segment["end"] = words[0]["start"], words[-1]["end"]
            else:
                segment["start"] = self.file_time(segment["start"])
                segment["end"] = self.file_time(segment["end"], is_end=True)
        return segments
