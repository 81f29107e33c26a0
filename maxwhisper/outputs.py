"""Writing transcripts: txt, srt, vtt and json (the json also carries engine, model and timings)."""

from __future__ import annotations

import json
from pathlib import Path

from .results import Transcription
from .transcribe import format_timestamp

FORMATS = ("txt", "srt", "vtt", "json")


def to_txt(result: Transcription) -> str:
    return "".join(s["text"].strip() + "\n" for s in result.segments if s["text"].strip())


def _cues(result: Transcription, decimal_marker: str, always_hours: bool) -> list[tuple[str, str]]:
    return [(f"{format_timestamp(s['start'], always_hours, decimal_marker)} --> "
             f"{format_timestamp(s['end'], always_hours, decimal_marker)}",
             s["text"].strip().replace("-->", "->"))
            for s in result.segments if s["text"].strip()]


def to_srt(result: Transcription) -> str:
    return "".join(f"{i}\n{times}\n{text}\n\n"
                   for i, (times, text) in enumerate(_cues(result, ",", True), start=1))


def to_vtt(result: Transcription) -> str:
    return "WEBVTT\n\n" + "".join(f"{times}\n{text}\n\n" for times, text in _cues(result, ".", False))


def to_json(result: Transcription) -> str:
    record = result.to_dict()
    record["tokens"] = result.tokens
    return json.dumps(record, indent=2, ensure_ascii=False)


WRITERS = {"txt": to_txt, "srt": to_srt, "vtt": to_vtt, "json": to_json}


def write_outputs(result: Transcription, audio_path: Path, output_dir: Path,
                  output_format: str) -> list[Path]:
    """Write `audio_path`'s transcript as <stem>.<format> in output_dir; 'all' writes every format."""
    formats = FORMATS if output_format == "all" else (output_format,)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = output_dir / f"{Path(audio_path).stem}.{fmt}"
        path.write_text(WRITERS[fmt](result), encoding="utf-8")
        written.append(path)
    return written
