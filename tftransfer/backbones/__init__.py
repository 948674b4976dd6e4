"""Pretrained backbones: one description whatever the source.

`Backbone` describes a TF Hub, KerasHub or `keras.applications` model.
"""

from tftransfer.backbones.backbone import Backbone

__all__ = ["Backbone"]
