"""The transcription demo behind notebook 05: choose a clip, play it, transcribe, compare.

The MAX engine runs in the notebook's own process (one compiled model per weights name, kept);
openai-whisper and faster-whisper run in worker processes through `maxwhisper.compare`, so the
kernel never imports torch and the engines do not slow each other down.
"""

from __future__ import annotations

import difflib
import html
import io
import tempfile
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, is_silent, load_audio, wav_bytes
from .engines import ENGINES, MaxEngine
from .errors import AudioError, MaxWhisperError
from .results import TranscribeOptions, Transcription
from .settings import REPO_ROOT
from .speech import manifest, normalize, reference_for, word_error_rate
from .transcribe import format_timestamp
from .word_player import word_player

_engines: dict[tuple[str, str], MaxEngine] = {}


def available_clips() -> dict[str, Path]:
    """Label -> path for the speech set and the project's own demo clips in audio/."""
    clips = {f"{c.name}  ({c.subset}, {c.duration_s:.1f} s)": c.path for c in manifest()}
    for path in sorted((REPO_ROOT / "audio").glob("*.wav")):
        clips[f"{path.name}  (audio/, synthetic)"] = path
    return clips


def transcribe_file(path: str | Path, model: str = "tiny.en", engine: str = "max",
                    beam_size: int = 1, device: str = "auto",
                    word_timestamps: bool = False, vad: bool = False) -> Transcription:
    """Transcribe one file with one engine; MAX in-process, baselines in a worker process.
    `vad`: the VAD gate (noise and tones give no text; speech keeps its text)."""
    samples = load_audio(path)
    if is_silent(samples):
        raise AudioError(f"{Path(path).name}: audio is silent, nothing to transcribe")
    if engine == "max":
        key = (model, device)
        if key not in _engines:
            _engines[key] = MaxEngine(model, device=device)
        return _engines[key].transcribe(samples, TranscribeOptions(
            beam_size=beam_size, word_timestamps=word_timestamps, vad=vad))
    from .compare import run_engine

    options = {"word_timestamps": True} if word_timestamps else {}
    if vad:
        options["vad"] = True
    record = run_engine(engine, [path], model, beam_size=beam_size, **options)[0]
    record.pop("audio", None)
    record.pop("modules", None)
    return Transcription(**record)


def word_diff_html(reference: str, hypothesis: str) -> str:
    """Normalised words of `hypothesis` against `reference`: missing struck out, extra marked."""
    ref, hyp = normalize(reference).split(), normalize(hypothesis).split()
    parts = []
    for op, a0, a1, b0, b1 in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
        if op == "equal":
            parts.append(html.escape(" ".join(hyp[b0:b1])))
            continue
        if a1 > a0:
            parts.append(f"<del style='color:#b00'>{html.escape(' '.join(ref[a0:a1]))}</del>")
        if b1 > b0:
            parts.append(f"<ins style='color:#070;background:#dfd'>"
                         f"{html.escape(' '.join(hyp[b0:b1]))}</ins>")
    return " ".join(parts)


def report_html(path: str | Path, result: Transcription,
                baselines: dict[str, Transcription] | None = None) -> str:
    """The transcript with timestamped segments, the reference and WER, and the baselines."""
    reference = reference_for(path)
    rows = "".join(
        f"<tr><td style='white-space:nowrap'>[{format_timestamp(s['start'])} &rarr; "
        f"{format_timestamp(s['end'])}]</td><td>{html.escape(s['text'].strip())}</td></tr>"
        for s in result.segments)
    out = [f"<h4>{result.engine} &middot; {result.model} &middot; beam {result.beam_size}: "
           f"{result.audio_seconds:.1f} s of audio in {result.timings['transcribe_s']:.2f} s</h4>",
           f"<p class='maxwhisper-transcript'><b>{html.escape(result.text.strip())}</b></p>",
           f"<table>{rows}</table>"]
    if reference is not None:
        out.append(f"<p><b>Reference:</b> {html.escape(reference)}<br><b>WER:</b> "
                   f"{100 * word_error_rate([reference], [result.text]):.2f}%</p>")
    for name, other in (baselines or {}).items():
        verdict = "identical" if result.text.strip() == other.text.strip() else "differs"
        against = f"{result.engine} ({verdict})"
        out.append(f"<p><b>{name}</b> vs {against}: {word_diff_html(result.text, other.text)}"
                   f"<br><small>{other.timings['transcribe_s']:.2f} s</small></p>")
    return "\n".join(out)


def speech_regions_png(samples: np.ndarray) -> bytes:
    """The waveform with the speech Silero VAD finds shaded, as a PNG."""
    from matplotlib.figure import Figure

    from .vad import speech_timestamps

    figure = Figure(figsize=(9, 1.6))
    axes = figure.subplots()
    step = max(1, len(samples) // 20000)  # a few thousand points draw the same picture
    axes.plot(np.arange(0, len(samples), step) / SAMPLE_RATE, samples[::step], lw=0.4,
              color="#555")
    for region in speech_timestamps(samples):
        axes.axvspan(region["start"] / SAMPLE_RATE, region["end"] / SAMPLE_RATE,
                     color="tab:green", alpha=0.3, lw=0)
    axes.set_xlim(0, len(samples) / SAMPLE_RATE)
    axes.set_yticks([])
    axes.set_xlabel("seconds (green: speech, Silero VAD)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight", dpi=90)
    return buffer.getvalue()


def build_app(model: str = "tiny.en", engine: str = "max", beam_size: int = 1,
              device: str = "auto", compare: bool = True):
    """The ipywidgets app: clip (or upload), player, model, engine, beam, device, Transcribe."""
    import ipywidgets as w

    clips = available_clips()
    clip = w.Dropdown(options=list(clips), description="Clip", layout=w.Layout(width="480px"))
    upload = w.FileUpload(accept="audio/*", multiple=False, description="Upload")
    model_box = w.Dropdown(options=["tiny.en", "base"], value=model, description="Model")
    engine_box = w.Dropdown(options=list(ENGINES), value=engine, description="Engine")
    beam_box = w.BoundedIntText(value=beam_size, min=1, max=10, description="Beam size")
    device_box = w.Dropdown(options=["auto", "cpu", "gpu"], value=device, description="Device")
    compare_box = w.Checkbox(value=compare, description="Compare with the other engines")
    words_box = w.Checkbox(value=True, description="Word timestamps (words follow the audio)")
    vad_box = w.Checkbox(value=False, description="VAD (no text from noise; speech shaded)")
    regions = w.Image(format="png")  # the waveform with the speech regions, when VAD is on
    button = w.Button(description="Transcribe", button_style="primary", icon="play")
    # an Audio widget rather than an Output widget: no output capture, which can hang headless
    player = w.Audio(format="wav", autoplay=False, controls=True)
    player_error = w.HTML()
    result_area = w.HTML()
    words_area = w.VBox()  # the word-by-word player, after a transcription with word times
    status = w.HTML()
    state = {"path": None}

    def selected_path() -> Path:
        if upload.value:
            item = upload.value[0]
            target = Path(tempfile.mkdtemp(prefix="maxwhisper-upload-")) / item["name"]
            target.write_bytes(bytes(item["content"]))
            return target
        return clips[clip.value]

    def show_player(*_):
        try:
            state["path"] = selected_path()
            samples = load_audio(state["path"])
            player.value = wav_bytes(samples)
            regions.value = speech_regions_png(samples) if vad_box.value else b""
            regions.layout.display = None if vad_box.value else "none"
            player_error.value = ""
        except MaxWhisperError as error:
            state["path"] = None
            player_error.value = f"<b style='color:#b00'>{html.escape(str(error))}</b>"

    def on_transcribe(_):
        button.disabled = True
        status.value = "<i>transcribing...</i>"
        try:
            path = state["path"] or selected_path()
            result = transcribe_file(path, model_box.value, engine_box.value, beam_box.value,
                                     device_box.value, words_box.value, vad_box.value)
            others = {}
            if compare_box.value:
                for other in ENGINES:
                    if other != engine_box.value:
                        status.value = f"<i>running {other} for comparison...</i>"
                        others[other] = transcribe_file(path, model_box.value, other,
                                                        beam_box.value, device_box.value,
                                                        vad=vad_box.value)
            result_area.value = report_html(path, result, others)
            words_area.children = ([word_player(load_audio(path), result.segments)]
                                   if words_box.value else [])
            status.value = ""
        except (MaxWhisperError, ValueError) as error:
            status.value = f"<b style='color:#b00'>{html.escape(str(error))}</b>"
        finally:
            button.disabled = False

    clip.observe(show_player, names="value")
    upload.observe(show_player, names="value")
    vad_box.observe(show_player, names="value")
    button.on_click(on_transcribe)
    show_player()
    controls = w.VBox([w.HBox([clip, upload]), player, regions, player_error,
                       w.HBox([model_box, engine_box]), w.HBox([beam_box, device_box]),
                       w.HBox([compare_box, words_box, vad_box]), button, status, result_area,
                       words_area])
    controls.transcribe_button = button  # for scripted use
    return controls
