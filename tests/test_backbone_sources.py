"""Tests for the registry of backbone sources (tftransfer.backbones.register_source).

A source defined here, outside the package, is registered, picked by
`tftransfer.backbone()`, and its backbones save and load through their
config; the registry's order and errors are checked against the built-in
sources.
"""

import json

import keras
import numpy as np
import pytest

import tftransfer
from tftransfer import Backbone
from tftransfer.backbones import BackboneSource, register_source, registry


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
    registry.unregister_source(source.name)


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
    registry.unregister_source(seeded_source.name)
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

    with pytest.raises(tftransfer.ConfigError, match="already registered"):
        register_source(Impostor())


def test_a_source_must_build_a_backbone(seeded_source, monkeypatch):
    monkeypatch.setattr(SeededConv, "build", lambda self, handle: keras.layers.Dense(2))
    with pytest.raises(tftransfer.ConfigError, match="must return a tftransfer"):
        tftransfer.backbone("seeded:3")


def test_offline_handles_name_the_weights_modules():
    with pytest.raises(tftransfer.HandleError, match="offline:minilm"):
        tftransfer.backbone("offline:nope")
