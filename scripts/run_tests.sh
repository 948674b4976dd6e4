#!/usr/bin/env bash
# Sets up .venv (if needed) and runs the whole test suite offline.
# Extra arguments go to pytest: bash scripts/run_tests.sh -k hub_layer
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh" test
python -m pytest "$@"
