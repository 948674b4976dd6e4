"""Tests for the registry of backbone sources (tftransfer.backbones.register_source).

A source defined here, outside the package, is registered, picked by
`tftransfer.backbone()`, and its backbones save and load through their
config; the registry's order and errors are checked against the built-in
sources.
"""

import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import tftransfer
from tftransfer import Backbone
from tftransfer.backbones import (
    BackboneSource,
    catalogue,
    register_source,
    registry,
    unregister_source,
)

BUILT_IN_PREFIXES = ["keras_application", "keras_hub", "offline"]


class SeededConv(BackboneSource):
    """`"seeded:<seed>"`: an 8x8 image backbone, a Conv2D initialised from
    the seed and a global average pool (`filters` features)."""

    name = "seeded_conv"
    form = "prefix"
    accepts = '"seeded:<seed>": a seeded 8x8 conv (tests)'

    def is_supported(self, handle, **options):
        return handle.startswith("seeded:")

    def build(self, handle, *, filters=4):
        seed = int(handle.split(":", 1)[1])

        def builder(trainable):
            initializer = keras.initializers.GlorotUniform(seed=seed)
            return keras.Sequential(
                [
                    keras.Input((8, 8, 3)),
                    keras.layers.Conv2D(filters, 3, kernel_initializer=initializer),
                    keras.layers.GlobalAveragePooling2D(),
                ]
            )

        return Backbone(
            name=f"seeded_{seed}",
            handle=handle,
            modality="image",
            feature_dim=filters,
            image_size=(8, 8),
            builder=builder,
        )


@pytest.fixture
def seeded_source():
    source = register_source(SeededConv())
    yield source
    unregister_source(source.name)


def images(batch=2):
    return np.random.default_rng(0).uniform(0, 1, (batch, 8, 8, 3)).astype("float32")


def test_a_source_registered_outside_the_package_is_picked_and_reloads(
    seeded_source,
):
    backbone = tftransfer.backbone("seeded:7", filters=5)
    assert (backbone.source, backbone.feature_dim, backbone.name) == (
        "seeded_conv",
        5,
        "seeded_7",
    )
    config = json.loads(json.dumps(backbone.get_config()))
    assert config == {
        "source": "seeded_conv",
        "arguments": {"handle": "seeded:7", "filters": 5},
    }
    reloaded = Backbone.from_config(config)
    np.testing.assert_allclose(
        reloaded.build()(images()), backbone.build()(images()), atol=1e-6
    )
    # Its backbones are Keras layers, so hubify writes them.
    assert seeded_source.check_hubify(backbone) is None


def test_an_unregistered_source_is_named_when_its_config_loads(seeded_source):
    config = tftransfer.backbone("seeded:1").get_config()
    unregister_source(seeded_source.name)
    with pytest.raises(tftransfer.ConfigError, match="'seeded_conv'") as error:
        Backbone.from_config(config)
    assert "register_source" in str(error.value)
    register_source(seeded_source)  # the fixture unregisters it again


def test_unknown_options_name_the_options_the_source_takes(seeded_source):
    with pytest.raises(tftransfer.ConfigError, match=r"takes \['filters'\]"):
        tftransfer.backbone("seeded:1", image_size=(8, 8))


def test_registered_sources_appear_in_the_unknown_handle_message(seeded_source):
    with pytest.raises(tftransfer.HandleError, match="seeded:<seed>") as error:
        tftransfer.backbone("nothing-like-this")
    assert "keras_hub:<preset>" in str(error.value)  # the built-in ones too


def test_catalogue_names_come_before_prefixes_urls_and_paths(tmp_path):
    forms = [source.form for source in registry.sources()]
    assert forms == sorted(forms, key=registry.FORMS.index)
    assert registry.find_source("mobilenet-v2").name == "catalogue"
    assert registry.find_source("keras:ResNet50").name == "keras_application"
    assert registry.find_source("offline:minilm").name == "offline"
    assert registry.find_source("https://tfhub.dev/x/1").name == "hub"
    text = registry.find_source("https://tfhub.dev/x/1", preprocessor=None)
    assert text.name == "hub_text"
    assert registry.find_source(str(tmp_path)) is None  # an empty folder


def test_registering_checks_the_source():
    with pytest.raises(tftransfer.ConfigError, match="BackboneSource"):
        register_source(object())

    class Nameless(SeededConv):
        form = "anywhere"

    with pytest.raises(tftransfer.ConfigError, match="'anywhere'"):
        register_source(Nameless())

    class Impostor(SeededConv):
        name = "keras_hub"

    with pytest.raises(tftransfer.ConfigError, match="already registered") as error:
        register_source(Impostor())
    assert "tftransfer.backbones.unregister_source('keras_hub')" in str(error.value)

    for name in ("", "  ", None, 3):
        Unnamed = type("Unnamed", (SeededConv,), {"name": name})
        with pytest.raises(tftransfer.ConfigError, match="non-empty string"):
            register_source(Unnamed())


def test_registering_first_keeps_every_built_in_source_and_their_rank():
    """In a fresh process, registering before the registry's first use runs
    discovery first: an impostor of a built-in name is refused and the
    built-in sources all stay; a new source ranks after the built-ins of
    its form, as it does once the registry was used."""
    script = textwrap.dedent(
        """
        import json
        import tftransfer
        from tftransfer.backbones import BackboneSource, register_source, registry

        class Impostor(BackboneSource):
            name, form, accepts = "keras_hub", "prefix", '"impostor:"'

            def is_supported(self, handle, **options):
                return handle.startswith("impostor:")

            def build(self, handle):
                raise AssertionError(handle)

        class Late(Impostor):
            name = "late"

        try:
            register_source(Impostor())
        except tftransfer.ConfigError as error:
            print(json.dumps(str(error)))
        register_source(Late())
        print(json.dumps([source.name for source in registry.sources()]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    refusal, names = map(json.loads, result.stdout.splitlines()[-2:])
    assert "'keras_hub' is already registered (KerasHubSource)" in refusal
    assert names == [
        "catalogue",
        *BUILT_IN_PREFIXES,
        "late",
        "hub",
        "hub_text",
        "npz",
    ]


def test_a_source_registered_after_first_use_ranks_after_the_built_ins(
    seeded_source,
):
    prefixes = [s.name for s in registry.sources() if s.form == "prefix"]
    assert prefixes[: len(BUILT_IN_PREFIXES) + 1] == [
        *BUILT_IN_PREFIXES,
        "seeded_conv",
    ]


def test_a_source_must_build_a_backbone(seeded_source, monkeypatch):
    monkeypatch.setattr(SeededConv, "build", lambda self, handle: keras.layers.Dense(2))
    with pytest.raises(tftransfer.ConfigError, match="must return a tftransfer"):
        tftransfer.backbone("seeded:3")


def test_offline_handles_name_the_weights_modules():
    with pytest.raises(tftransfer.HandleError, match="offline:minilm"):
        tftransfer.backbone("offline:nope")


def test_catalogue_entries_of_keras_applications_build_under_their_name(
    monkeypatch,
):
    entry = {
        "source": "keras_application",
        "handle": "keras:MobileNetV3Small",
        "options": {"weights": None, "image_size": (32, 32)},
        "modality": "image",
        "feature_dim": 576,
        "aliases": ("tiny_mobilenet",),
    }
    monkeypatch.setitem(catalogue.CATALOGUE, "tiny-mobilenet", entry)
    backbone = tftransfer.backbone("Tiny_MobileNet", pooling="max")
    assert (backbone.name, backbone.source, backbone.feature_dim) == (
        "tiny-mobilenet",
        "keras_application",
        576,
    )
    assert backbone.get_config() == {
        "source": "catalogue",
        "arguments": {"handle": "Tiny_MobileNet", "pooling": "max"},
    }


def test_catalogue_works_offline_takes_options_the_entry_also_sets(
    monkeypatch, tmp_path
):
    entry = {
        "source": "hub",
        "handle": str(tmp_path),
        "options": {"image_size": (8, 8)},
        "modality": "image",
        "feature_dim": 4,
        "aliases": (),
    }
    monkeypatch.setitem(catalogue.CATALOGUE, "local-hub-folder", entry)
    source = registry.get_source("catalogue")
    assert source.works_offline("local-hub-folder", image_size=(16, 16)) is True
