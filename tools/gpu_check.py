"""The accelerator check: MAX-Whisper against openai-whisper on one device, one JSON file.

    python tools/gpu_check.py --device gpu --out "$OUT"          # on a lent GPU machine
    python tools/gpu_check.py --device cpu --out build/gpu-check  # the rehearsal here

On the device it: loads tiny.en with `device=...`, transcribes the short clips and compares
every token with openai-whisper on the same device (float32); then times the long-form clip,
greedy and beam 5, for MAX (float32 and float16) and openai-whisper (float32 and fp16). Each
engine and dtype runs in a process of its own (torch and MAX never share one). Written:
`OUT/gpu-results.json` with the device name, versions, per-engine wall times, encoder ms per
window, decoder ms per step, and whether the tokens are identical. float16 on a CPU is skipped
(MAX's CPU half precision is ~100x slower and torch's CPU fp16 transcribe is unsupported).
Also MAX's batched mode (`--batched 8`) and, on a GPU, the long-form greedy once more with the
self-attention cache on the host (MAXWHISPER_RESIDENT_CACHE=0): what its round trips cost.
The workers run in order of importance within `--budget` seconds (a lent device's time is short).
`tools/gpu_stage.sh` puts what the device image lacks (the `max` wheels, openai-whisper, the
weights and clips) into `.gpu/` to be carried there; `tools/gpu_run.sh` unpacks it and runs this.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHORT_CLIPS = ("jfk.wav", "1089-134686-0000.flac", "LJ001-0001.wav", "1221-135766-0002.wav")
LONGFORM = "ljspeech_longform_229s.flac"


def device_name(device: str) -> str:
    if device != "cpu":
        try:
            import torch

            return torch.cuda.get_device_name(0)
        except Exception as exc:  # noqa: BLE001 - reported, not fatal
            return f"unknown accelerator ({exc})"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def versions() -> dict:
    out = {"python": platform.python_version()}
    for package in ("max", "torch", "openai-whisper", "numpy"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


# ------------------------------------------------------------------------------------------
# Workers: one engine and dtype each
# ------------------------------------------------------------------------------------------


def _max_worker(spec: dict) -> dict:
    from maxwhisper import load_audio, load_model

    start = time.perf_counter()
    model = load_model(spec["model"], device=spec["device"], dtype=spec["dtype"], verbose=True)
    result = {"load_s": time.perf_counter() - start, "device": model.device,
              "kernels": sorted(model.kernels), "resident_cache": model.resident_cache,
              "clips": {}, "longform": {}}

    def run(audio, **options):
        model.stats.reset()
        start = time.perf_counter()
        out = model.transcribe(audio, temperature=0.0, **options)
        seconds, stats = time.perf_counter() - start, model.stats
        return out, {"wall_s": seconds,
                     "encoder_ms_per_window": 1000 * stats.encode_s / max(stats.windows, 1),
                     "decoder_ms_per_step": 1000 * stats.decode_s / max(stats.decode_steps, 1),
                     "prefill_ms": 1000 * stats.prefill_s / max(stats.prefills, 1)}

    result = _common_worker(spec, result, load_audio, run)
    _save_features(spec, lambda mel: model.encode(mel[None]).audio[0])
    if spec.get("batched"):  # the batched mode (VAD chunks, 8 windows a step): where a GPU pays
        longform = load_audio(Path(spec["speech_dir"]) / spec["longform"])
        try:
            run(longform[: 40 * 16000], batch_size=spec["batched"], without_timestamps=True)
            out, timing = run(longform, batch_size=spec["batched"], without_timestamps=True)
            result["longform"][f"batched{spec['batched']}"] = {
                **timing, "audio_s": len(longform) / 16000, "text": out["text"]}
        except Exception as exc:  # noqa: BLE001 - reported beside the exact mode's rows
            result["longform"][f"batched{spec['batched']}"] = {"error": repr(exc)[:500]}
    return result


def _openai_worker(spec: dict) -> dict:
    import torch

    from maxwhisper import load_audio
    from maxwhisper.baselines import torch_whisper
    from maxwhisper.weights import load_weights

    cuda = spec["device"] != "cpu"
    start = time.perf_counter()
    model = torch_whisper(load_weights(spec["model"]))
    model = model.to("cuda" if cuda else "cpu")  # fp16 as openai-whisper does it: the
    # weights stay float32 and its layers cast them to the float16 input (transcribe(fp16=True))
    result = {"load_s": time.perf_counter() - start, "device": "cuda" if cuda else "cpu",
              "clips": {}, "longform": {}}

    def run(audio, beam_size=None, **options):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.inference_mode():
            out = model.transcribe(audio, temperature=0.0, beam_size=beam_size,
                                   fp16=spec["dtype"] == "float16", verbose=None)
        if cuda:
            torch.cuda.synchronize()
        return out, {"wall_s": time.perf_counter() - start}

    result = _common_worker(spec, result, load_audio, run)

    def encode(mel):
        with torch.inference_mode():
            x = torch.from_numpy(mel[None]).to(next(model.parameters()).device)
            dtype = torch.float16 if spec["dtype"] == "float16" else torch.float32
            return model.encoder(x.to(dtype)).float().cpu().numpy()[0]

    _save_features(spec, encode)
    return result


def _save_features(spec: dict, encode) -> None:
    """The encoder's output for the long-form clip's first window, saved as OUT/features-KEY.npy
    when the spec names a folder: how far this device's float32 is from the CPU's (compared
    where both are at hand)."""
    if not spec.get("features_dir"):
        return
    import numpy as np

    from maxwhisper.audio import N_FRAMES, load_audio, log_mel_spectrogram, pad_or_trim

    audio = load_audio(Path(spec["speech_dir"]) / spec["longform"])
    mel = pad_or_trim(log_mel_spectrogram(audio[: 30 * 16000]), N_FRAMES).astype("float32")
    features = encode(mel)
    np.save(Path(spec["features_dir"]) / f"features-{spec['engine']}-{spec['dtype']}.npy",
            np.asarray(features, np.float32))


def _common_worker(spec: dict, result: dict, load_audio, run) -> dict:
    """The same work for every engine: tokens of each short clip, then the timed long-form."""
    speech = Path(spec["speech_dir"])
    for name in spec["clips"]:
        out, timing = run(load_audio(speech / name))
        result["clips"][name] = {"text": out["text"], **timing,
                                 "tokens": [t for s in out["segments"] for t in s["tokens"]]}
    longform = load_audio(speech / spec["longform"])
    for beam in spec["beams"]:  # warm-up: first-call costs (graphs built on first use, such as
        # beam search's cache gather) out of the timings; measured 2026-11-28: ~20 s on the H100
        run(longform[: 5 * 16000], beam_size=beam if beam > 1 else None)
    for beam in spec["beams"]:
        out, timing = run(longform, beam_size=beam if beam > 1 else None)
        result["longform"][f"beam{beam}"] = {
            **timing, "audio_s": len(longform) / 16000, "text": out["text"],
            "tokens": [t for s in out["segments"] for t in s["tokens"]]}
    return result


WORKERS = {"max": _max_worker, "openai": _openai_worker}


# ------------------------------------------------------------------------------------------
# Parent: run every engine and dtype, compare, write the JSON
# ------------------------------------------------------------------------------------------


def run_worker(spec: dict, timeout_s: float) -> dict:
    env = {**os.environ, **spec.get("env", {})}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          capture_output=True, text=True, timeout=timeout_s, env=env)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                else f"exit {proc.returncode}", "stderr_tail": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(ours: dict, theirs: dict) -> dict:
    """Token equality clip by clip (and on the long-form runs both have)."""
    if "error" in ours or "error" in theirs:
        return {"compared": False}
    clips = {name: ours["clips"][name]["tokens"] == theirs["clips"][name]["tokens"]
             for name in ours["clips"] if name in theirs["clips"]}
    longform = {key: ours["longform"][key]["tokens"] == theirs["longform"][key]["tokens"]
                for key in ours["longform"] if key in theirs["longform"]}
    return {"compared": True, "clips": clips, "longform": longform,
            "all_identical": all(clips.values()) and all(longform.values())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="gpu", choices=["gpu", "cpu"])
    parser.add_argument("--out", default=os.environ.get("OUT", str(REPO / "build" / "gpu-check")))
    parser.add_argument("--model", default="tiny.en")
    parser.add_argument("--speech-dir", default=os.environ.get(
        "MAXWHISPER_SPEECH_DIR", str(REPO.parent / "shared" / "speech")))
    parser.add_argument("--clips", default=",".join(SHORT_CLIPS))
    parser.add_argument("--longform", default=LONGFORM)
    parser.add_argument("--beams", default="1,5")
    parser.add_argument("--dtypes", default=None,
                        help="default: float32,float16 on a GPU, float32 on the CPU")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per worker at most")
    parser.add_argument("--budget", type=float, default=900,
                        help="seconds for all workers together (a lent device's time is short)")
    parser.add_argument("--batched", type=int, default=8,
                        help="batch size of the batched-mode row (MAX float32; 0: none)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(WORKERS[spec["engine"]](spec)))
        return 0

    dtypes = (args.dtypes or ("float32" if args.device == "cpu" else "float32,float16")).split(",")
    base = {"model": args.model, "device": args.device, "speech_dir": args.speech_dir,
            "features_dir": str(Path(args.out).resolve()),
            "clips": [c for c in args.clips.split(",") if c], "longform": args.longform,
            "beams": [int(b) for b in args.beams.split(",")]}
    report = {"device": args.device, "device_name": device_name(args.device),
              "versions": versions(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "model": args.model, "runs": {}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # the parity pair first, so a short lease still answers "are the tokens the same?"
    order = [(f"{engine}-{dtype}", {"engine": engine, "dtype": dtype,
              "batched": args.batched if (engine, dtype) == ("max", "float32") else 0})
             for dtype in dtypes for engine in ("max", "openai")]
    if args.device != "cpu":  # last, if time is left: what the host cache's round trips cost
        order.append(("max-float32-host-cache", {
            "engine": "max", "dtype": "float32", "batched": 0, "clips": [], "beams": [1],
            "env": {"MAXWHISPER_RESIDENT_CACHE": "0"},
            "min_left_s": 120}))  # it compiles another decoder: not worth starting late
    deadline = time.monotonic() + args.budget
    for key, extra in order:
        left = deadline - time.monotonic()
        if left < extra.get("min_left_s", 30):
            report["runs"][key] = {"error": "skipped: the check's time budget was spent"}
            continue
        print(f"gpu_check: {key} ...", file=sys.stderr, flush=True)
        spec = {**base, **extra}
        try:
            report["runs"][key] = run_worker(spec, min(args.timeout, left))
        except subprocess.TimeoutExpired as exc:
            report["runs"][key] = {"error": f"timed out after {exc.timeout:.0f} s"}
        (out / "gpu-results.json").write_text(json.dumps(report, indent=2))  # keep progress
    report["max_float32_vs_openai_float32"] = compare(report["runs"].get("max-float32", {}),
                                                      report["runs"].get("openai-float32", {}))
    (out / "gpu-results.json").write_text(json.dumps(report, indent=2))
    for key, run in report["runs"].items():
        if "error" in run:
            print(f"{key}: FAILED: {run['error']}")
            continue
        times = ", ".join(f"{beam} {r['wall_s']:.2f} s" if "wall_s" in r else f"{beam} failed"
                          for beam, r in run["longform"].items())
        print(f"{key}: long-form {times}")
    print("tokens identical (max vs openai, float32):",
          report["max_float32_vs_openai_float32"].get("all_identical"))
    print(f"wrote {out / 'gpu-results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
