"""The `maxwhisper` command: transcribe, corpus (many files), extract (weights) and bench."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import AudioError, MaxWhisperError
from .weights import DEFAULT_MODEL


def _truth(value: str) -> bool:
    """openai-whisper's boolean option values: True/False (any case), 1/0, yes/no."""
    lowered = value.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {value!r}")


def _option(p, name: str, *short: str, flag: bool = False, **kwargs) -> None:
    """An option under our spelling (--beam-size) and openai-whisper's (--beam_size), so shell
    scripts move over; a `flag` also takes openai-whisper's value form (--word_timestamps True)."""
    openai_spelling = "--" + name[2:].replace("-", "_")
    names = [name, *short] + ([openai_spelling] if openai_spelling != name else [])
    if flag:
        kwargs.update(nargs="?", const=True, default=False, type=_truth)
    p.add_argument(*names, **kwargs)


def _add_transcribe(sub) -> None:
    p = sub.add_parser("transcribe", help="transcribe audio files")
    p.add_argument("audio", nargs="+", help="audio files (wav, flac, mp3, ogg; any sample rate)")
    _add_decoding_options(p)
    _option(p, "--highlight-words", flag=True,
            help="(with --word-timestamps) underline each word in srt/vtt as it is spoken")
    _option(p, "--max-line-width", type=int, default=None,
            help="(with --word-timestamps) characters a subtitle line at most")
    _option(p, "--max-line-count", type=int, default=None,
            help="(with --word-timestamps) lines a subtitle cue at most")
    _option(p, "--max-words-per-line", type=int, default=None,
            help="(with --word-timestamps, not with --max-line-width) words a line at most")
    _option(p, "--output-format", "-f", default="txt", choices=["txt", "srt", "vtt", "json", "all"])
    _option(p, "--output-dir", "-o", default=".", help="where the output files go")


def _add_corpus(sub) -> None:
    p = sub.add_parser("corpus", help="transcribe many files into one JSONL, resumably, on "
                                      "local workers or a Ray cluster")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio files, folders (searched recursively) or manifests (.tsv/.csv/"
                        ".jsonl with a path column and an optional reference column)")
    p.add_argument("--output", required=True,
                   help="the results JSONL (appended to; files already in it are skipped)")
    _add_decoding_options(p)
    p.add_argument("--workers", type=int, default=None,
                   help="processes on this machine (default 1), or Ray actors with --ray "
                        "(default one per core)")
    p.add_argument("--ray", default=None, metavar="local|auto|ADDRESS",
                   help="run on Ray: local (a Ray instance on this machine), auto (the running "
                        "cluster) or a cluster address")
    _option(p, "--retry-errors", flag=True, help="transcribe again the files stored as errors")
    _option(p, "--output-format", "-f", default=None, choices=["txt", "srt", "vtt", "json", "all"],
            help="also write a transcript file per audio file")
    _option(p, "--output-dir", "-o", default=None,
            help="where per-file transcripts go (default: beside the JSONL)")


def _add_decoding_options(p) -> None:
    p.add_argument("--engine", default="max", choices=["max", "openai", "faster"],
                   help="max (MAX Graph, default), openai (openai-whisper), faster (faster-whisper)")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="tiny.en, base, or a path to a .pt / .npz checkpoint or CTranslate2 folder")
    _option(p, "--beam-size", type=int, default=1, help="1 = greedy (default)")
    p.add_argument("--language", default=None, help="force a language (multilingual models)")
    _option(p, "--without-timestamps", flag=True, help="text tokens only")
    p.add_argument("--fallback", action="store_true",
                   help="Whisper's temperature fallback (0.0 ... 1.0) on repetitive or "
                        "unlikely text; off by default for deterministic output")
    p.add_argument("--task", default="transcribe", choices=["transcribe", "translate"],
                   help="translate: X -> English (multilingual models)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature (0: greedy or beam search)")
    _option(p, "--temperature-increment-on-fallback", type=float, default=None,
            help="with --fallback (or set): the fallback schedule's step, openai-whisper's 0.2")
    _option(p, "--best-of", type=int, default=None,
            help="candidates sampled when the temperature is above 0")
    _option(p, "--initial-prompt", default=None, help="text to condition the first window on")
    p.add_argument("--device", default="auto", help="max engine: auto, cpu or gpu")
    p.add_argument("--dtype", default="float32", help="max engine: float32 or float16 (GPU)")
    _option(p, "--compute-type", default="float32", help="faster engine: float32 or int8")
    _option(p, "--word-timestamps", flag=True,
            help="word-level times (json words; srt/vtt cues from words)")
    p.add_argument("--vad", action="store_true",
                   help="Silero VAD as a gate: audio without speech (noise, a tone, silence) "
                        "gives no text, and only segments that meet speech are kept; speech "
                        "keeps exactly its text")
    _option(p, "--batch-size", type=int, default=None,
            help="the batched mode (faster-whisper's BatchedInferencePipeline): VAD cuts the "
                 "speech into chunks of up to 30 s, N chunks are decoded together, each "
                 "without the text before it")
    _option(p, "--vad-filter", flag=True,
            help="faster-whisper's vad_filter: transcribe only the speech regions, one after "
                 "the other (times mapped back to the file)")


def _add_extract(sub) -> None:
    p = sub.add_parser("extract", help="extract weights to the canonical .npz")
    p.add_argument("--model", default=DEFAULT_MODEL,
                   help="tiny.en, base, a .pt checkpoint or a CTranslate2 folder")
    p.add_argument("--output-dir", default=None, help="default: weights/ (MAXWHISPER_WEIGHTS_DIR)")


def temperature_schedule(args) -> float | tuple[float, ...]:
    """One temperature, or openai-whisper's fallback schedule from it up to 1.0 (--fallback
    alone: 0.0, 0.2, ... 1.0)."""
    step = args.temperature_increment_on_fallback
    if step is None and not args.fallback:
        return args.temperature
    step = step or 0.2
    count = int(round((1.0 - args.temperature) / step)) + 1 if args.temperature < 1.0 else 1
    return tuple(round(args.temperature + i * step, 6) for i in range(max(count, 1)))


def transcribe_options(args):
    from .results import TranscribeOptions

    if args.beam_size < 1:
        raise MaxWhisperError(f"--beam-size must be at least 1, got {args.beam_size}")
    if args.batch_size is not None and args.batch_size < 1:
        raise MaxWhisperError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.batch_size and args.vad_filter:
        raise MaxWhisperError("--batch-size always cuts at the VAD's speech regions: drop "
                              "--vad-filter")
    return TranscribeOptions(
        beam_size=args.beam_size, language=args.language,
        temperature=temperature_schedule(args), task=args.task, best_of=args.best_of,
        without_timestamps=args.without_timestamps, initial_prompt=args.initial_prompt,
        word_timestamps=args.word_timestamps, vad=args.vad, vad_filter=args.vad_filter,
        batch_size=args.batch_size)


def run_transcribe(args) -> int:
    from .audio import file_is_silent, is_silent, load_audio
    from .engines import load_engine
    from .outputs import SubtitleOptions, write_outputs

    # the MAX engine reads a path in blocks (bounded memory for long files), sequential or
    # batched; the VAD gate and filter, and the other engines, take the samples
    streamed = args.engine == "max" and not (args.vad or args.vad_filter)
    audios = []
    for name in args.audio:  # check every input before the (slow) model load
        audio = Path(name) if streamed else load_audio(name)
        if file_is_silent(name) if streamed else is_silent(audio):
            raise AudioError(f"{name}: audio is silent, nothing to transcribe")
        audios.append((Path(name), audio))
    subtitles = SubtitleOptions(args.highlight_words, args.max_line_width, args.max_line_count,
                                args.max_words_per_line)
    if subtitles != SubtitleOptions() and not args.word_timestamps:
        raise MaxWhisperError("--highlight-words and the --max-line/--max-words options need "
                              "--word-timestamps")
    engine = load_engine(args.engine, args.model, device=args.device, dtype=args.dtype,
                         compute_type=args.compute_type)
    options = transcribe_options(args)
    for path, audio in audios:
        result = engine.transcribe(audio, options)
        written = write_outputs(result, path, Path(args.output_dir), args.output_format,
                                subtitles)
        if (options.vad or options.vad_filter) and not result.segments:
            print(f"maxwhisper: {path.name}: no speech found (VAD); the transcript is empty",
                  file=sys.stderr)
        print(result.text.strip())
        print(f"maxwhisper: {path.name}: {result.audio_seconds:.1f} s of audio in "
              f"{result.timings['transcribe_s']:.2f} s ({args.engine}); wrote "
              f"{', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0


def run_corpus(args) -> int:
    from .corpus import CorpusSettings, find_files, run_corpus, transcript_writer

    files = find_files(args.inputs)
    if not files:
        raise MaxWhisperError("no audio files found in " + ", ".join(args.inputs))
    if args.workers is not None and args.workers < 1:
        raise MaxWhisperError(f"--workers must be at least 1, got {args.workers}")
    settings = CorpusSettings(args.engine, args.model, transcribe_options(args),
                              compute_type=args.compute_type, dtype=args.dtype, device=args.device)
    writer = None
    if args.output_format:
        folder = Path(args.output_dir) if args.output_dir else Path(args.output).parent
        writer = transcript_writer(files, folder, args.output_format)
    summary = run_corpus(files, args.output, settings, workers=args.workers,
                         ray_address=args.ray, retry_errors=args.retry_errors, on_record=writer)
    for line in summary.lines():
        print(line, file=sys.stderr)
    return 0


def run_extract(args) -> int:
    from .weights import extract, load_npz

    path = extract(args.model, Path(args.output_dir) if args.output_dir else None)
    weights = load_npz(path)
    print(f"{path}  {weights.dims}  sha256(source)={weights.source_sha256[:16]}...")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maxwhisper", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_transcribe(sub)
    _add_corpus(sub)
    _add_extract(sub)
    from .bench import add_bench_parser

    add_bench_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return {"transcribe": run_transcribe, "corpus": run_corpus,
                "extract": run_extract}.get(
            args.command, lambda a: a.run(a))(args)
    except MaxWhisperError as exc:
        print(f"maxwhisper: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # bad option values (device, dtype, language, ...)
        print(f"maxwhisper: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("maxwhisper: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
