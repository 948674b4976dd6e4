"""The backbone source of catalogue names ("catalogue")."""

from __future__ import annotations

import difflib
from typing import Any

from tftransfer.backbones import catalogue
from tftransfer.backbones.description import Backbone
from tftransfer.backbones.registry import get_source, register_source
from tftransfer.backbones.source import BackboneSource

_ACCEPTS = (
    'a catalogue name or alias: "efficientnetv2-b0", "mobilenet_v2_100_224", '
    '"bert-small", "all-minilm-l6-v2" (`tftransfer backbones` lists them)'
)


class CatalogueSource(BackboneSource):
    """Names and aliases of `tftransfer.backbones.catalogue`.

    Each entry names the source that builds it, its handle and options; this
    source builds it through that source, named by its catalogue name, with
    the options given here on top. The `Backbone` records the catalogue
    name, so its config does not depend on where the weights were cached.
    """

    name = "catalogue"
    form = "name"
    accepts = _ACCEPTS

    def build(self, handle: str, **options: Any) -> Backbone:
        name, entry = catalogue.lookup(handle)
        options = {**entry["options"], "name": name, **options}
        return Backbone.from_source(entry["source"], entry["handle"], **options)

    def is_supported(self, handle: str, **options: Any) -> bool:
        return catalogue.lookup(handle) is not None

    def suggest(self, handle: str) -> list[str]:
        names = catalogue.aliases()
        close = difflib.get_close_matches(catalogue.normalize_name(handle), names, n=3)
        return [names[match] for match in close]

    def works_offline(self, handle: str, **options: Any) -> bool:
        _, entry = catalogue.lookup(handle)
        source = get_source(entry["source"])
        return source.works_offline(entry["handle"], **{**entry["options"], **options})


register_source(CatalogueSource())
