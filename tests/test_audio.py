"""The audio front end: loading any audio to 16 kHz mono, and Whisper's exact log-mel."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile

from maxwhisper import audio as A
from maxwhisper.errors import AudioError


def test_mel_filters_equal_whispers_bundled_filters():
    whisper_assets = pytest.importorskip("whisper").__path__[0] + "/assets/mel_filters.npz"
    with np.load(whisper_assets) as bundled:
        for n_mels in (80, 128):
            assert np.abs(A.mel_filters(n_mels) - bundled[f"mel_{n_mels}"]).max() < 1e-6


def test_log_mel_matches_openai_whisper_on_every_clip(speech_clips):
    torch = pytest.importorskip("torch")
    whisper = pytest.importorskip("whisper")
    worst = 0.0
    for clip in speech_clips:
        samples = A.load_audio(clip.path)
        for n_mels, padding in ((80, 0), (80, A.N_SAMPLES), (128, 0)):
            ours = A.log_mel_spectrogram(samples, n_mels, padding=padding)
            ref = whisper.log_mel_spectrogram(torch.from_numpy(samples), n_mels,
                                              padding=padding).numpy()
            assert ours.shape == ref.shape, clip.name
            worst = max(worst, float(np.abs(ours - ref).max()))
    assert worst <= 1e-4, worst


def test_windows_are_padded_or_trimmed_like_whisper(jfk):
    mel = A.log_mel_spectrogram(A.load_audio(jfk.path), padding=A.N_SAMPLES)
    assert mel.shape == (80, A.N_FRAMES + round(jfk.duration_s * A.FRAMES_PER_SECOND))
    assert A.pad_or_trim(mel, A.N_FRAMES).shape == (80, A.N_FRAMES)
    assert A.pad_or_trim(np.ones(10), 4).tolist() == [1, 1, 1, 1]
    assert A.pad_or_trim(np.ones(2), 4).tolist() == [1, 1, 0, 0]


def test_resampling_and_downmixing(tmp_path, speech_clips):
    lj = next(c for c in speech_clips if c.sample_rate == 22050)
    samples = A.load_audio(lj.path)
    assert samples.dtype == np.float32
    assert abs(len(samples) / A.SAMPLE_RATE - lj.duration_s) < 0.01
    tone = np.sin(2 * np.pi * 440 * np.arange(44100) / 44100).astype(np.float32)
    stereo = np.stack([tone, 0.5 * tone], axis=1)
    for fmt in ("wav", "flac", "ogg"):
        path = tmp_path / f"stereo.{fmt}"
        soundfile.write(path, stereo, 44100)
        loaded = A.load_audio(path)
        assert loaded.ndim == 1 and abs(len(loaded) - 16000) <= 1, fmt
        assert abs(np.abs(loaded).max() - 0.75) < 0.05, fmt


def test_bad_audio_gives_clear_errors(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        A.load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="is a directory"):
        A.load_audio(tmp_path)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    with pytest.raises(AudioError, match="not a readable audio file"):
        A.load_audio(text)
    empty = tmp_path / "empty.wav"
    soundfile.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="no audio samples"):
        A.load_audio(empty)
    assert A.is_silent(np.zeros(16000, dtype=np.float32))
    assert not A.is_silent(np.full(16000, 0.1, dtype=np.float32))


def _stereo_44k(tmp_path):
    path = tmp_path / "stereo.flac"
    rng = np.random.default_rng(1)
    soundfile.write(path, (rng.standard_normal((44100 * 7 + 123, 2)) * 0.1).astype(np.float32),
                    44100)
    return path


def test_streamed_samples_equal_the_whole_file_read(tmp_path, speech_clips):
    """Read and resampled in blocks (any block size), the samples equal `load_audio`'s."""
    for path in (_stereo_44k(tmp_path), speech_clips[0].path):
        whole = A.load_audio(path)
        for block_frames in (1000, 65536):
            streamed = np.concatenate(list(A.stream_audio(path, block_frames=block_frames)))
            assert np.array_equal(streamed, whole), (path, block_frames)
        assert A.sample_count(path) == len(whole)


@pytest.mark.parametrize("cached_blocks", [3, A.MEL_CACHE_BLOCKS])
def test_streamed_log_mel_equals_the_whole_file_log_mel(tmp_path, speech_clips, monkeypatch,
                                                        cached_blocks):
    """Window by window from a file read in blocks, the log-mel equals the whole file's, frame
    for frame (the clamp uses the whole file's maximum, found in a first pass), whether blocks
    are computed again (3 kept: the long clip's 12 blocks are evicted and recomputed) or not."""
    monkeypatch.setattr(A, "MEL_CACHE_BLOCKS", cached_blocks)
    tiny = tmp_path / "tiny.wav"
    soundfile.write(tiny, np.full(100, 0.05, np.float32), 16000)
    paths = [c.path for c in speech_clips] + [_stereo_44k(tmp_path), tiny]
    for path in paths:
        for padding in (A.N_SAMPLES, 0):
            whole = A.log_mel_spectrogram(A.load_audio(path), padding=padding)
            stream = A.LogMelStream(path, padding=padding)
            assert stream.shape == whole.shape, path
            pieces = [stream[:, a:a + 1234] for a in range(0, stream.n_frames, 1234)]
            assert np.array_equal(np.concatenate(pieces, axis=1), whole), (path, padding)
            window = slice(2999, 5999)  # a window across block edges, after others
            assert np.array_equal(stream[:, window], whole[:, window]), path
            stream.close()
    with pytest.raises(IndexError):
        A.LogMelStream(tiny)[0]


def test_streamed_log_mel_transforms_a_file_once_when_its_blocks_fit(speech_clips, monkeypatch):
    """The windows of a file up to MEL_CACHE_BLOCKS blocks come from the first pass's blocks:
    no block is transformed twice."""
    calls = []
    power = A._log_power
    monkeypatch.setattr(A, "_log_power", lambda *args: calls.append(1) or power(*args))
    path = max((c.path for c in speech_clips), key=A.sample_count)
    stream = A.LogMelStream(path, padding=A.N_SAMPLES)
    blocks = -(-stream.n_frames // A.STFT_BLOCK)
    assert 3 < blocks <= A.MEL_CACHE_BLOCKS and len(calls) == blocks
    for start in range(0, stream.n_frames, 2900):
        stream[:, start:start + A.N_FRAMES]
    assert len(calls) == blocks
    stream.close()
