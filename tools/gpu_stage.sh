#!/usr/bin/env bash
# Stage what the device image lacks for tools/gpu_check.py into .gpu/ (git-ignored), in pieces
# under 60 MiB so that consecutive `device run` calls can carry them (64 MiB a call):
#   .gpu/wheels-N/   cp312 wheels: max, max-core, max-mojo-libs, max-shmem-libs 26.7.0 (split),
#                    openai-whisper and what it needs beyond the image (more-itertools)
#   .gpu/data/       tiny.en .npz, the check's clips and MANIFEST.tsv
# On the device, the last call joins the split wheel (cat .gpu/wheels-*/NAME.part-* > NAME),
# installs everything with
#   pip install --no-index --no-deps --target /tmp/site .gpu/wheels-*/*.whl
# and runs: PYTHONPATH=/tmp/site:. MAXWHISPER_WEIGHTS_DIR=.gpu/data python3 \
#   tools/gpu_check.py --device gpu --speech-dir .gpu/data --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
SPEECH=${MAXWHISPER_SPEECH_DIR:-../shared/speech}
rm -rf .gpu && mkdir -p .gpu/download .gpu/data
pip_download() {
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_34_x86_64 --platform manylinux_2_28_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
        -d .gpu/download "$@"
}
pip_download max==26.7.0 max-core==26.7.0 max-mojo-libs==26.7.0 max-shmem-libs==26.7.0 \
    mojo-compiler==1.2.0 mojo-compiler-mojo-libs==1.2.0 openai-whisper==20250625 more-itertools
# What each wheel needs, to check against the image's package list (KINDS.md):
for w in .gpu/download/*.whl; do
    echo "== $(basename "$w")"; unzip -p "$w" '*/METADATA' | grep '^Requires-Dist' | grep -v extra || true
done > .gpu/requires.txt
# Pack the wheels into carries of at most 60 MiB; a larger wheel is split into 50 MiB parts,
# each a carry of its own (rejoined with cat on the device).
n=0; size=0; mkdir -p .gpu/wheels-0
for w in $(ls -S .gpu/download/*.whl); do
    bytes=$(stat -c %s "$w")
    if (( bytes > 60 * 1024 * 1024 )); then
        split -b 50M -d "$w" ".gpu/download/$(basename "$w").part-"
        for part in ".gpu/download/$(basename "$w").part-"*; do
            n=$((n + 1)); mkdir -p ".gpu/wheels-$n"; mv "$part" ".gpu/wheels-$n/"
        done
        n=$((n + 1)); mkdir -p ".gpu/wheels-$n"; size=0
        continue
    fi
    if (( size + bytes > 60 * 1024 * 1024 )); then n=$((n + 1)); mkdir -p ".gpu/wheels-$n"; size=0; fi
    cp "$w" ".gpu/wheels-$n/"; size=$((size + bytes))
done
cp weights/tiny.en.npz .gpu/data/
for clip in jfk.wav 1089-134686-0000.flac LJ001-0001.wav 1221-135766-0002.wav \
            ljspeech_longform_229s.flac MANIFEST.tsv; do
    cp "$SPEECH/$clip" .gpu/data/
done
rm -rf .gpu/download
du -sh .gpu/* | sort -k2
