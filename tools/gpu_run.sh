#!/usr/bin/env bash
# On a lent device, after every .gpu/cK of tools/gpu_stage.sh has been carried: reassemble the
# payload, unpack the packages and data under /tmp/gpu, and run the check with its JSON to $OUT.
#   bash tools/gpu_run.sh [BUDGET_S [gpu_check options...]]   (budget default 420 s)
set -uo pipefail
cd "$(dirname "$0")/.."
budget=${1:-420}
out=${OUT:-build/gpu-check}
mkdir -p "$out" /tmp/gpu
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$out/nvidia-smi.csv" 2>&1
start=$SECONDS
if [ ! -d /tmp/gpu/site ]; then
    cat .gpu/c*/payload.part-* | xz -d | tar -xf - -C /tmp/gpu || { echo "unpacking failed"; exit 1; }
fi
echo "gpu_run: unpacked in $((SECONDS - start)) s"
export PYTHONPATH=/tmp/gpu/site:$PWD MAXWHISPER_WEIGHTS_DIR=/tmp/gpu/data PYTHONUNBUFFERED=1
python3 -c "import max.driver as d; print('MAX sees', d.accelerator_count(), 'accelerator(s)')"
python3 tools/gpu_check.py --device "${GPU_CHECK_DEVICE:-gpu}" --speech-dir /tmp/gpu/data \
    --budget "$budget" --out "$out" "${@:2}" 2>&1 | tee "$out/gpu-check.log"
