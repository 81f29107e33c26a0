"""A notebook widget: the audio and its transcript as words that light up while they are spoken.

ipywidgets' own `Audio` cannot tell Python (or the page) where playback is, so this is one small
anywidget: an <audio> element and the words, with a few lines of JavaScript that underline the
word being spoken as the audio plays and seek to a word when it is clicked. The word being
spoken (`current`) and the playback position (`position`) are synced back to the kernel, which
is what the browser test checks.
"""

from __future__ import annotations

import base64

import anywidget
import traitlets

from .audio import wav_bytes

_ESM = """
function render({ model, el }) {
  const audio = document.createElement("audio");
  audio.controls = true;
  audio.className = "maxwhisper-word-audio";
  const text = document.createElement("div");
  text.className = "maxwhisper-words";
  el.append(audio, text);
  let spans = [];

  function draw() {
    audio.src = model.get("audio_src");
    text.replaceChildren();
    spans = model.get("words").map((w, i) => {
      const span = document.createElement("span");
      span.textContent = w.word;
      span.title = `${w.start.toFixed(2)}-${w.end.toFixed(2)} s, p=${w.probability.toFixed(2)}`;
      span.dataset.index = i;
      span.addEventListener("click", () => {
        audio.currentTime = w.start;
        highlight();
        audio.play().catch(() => {});
      });
      text.append(span);
      return span;
    });
  }

  function highlight() {
    const t = audio.currentTime;
    const words = model.get("words");
    let current = -1;  // the last word that has started
    for (let i = 0; i < words.length && words[i].start <= t; i++) current = i;
    spans.forEach((s, i) => s.classList.toggle("maxwhisper-word-current", i === current));
    model.set("position", t);
    if (model.get("current") !== current) model.set("current", current);
    model.save_changes();
  }

  audio.addEventListener("timeupdate", highlight);
  audio.addEventListener("seeked", highlight);
  model.on("change:words", draw);
  model.on("change:audio_src", draw);
  draw();
}
export default { render };
"""

_CSS = """
.maxwhisper-words { font-size: 1.1em; line-height: 1.8; margin-top: 0.4em; max-width: 60em; }
.maxwhisper-words span { cursor: pointer; border-radius: 3px; padding: 1px 0; }
.maxwhisper-words span:hover { background: #eef; }
.maxwhisper-words span.maxwhisper-word-current { background: #ffd54f; text-decoration: underline; }
"""


class WordPlayer(anywidget.AnyWidget):
    """`WordPlayer(samples, words)`: 16 kHz samples and [{word, start, end, probability}]."""

    _esm = _ESM
    _css = _CSS
    audio_src = traitlets.Unicode("").tag(sync=True)
    words = traitlets.List([]).tag(sync=True)
    current = traitlets.Int(-1).tag(sync=True)  # index of the word being spoken, -1: none yet
    position = traitlets.Float(0.0).tag(sync=True)  # playback position, seconds

    def __init__(self, samples, words: list[dict], **kwargs):
        source = "data:audio/wav;base64," + base64.b64encode(wav_bytes(samples)).decode()
        clean = [{"word": w["word"], "start": float(w["start"]), "end": float(w["end"]),
                  "probability": float(w.get("probability", 1.0))} for w in words]
        super().__init__(audio_src=source, words=clean, **kwargs)


def word_player(samples, segments: list[dict]) -> WordPlayer:
    """The widget for a transcription's segments (which need `words`)."""
    return WordPlayer(samples, [w for s in segments for w in s.get("words", [])])
