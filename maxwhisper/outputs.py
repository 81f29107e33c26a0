"""Writing transcripts: txt, srt, vtt and json (the json also carries engine, model, timings and,
with word timestamps, every word); srt and vtt cues from word times as openai-whisper lays them
out (highlighted words, line width and count, words per line)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .results import Transcription
from .transcribe import format_timestamp

FORMATS = ("txt", "srt", "vtt", "json")


def to_txt(result: Transcription) -> str:
    return "".join(s["text"].strip() + "\n" for s in result.segments if s["text"].strip())


@dataclass(frozen=True)
class SubtitleOptions:
    """How word-timed subtitles are laid out (openai-whisper's writer options; they need
    segments with `words`): the current word underlined while it is spoken, lines of at most
    `max_line_width` characters, `max_line_count` lines a cue (then cues no longer follow
    segments), or `max_words_per_line` words a line."""

    highlight_words: bool = False
    max_line_width: int | None = None
    max_line_count: int | None = None
    max_words_per_line: int | None = None


def _word_subtitles(segments: list[dict], options: SubtitleOptions) -> Iterator[list[dict]]:
    """Groups of words, each one cue; a word's text carries a leading newline where a line
    breaks inside the cue."""
    keep_segments = options.max_line_count is None or options.max_line_width is None
    width = options.max_line_width or 1000
    per_line = options.max_words_per_line or 1000
    line_len, line_count, cue = 0, 1, []
    last = next((w["start"] for s in segments for w in s["words"]), segments[0]["start"])
    for segment in segments:
        for chunk in range(0, len(segment["words"]), per_line):
            for i, original in enumerate(segment["words"][chunk : chunk + per_line]):
                timing = dict(original)
                long_pause = not keep_segments and timing["start"] - last > 3.0
                has_room = line_len + len(timing["word"]) <= width
                segment_break = i == 0 and cue and keep_segments
                if line_len > 0 and has_room and not long_pause and not segment_break:
                    line_len += len(timing["word"])  # the line goes on
                else:
                    timing["word"] = timing["word"].strip()
                    if (cue and options.max_line_count is not None
                            and (long_pause or line_count >= options.max_line_count)) \
                            or segment_break:
                        yield cue  # a new cue
                        cue, line_count = [], 1
                    elif line_len > 0:  # a new line in this cue
                        line_count += 1
                        timing["word"] = "\n" + timing["word"]
                    line_len = len(timing["word"].strip())
                cue.append(timing)
                last = timing["start"]
    if cue:
        yield cue


def _cues(result: Transcription, decimal_marker: str, always_hours: bool,
          options: SubtitleOptions = SubtitleOptions()) -> list[tuple[str, str]]:
    def stamp(seconds: float) -> str:
        return format_timestamp(seconds, always_hours, decimal_marker)

    segments = result.segments
    if not segments or "words" not in segments[0]:
        return [(f"{stamp(s['start'])} --> {stamp(s['end'])}", s["text"].strip().replace("-->", "->"))
                for s in segments if s["text"].strip()]
    cues = []
    for cue in _word_subtitles(segments, options):
        start, end = stamp(cue[0]["start"]), stamp(cue[-1]["end"])
        text = "".join(w["word"] for w in cue)
        if not options.highlight_words:
            cues.append((f"{start} --> {end}", text))
            continue
        last, words = start, [w["word"] for w in cue]
        for i, word in enumerate(cue):  # one cue per word, that word underlined
            word_start, word_end = stamp(word["start"]), stamp(word["end"])
            if last != word_start:
                cues.append((f"{last} --> {word_start}", text))
            underlined = "".join(re.sub(r"^(\s*)(.*)$", r"\1<u>\2</u>", w) if j == i else w
                                 for j, w in enumerate(words))
            cues.append((f"{word_start} --> {word_end}", underlined))
            last = word_end
    return cues


def to_srt(result: Transcription, options: SubtitleOptions = SubtitleOptions()) -> str:
    return "".join(f"{i}\n{times}\n{text}\n\n"
                   for i, (times, text) in enumerate(_cues(result, ",", True, options), start=1))


def to_vtt(result: Transcription, options: SubtitleOptions = SubtitleOptions()) -> str:
    return "WEBVTT\n\n" + "".join(f"{times}\n{text}\n\n"
                                   for times, text in _cues(result, ".", False, options))


def to_json(result: Transcription) -> str:
    record = result.to_dict()
    record["tokens"] = result.tokens
    return json.dumps(record, indent=2, ensure_ascii=False)


WRITERS = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": to_json}


def write_outputs(result: Transcription, audio_path: Path, output_dir: Path,
                  output_format: str, subtitles: SubtitleOptions = SubtitleOptions()) -> list[Path]:
    """Write `audio_path`'s transcript as <stem>.<format> in output_dir; 'all' writes every
    format. `subtitles` lays out srt and vtt cues from word times."""
    formats = FORMATS if output_format == "all" else (output_format,)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = output_dir / f"{Path(audio_path).stem}.{fmt}"
        text = WRITERS[fmt](result, subtitles) if fmt in ("srt", "vtt") else WRITERS[fmt](result)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
