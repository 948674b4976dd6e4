"""Loading TF Hub SavedModels: handle resolution and the Keras 3 `HubLayer`."""

from tftransfer.hub.layer import HubLayer
from tftransfer.hub.resolver import resolve

__all__ = ["HubLayer", "resolve"]
