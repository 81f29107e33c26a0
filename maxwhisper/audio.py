"""Audio front end: load any audio to 16 kHz mono, Whisper's log-mel spectrogram in numpy.

Names, constants and semantics follow `whisper.audio`, so the arrays are interchangeable with
openai-whisper's. The mel filterbank is computed here (Slaney mel scale and area normalisation,
as `librosa.filters.mel` does, which is how Whisper's bundled `mel_filters.npz` was made).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
from threadpoolctl import ThreadpoolController

from .errors import AudioError

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_LENGTH = 30
N_SAMPLES = CHUNK_LENGTH * SAMPLE_RATE  # 480000 samples in a 30-second window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames in a window
N_SAMPLES_PER_TOKEN = HOP_LENGTH * 2  # the conv stem has stride 2
STFT_BLOCK = 2048  # frames per block of the log-mel computation (about 20 s of audio)
# log-mel blocks `LogMelStream` keeps from its first pass (0.66 MB each for 80 mels: ~31 MB, 16
# min of audio), so a file up to that length is transformed once, not twice; longer files keep
# the most recent blocks (a window spans at most three)
MEL_CACHE_BLOCKS = 48
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 10 ms per mel frame
TOKENS_PER_SECOND = SAMPLE_RATE // N_SAMPLES_PER_TOKEN  # 20 ms per audio position

SILENCE_PEAK = 1e-4  # below this peak amplitude a clip holds nothing audible


def load_audio(path: str | Path, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read wav/flac/ogg/mp3 (any rate, any channels) as mono float32 at `sr` Hz in [-1, 1].

    Raises AudioError naming the file when it is missing, a folder, not audio, or empty.
    """
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    audio, rate = _decode(path)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    if audio.size == 0:
        raise AudioError(f"{path}: contains no audio samples")
    if rate != sr:
        import soxr

        audio = soxr.resample(audio, rate, sr, quality="HQ")
    return np.ascontiguousarray(audio, dtype=np.float32)


def _decode(path: Path) -> tuple[np.ndarray, int]:
    import soundfile

    try:
        return soundfile.read(str(path), dtype="float32", always_2d=False)
    except Exception as first:  # libsndfile cannot read it; try audioread via librosa (mp3 etc.)
        try:
            import warnings

            try:
                import librosa  # in the [notebooks] extra; the core reads what libsndfile reads
            except ImportError:
                raise AudioError(f"{path}: not audio that libsndfile reads ({first}); for other "
                                 "formats (m4a, ...) install librosa") from None

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return librosa.load(str(path), sr=None, mono=False)
        except AudioError:
            raise
        except Exception:
            raise AudioError(f"{path}: not a readable audio file ({first})") from None


def is_silent(audio: np.ndarray) -> bool:
    return audio.size == 0 or float(np.max(np.abs(audio))) < SILENCE_PEAK


def pad_or_trim(array: np.ndarray, length: int = N_SAMPLES, *, axis: int = -1) -> np.ndarray:
    """Pad with zeros or trim to `length` along `axis`, as the encoder expects."""
    if array.shape[axis] > length:
        return np.take(array, np.arange(length), axis=axis)
    if array.shape[axis] < length:
        widths = [(0, 0)] * array.ndim
        widths[axis] = (0, length - array.shape[axis])
        return np.pad(array, widths)
    return array


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    mels = freq / f_sp
    return np.where(freq >= min_log_hz,
                    min_log_mel + np.log(np.maximum(freq, min_log_hz) / min_log_hz) / logstep, mels)


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    f_sp, min_log_hz = 200.0 / 3, 1000.0
    min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
    return np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)),
                    f_sp * mels)


@lru_cache(maxsize=4)
def mel_filters(n_mels: int = 80) -> np.ndarray:
    """(n_mels, N_FFT/2+1) triangular filters with Slaney area normalisation."""
    if n_mels not in (80, 128):
        raise ValueError(f"n_mels must be 80 or 128, got {n_mels}")
    fft_freqs = np.fft.rfftfreq(N_FFT, 1.0 / SAMPLE_RATE)
    mel_points = np.linspace(_hz_to_mel(0.0), _hz_to_mel(SAMPLE_RATE / 2), n_mels + 2)
    hz_points = _mel_to_hz(mel_points)
    widths = np.diff(hz_points)
    ramps = hz_points[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]
    return weights.astype(np.float32)


def _hann_window(n: int) -> np.ndarray:
    """Periodic Hann window, as torch.hann_window(n)."""
    return (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)).astype(np.float32)


def log_mel_spectrogram(audio: np.ndarray | str | Path, n_mels: int = 80,
                        padding: int = 0) -> np.ndarray:
    """Whisper's log-mel spectrogram, (n_mels, n_frames) float32.

    `padding` zero samples are appended first (Whisper pads by N_SAMPLES so the last window
    is complete). The STFT is centred with reflect padding and its last frame dropped, as
    `torch.stft(...)[..., :-1]` in openai-whisper.
    """
    if isinstance(audio, (str, Path)):
        audio = load_audio(audio)
    audio = np.asarray(audio, dtype=np.float32)
    if padding > 0:
        audio = np.pad(audio, (0, padding))
    if audio.size < N_FFT // 2 + 1:  # reflect padding needs more samples than half a frame
        audio = np.pad(audio, (0, N_FFT // 2 + 1 - audio.size))
    padded = np.pad(audio, (N_FFT // 2, N_FFT // 2), mode="reflect")
    n_frames = (padded.size - N_FFT) // HOP_LENGTH  # the STFT's last frame is dropped
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, N_FFT), strides=(padded.strides[0] * HOP_LENGTH, padded.strides[0]))
    # in blocks of frames: the same numbers, without a file-sized complex spectrum (for long
    # audio, allocating and faulting in those arrays cost more than the FFT itself)
    log_spec = np.empty((n_mels, n_frames), dtype=np.float32)
    for start in range(0, n_frames, STFT_BLOCK):
        block = slice(start, min(start + STFT_BLOCK, n_frames))
        log_spec[:, block] = _log_power(frames[block], n_mels)
    return _clamp_and_scale(log_spec, log_spec.max())


def _log_power(frames: np.ndarray, n_mels: int) -> np.ndarray:
    """(frames, N_FFT) windows of samples -> (n_mels, frames) log10 mel power (one block: the
    streamed log-mel calls this with the same blocks, so its numbers are the same)."""
    spectrum = np.fft.rfft(frames * _hann_window(N_FFT), axis=-1)  # (frames, 201)
    power = (spectrum.real**2 + spectrum.imag**2).astype(np.float32)
    # one BLAS thread (the same bits): OpenBLAS's second thread spins on for a while after a
    # product, at normal priority, on a core that MAX's workers (niced) need for the next graph:
    # 0.2-0.25 s of CPU in a 229-s transcription, none with this. The batched mode, alternated
    # processes with OPENBLAS_NUM_THREADS 1 against 2: 4.22-4.54 against 4.36-4.77 s (small,
    # near this machine's noise)
    with _blas_controller().limit(limits=1, user_api="blas"):
        mel = mel_filters(n_mels) @ power.T
    return np.log10(np.maximum(mel, 1e-10))


@lru_cache(maxsize=1)
def _blas_controller() -> ThreadpoolController:
    """threadpoolctl's view of the BLAS libraries loaded (found once: ~1.5 ms)."""
    return ThreadpoolController()


def _clamp_and_scale(log_spec: np.ndarray, peak: np.float32) -> np.ndarray:
    """Whisper's dynamic range (8 below the file's maximum) and scaling."""
    log_spec = np.maximum(log_spec, peak - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def stream_audio(path: str | Path, sr: int = SAMPLE_RATE,
                 block_frames: int = 1 << 20) -> Iterator[np.ndarray]:
    """The file as mono float32 blocks at `sr` Hz, read and resampled piece by piece (soxr's
    streaming resampler): the samples, joined, equal `load_audio`'s (tested). Formats that
    libsndfile cannot read are loaded whole."""
    import soundfile

    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: no such file")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, not an audio file")
    try:
        rate = soundfile.info(str(path)).samplerate
        blocks = soundfile.blocks(str(path), blocksize=block_frames, dtype="float32",
                                  always_2d=True)
    except Exception:
        yield load_audio(path, sr)
        return
    resampler = None
    if rate != sr:
        import soxr

        resampler = soxr.ResampleStream(rate, sr, 1, dtype="float32", quality="HQ")
    pending = None  # one block behind, so the resampler knows which block is the last
    for block in blocks:
        if pending is not None:
            yield _mono(pending) if resampler is None else resampler.resample_chunk(
                _mono(pending))
        pending = block
    if pending is None:
        raise AudioError(f"{path}: contains no audio samples")
    last = _mono(pending)
    yield last if resampler is None else resampler.resample_chunk(last, last=True)


def sample_count(path: str | Path, sr: int = SAMPLE_RATE) -> int:
    """How many samples at `sr` Hz the file holds (from its header when libsndfile reads it)."""
    import soundfile

    try:
        info = soundfile.info(str(path))
        return round(info.frames * sr / info.samplerate)
    except Exception:
        return len(load_audio(path, sr))


def file_is_silent(path: str | Path) -> bool:
    """`is_silent` over a file read in blocks (no whole-file array)."""
    return all(is_silent(block) for block in stream_audio(path))


def _mono(block: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(block.mean(axis=1) if block.shape[1] > 1 else block[:, 0])


class AudioSpool:
    """A file's 16 kHz samples in a temporary file, written block by block as `stream_audio`
    reads them (`on_block` sees each block on the way, e.g. a VAD), then read back by range:
    memory stays at a block however long the file is."""

    def __init__(self, path: str | Path, on_block=None):
        import tempfile

        self._file = tempfile.TemporaryFile()
        self.n_samples, self.peak = 0, 0.0
        for block in stream_audio(path):
            block = np.asarray(block, np.float32)
            self._file.write(block.tobytes())
            self.n_samples += len(block)
            if len(block):
                self.peak = max(self.peak, float(np.max(np.abs(block))))
            if on_block is not None:
                on_block(block)
        if self.n_samples == 0:
            raise AudioError(f"{path}: contains no audio samples")

    def read(self, start: int, stop: int) -> np.ndarray:
        """Samples [start, stop) (clipped to the file)."""
        start, stop = max(0, start), min(stop, self.n_samples)
        if stop <= start:
            return np.zeros(0, np.float32)
        self._file.seek(start * 4)
        return np.frombuffer(self._file.read((stop - start) * 4), np.float32).copy()

    def close(self) -> None:
        self._file.close()


class LogMelStream:
    """Whisper's log-mel of an audio file (with `padding` zero samples after it), made window
    by window: the 16 kHz samples go to an `AudioSpool` in a first pass, which also finds the
    maximum that Whisper's clamp needs (8 below the whole file's maximum); `mel[:, a:b]` then
    computes the blocks it needs (STFT_BLOCK frames, the blocks `log_mel_spectrogram` uses).
    The first pass's blocks are kept up to MEL_CACHE_BLOCKS (~31 MB), so memory stays bounded
    however long the file is, and every frame equals
    `log_mel_spectrogram(load_audio(path), n_mels, padding)`'s (tested).
    """

    def __init__(self, path: str | Path, n_mels: int = 80, padding: int = 0):
        self.n_mels = n_mels
        self.spool = AudioSpool(path)
        self.n_samples, self.peak = self.spool.n_samples, self.spool.peak
        # the signal: the samples, `padding` zeros, and as many more as the STFT needs
        self.length = max(self.n_samples + padding, N_FFT // 2 + 1)
        self.n_frames = self.length // HOP_LENGTH
        self._blocks: dict[int, np.ndarray] = {}
        self.max = max(self._log_block(b).max()
                       for b in range(-(-self.n_frames // STFT_BLOCK)))

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_mels, self.n_frames)

    def __getitem__(self, key) -> np.ndarray:
        rows, frames = key if isinstance(key, tuple) and len(key) == 2 else (None, None)
        if rows != slice(None) or not isinstance(frames, slice) or frames.step not in (None, 1):
            raise IndexError("a LogMelStream gives mel[:, start:stop]")
        start, stop, _ = frames.indices(self.n_frames)
        if stop <= start:
            return np.zeros((self.n_mels, 0), np.float32)
        first, last = start // STFT_BLOCK, (stop - 1) // STFT_BLOCK
        raw = np.concatenate([self._log_block(b) for b in range(first, last + 1)], axis=1)
        offset = first * STFT_BLOCK
        return _clamp_and_scale(raw[:, start - offset:stop - offset], self.max)

    def _log_block(self, index: int) -> np.ndarray:
        if index not in self._blocks:
            if len(self._blocks) >= MEL_CACHE_BLOCKS:
                self._blocks.pop(next(iter(self._blocks)))
            start = index * STFT_BLOCK
            count = min(STFT_BLOCK, self.n_frames - start)
            # the centred STFT's frame f is padded[f*HOP : f*HOP + N_FFT], padded being the
            # signal reflected by N_FFT/2 at both ends
            padded = self._padded(start * HOP_LENGTH, (start + count - 1) * HOP_LENGTH + N_FFT)
            frames = np.lib.stride_tricks.as_strided(
                padded, shape=(count, N_FFT), strides=(padded.strides[0] * HOP_LENGTH,
                                                       padded.strides[0]))
            self._blocks[index] = _log_power(frames, self.n_mels)
        return self._blocks[index]

    def _padded(self, start: int, stop: int) -> np.ndarray:
        """padded[start:stop], padded = np.pad(signal, N_FFT // 2, mode="reflect")."""
        half, last = N_FFT // 2, self.length - 1
        index = np.arange(start, stop) - half
        index = np.abs(index)  # reflect at the start: signal[-i] -> signal[i]
        index = np.where(index > last, 2 * last - index, index)  # and at the end
        low, high = int(index.min()), int(index.max()) + 1
        window = np.zeros(high - low, np.float32)  # beyond the samples: the zero padding
        samples = self.spool.read(low, high)
        window[:len(samples)] = samples
        return window[index - low]

    def close(self) -> None:
        self.spool.close()


def wav_bytes(samples: np.ndarray) -> bytes:
    """16 kHz samples as the bytes of a WAV file (for players in notebooks and pages)."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, samples, SAMPLE_RATE, format="WAV")
    return buffer.getvalue()
