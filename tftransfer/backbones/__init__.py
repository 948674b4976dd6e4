"""Pretrained backbones: one description whatever the source.

`Backbone` describes a TF Hub, KerasHub or `keras.applications` model;
`backbone()` picks its constructor from a handle or catalogue name;
`hubify()` writes a Keras backbone as a TF Hub reusable SavedModel.
"""

from tftransfer.backbones.backbone import Backbone
from tftransfer.backbones.factory import backbone
from tftransfer.backbones.hubify import hubify

__all__ = ["Backbone", "backbone", "hubify"]
