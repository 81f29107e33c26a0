#!/usr/bin/env bash
# Stage what the device image lacks for tools/gpu_check.py into .gpu/ (git-ignored), as pieces
# that consecutive `device run` calls carry (64 MiB a call, the working tree included):
#   the cp312 packages: max, max-core, max-mojo-libs, max-shmem-libs 26.7.0, mojo-compiler's
#   libraries, and what the image lacks of their needs (msgspec, taskgroup, exceptiongroup),
#   soundfile + cffi + pycparser and soxr (audio), openai-whisper + more-itertools (the baseline);
#   the tiny.en .npz, the check's clips and MANIFEST.tsv.
# Installed here with `pip install --target` for the device's Python 3.12, packed in one tar, xz
# compressed (~30 % smaller than the wheels) and split into .gpu/c1 ... .gpu/cN (58 MiB each).
# The `mojo` command-line compiler (146 MB) is left out (a stub in its place): the accelerator
# path compiles no Mojo kernels of ours (`runtime.default_kernels`); MAX compiles in-process.
# On the device: calls 1..N-1 carry .gpu/cK one after the other (the machine keeps each while
# warm, 30 s), the last carries .gpu/cN and runs tools/gpu_run.sh (reassembles and checks).
set -euo pipefail
cd "$(dirname "$0")/.."
SPEECH=${MAXWHISPER_SPEECH_DIR:-../shared/speech}
PY=${PYTHON:-.venv/bin/python}
platforms=(--python-version 3.12 --implementation cp --platform manylinux_2_34_x86_64
           --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any)
rm -rf .gpu && mkdir -p .gpu/wheels .gpu/stage/site .gpu/stage/data
"$PY" -m pip download -q --no-deps --only-binary=:all: "${platforms[@]}" -d .gpu/wheels \
    max==26.7.0 max-core==26.7.0 max-mojo-libs==26.7.0 max-shmem-libs==26.7.0 \
    mojo-compiler==1.2.0 mojo-compiler-mojo-libs==1.2.0 msgspec taskgroup exceptiongroup \
    soundfile==0.14.0 cffi pycparser soxr==1.1.0 more-itertools
# openai-whisper is published as a source archive only: build its (pure Python) wheel here
"$PY" -m pip wheel -q --no-deps --no-build-isolation openai-whisper==20250625 -w .gpu/wheels
for w in .gpu/wheels/*.whl; do  # what each needs, to check against the image's list (KINDS.md)
    echo "== $(basename "$w")"; unzip -p "$w" '*/METADATA' | grep '^Requires-Dist' | grep -v extra || true
done > .gpu/requires.txt
"$PY" -m pip install -q --no-deps --no-index --no-compile --only-binary=:all: "${platforms[@]}" \
    --target .gpu/stage/site .gpu/wheels/*.whl
# MAX finds its kernel libraries from the place of `modular/bin/mojo` (mojo/_package_root.py),
# so a stub stays in the compiler's place
printf '#!/bin/sh\necho "the mojo compiler was not carried to this machine" >&2\nexit 1\n' \
    > .gpu/stage/site/modular/bin/mojo
cp weights/tiny.en.npz .gpu/stage/data/
for clip in jfk.wav 1089-134686-0000.flac LJ001-0001.wav 1221-135766-0002.wav \
            ljspeech_longform_229s.flac MANIFEST.tsv; do
    cp "$SPEECH/$clip" .gpu/stage/data/
done
tar -cf - -C .gpu/stage site data | xz -T0 -6 | split -b 58M -d - .gpu/payload.part-
n=0
for part in .gpu/payload.part-*; do
    n=$((n + 1)); mkdir -p ".gpu/c$n"; mv "$part" ".gpu/c$n/"
done
rm -rf .gpu/stage .gpu/wheels
du -sh .gpu/c* | sort -V -k2
echo "carries: $n (calls 1..$((n - 1)) carry .gpu/cK; the last carries .gpu/c$n and runs tools/gpu_run.sh)"
