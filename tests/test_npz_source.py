"""Tests for the "npz" backbone source: keras.applications weights in a `.npz`.

A tiny MobileNetV3Small (32x32, random weights) is written to `.npz` here
and read back through `tftransfer.backbone(path)`; nothing downloads.
"""

import json
import pickle

import keras
import numpy as np
import pytest

import tftransfer
from tftransfer import Backbone
from tftransfer.backbones import npz_source

SIZE = 32


@pytest.fixture(scope="module")
def original():
    """A MobileNetV3Small backbone with seeded random weights, built once."""
    keras.utils.set_random_seed(5)
    backbone = Backbone.from_keras_application(
        "MobileNetV3Small", weights=None, image_size=(SIZE, SIZE)
    )
    layer = backbone.build()
    base = next(sub for sub in layer.layers if isinstance(sub, keras.Model))
    return layer, {variable.path: variable.numpy() for variable in base.weights}


def write(path, weights, application="MobileNetV3Small", image_size=(SIZE, SIZE)):
    np.savez(
        path,
        __application__=application,
        __image_size__=np.array(image_size),
        **weights,
    )
    return str(path)


def images(batch=2):
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (batch, SIZE, SIZE, 3)).astype("float32")


def test_npz_weights_give_the_features_of_the_model_they_came_from(original, tmp_path):
    layer, weights = original
    path = write(tmp_path / "mobilenet.npz", weights)
    backbone = tftransfer.backbone(path)
    assert (backbone.source, backbone.name, backbone.handle) == (
        "npz",
        "mobilenet",
        path,
    )
    assert (backbone.image_size, backbone.value_range, backbone.feature_dim) == (
        (SIZE, SIZE),
        (0.0, 255.0),
        576,
    )
    np.testing.assert_allclose(backbone.build()(images()), layer(images()), atol=1e-5)


def test_npz_backbone_config_round_trips(original, tmp_path):
    path = write(tmp_path / "mobilenet.npz", original[1])
    backbone = tftransfer.backbone(path, pooling="max", name="small")
    config = json.loads(json.dumps(backbone.get_config()))
    assert config == {
        "source": "npz",
        "arguments": {"handle": path, "pooling": "max", "name": "small"},
    }
    reloaded = Backbone.from_config(config)
    assert reloaded.name == "small"
    np.testing.assert_allclose(
        reloaded.build()(images()), backbone.build()(images()), atol=1e-6
    )


def test_a_missing_or_extra_weight_is_named(original, tmp_path):
    weights = dict(original[1])
    weights.pop("conv/kernel")
    with pytest.raises(tftransfer.ConfigError, match="missing \\['conv/kernel'\\]"):
        tftransfer.backbone(write(tmp_path / "missing.npz", weights))
    weights = {**original[1], "head/kernel": np.zeros((2, 2), "float32")}
    with pytest.raises(tftransfer.ConfigError, match="extra \\['head/kernel'\\]"):
        tftransfer.backbone(write(tmp_path / "extra.npz", weights))


def test_a_wrong_shape_or_dtype_is_named(original, tmp_path):
    weights = {**original[1], "conv/kernel": np.zeros((1, 1, 3, 16), "float32")}
    with pytest.raises(
        tftransfer.ConfigError, match="'conv/kernel'.*\\(1, 1, 3, 16\\)"
    ):
        tftransfer.backbone(write(tmp_path / "shape.npz", weights))
    kernel = original[1]["conv/kernel"].astype("int32")
    weights = {**original[1], "conv/kernel": kernel}
    with pytest.raises(tftransfer.ConfigError, match="'conv/kernel'.*int32"):
        tftransfer.backbone(write(tmp_path / "dtype.npz", weights))


def test_weights_for_another_image_size_do_not_match(original, tmp_path):
    """MobileNetV3Small's weights do not depend on the size, so the same
    arrays load at 64x64; an unknown application is named."""
    path = write(tmp_path / "big.npz", original[1], image_size=(64, 64))
    assert tftransfer.backbone(path).image_size == (64, 64)
    with pytest.raises(tftransfer.HandleError, match="MobileNetV9"):
        tftransfer.backbone(write(tmp_path / "v9.npz", {}, application="MobileNetV9"))


def test_unsafe_or_malformed_files_are_refused(original, tmp_path, monkeypatch):
    with pytest.raises(tftransfer.HandleNotFoundError, match="absent.npz"):
        tftransfer.backbone(str(tmp_path / "absent.npz"))
    pickled = tmp_path / "pickled.npz"
    objects = np.array([{"code": "anything"}], dtype=object)
    np.savez(pickled, __application__="MobileNetV3Small", __image_size__=[32, 32],
             objects=objects)  # fmt: skip
    with pytest.raises(tftransfer.HandleError, match="pickled objects"):
        tftransfer.backbone(str(pickled))
    not_zip = tmp_path / "not_zip.npz"
    not_zip.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(tftransfer.HandleError, match="not an .npz"):
        tftransfer.backbone(str(not_zip))
    without_name = tmp_path / "without_name.npz"
    np.savez(without_name, __image_size__=[32, 32], **original[1])
    with pytest.raises(tftransfer.HandleError, match="'__application__'"):
        tftransfer.backbone(str(without_name))
    path = write(tmp_path / "big.npz", original[1])
    monkeypatch.setattr(npz_source, "MAX_BYTES", 1000)
    with pytest.raises(tftransfer.HandleError, match="more than 1000"):
        tftransfer.backbone(path)


def test_weights_of_unnamed_layers_load_in_a_later_build(tmp_path):
    """EfficientNetB0's unnamed `Normalization` is `normalization/...` in
    one build and `normalization_<n>/...` in the next, in one process; its
    mean, variance and integer count load all the same."""
    keras.utils.set_random_seed(3)
    application = Backbone.from_keras_application(
        "EfficientNetB0", weights=None, image_size=(SIZE, SIZE)
    )
    layer = application.build()
    base = next(sub for sub in layer.layers if isinstance(sub, keras.Model))
    normalization = next(
        sub for sub in base.layers if isinstance(sub, keras.layers.Normalization)
    )
    mean, variance, count = normalization.weights
    mean.assign([100.0, 120.0, 140.0])
    variance.assign([900.0, 1600.0, 2500.0])
    weights = {variable.path: variable.numpy() for variable in base.weights}
    assert weights[count.path].dtype == np.int64
    path = write(tmp_path / "efficientnet.npz", weights, application="EfficientNetB0")

    backbone = tftransfer.backbone(path)
    rebuilt = backbone.build()
    assert mean.path not in {variable.path for variable in rebuilt.weights}
    np.testing.assert_allclose(rebuilt(images()), layer(images()), atol=1e-5)
