"""Tests for tftransfer.Backbone, tftransfer.backbone() and tftransfer.hubify.

Every model here is tiny and built in the test session (TF Hub fixtures
from conftest, KerasHub presets and keras.applications models written to
tmp_path); nothing downloads.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import tftransfer
from tftransfer import Backbone
from tftransfer.backbones import catalogue, hub_source, registry, reusable_saved_model
from tftransfer.serving_ops import saved_model_ops, unsupported_ops

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "playing",
    "guitar", ".", "the", "stock", "market", "play", "##ing", "fell",
]  # fmt: skip
SENTENCES = ["A man is playing a guitar.", "The stock market fell."]


@pytest.fixture(scope="module")
def keras_hub_image_preset(tmp_path_factory):
    """A tiny KerasHub ResNet preset (64 features) with a 16x16 converter."""
    keras_hub = pytest.importorskip("keras_hub")
    path = str(tmp_path_factory.mktemp("keras_hub") / "image")
    keras.utils.set_random_seed(1)
    keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64],
        stackwise_num_blocks=[1],
        stackwise_num_strides=[1],
        block_type="basic_block",
        image_shape=(None, None, 3),
    ).save_to_preset(path)
    keras_hub.layers.ImageConverter(
        image_size=(16, 16), scale=1 / 255.0
    ).save_to_preset(path)
    return path


@pytest.fixture(scope="module")
def keras_hub_bert_preset(tmp_path_factory):
    """A tiny KerasHub BERT preset (hidden size 8) with a lowercase tokenizer."""
    keras_hub = pytest.importorskip("keras_hub")
    path = str(tmp_path_factory.mktemp("keras_hub") / "bert")
    keras.utils.set_random_seed(2)
    keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB),
        num_layers=1,
        num_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=32,
    ).save_to_preset(path)
    keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True).save_to_preset(
        path
    )
    return path


def handmade(**kwargs):
    """A hand-built image `Backbone`: a `Dense(2)` over 4x4 images."""
    return Backbone(
        name="handmade",
        handle="handmade",
        modality="image",
        feature_dim=2,
        image_size=(4, 4),
        builder=lambda trainable: keras.layers.Dense(2),
        **kwargs,
    )


def tiny_application(**kwargs):
    return Backbone.from_keras_application(
        "MobileNetV2", weights=None, image_size=(32, 32), **kwargs
    )


def images(size, high=1.0, batch=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, high, (batch, size, size, 3)).astype("float32")


# --- Backbone.from_hub -------------------------------------------------------


def test_from_hub_reads_image_size_and_features_from_signature(image_model_path):
    backbone = Backbone.from_hub(image_model_path)
    assert backbone.source == "hub"
    assert backbone.modality == "image"
    assert backbone.image_size == (8, 8)
    assert backbone.value_range == (0.0, 1.0)
    assert backbone.feature_dim == 4
    assert backbone.seq_length is None
    assert backbone.build()(images(8)).shape == (2, 4)


def test_from_hub_builds_frozen_or_trainable_layers(image_model_path):
    backbone = Backbone.from_hub(image_model_path)
    assert backbone.build(trainable=False).trainable_weights == []
    assert len(backbone.build(trainable=True).trainable_weights) > 0


def test_build_passes_load_options_to_hub_layers_only(image_model_path, bert_paths):
    localhost = tf.saved_model.LoadOptions(experimental_io_device="/job:localhost")
    nowhere = tf.saved_model.LoadOptions(experimental_io_device="/job:nowhere")
    text = Backbone.from_hub_text(*bert_paths, seq_length=16)
    for backbone in (Backbone.from_hub(image_model_path), text):
        assert isinstance(backbone.build(load_options=localhost), tftransfer.HubLayer)
        with pytest.raises(tftransfer.HandleError, match="/job:nowhere"):
            backbone.build(load_options=nowhere)
    assert tiny_application().build(load_options=nowhere).output_shape == (None, 1280)
    # A hand-written builder that takes no load options still builds (TPUs).
    assert isinstance(handmade().build(load_options=nowhere), keras.layers.Dense)


def test_built_hub_layers_store_the_handle_given_not_a_local_path(
    image_model_path, bert_paths
):
    preprocessor, encoder = bert_paths
    image_handle, encoder_handle = f"file://{image_model_path}", f"file://{encoder}"
    image = Backbone.from_hub(image_handle).build()
    text = Backbone.from_hub_text(preprocessor, encoder_handle).build()
    assert image.get_config()["handle"] == image_handle
    assert text.get_config()["handle"] == encoder_handle


def test_from_hub_rejects_an_image_size_the_signature_contradicts(image_model_path):
    with pytest.raises(tftransfer.InputSpecError, match=r"\(8, 8\)"):
        Backbone.from_hub(image_model_path, image_size=(16, 16))


def test_from_hub_takes_a_value_range_given(image_model_path):
    backbone = Backbone.from_hub(image_model_path, value_range=(-1.0, 1.0))
    assert backbone.value_range == (-1.0, 1.0)


def test_from_hub_text_preprocesses_and_encodes(bert_paths):
    preprocessor, encoder = bert_paths
    backbone = Backbone.from_hub_text(preprocessor, encoder, seq_length=16)
    assert (backbone.source, backbone.modality) == ("hub_text", "text")
    assert backbone.seq_length == 16
    assert backbone.feature_dim == 8
    assert backbone.output_key == "pooled_output"
    inputs = backbone.text_preprocessor()(tf.constant(SENTENCES))
    assert sorted(inputs) == ["input_mask", "input_type_ids", "input_word_ids"]
    assert all(v.dtype == tf.int32 and v.shape == (2, 16) for v in inputs.values())
    assert backbone.build()(inputs).shape == (2, 8)


def test_from_hub_text_loads_its_preprocessor_once(bert_paths, monkeypatch):
    """The preprocessor that probes the encoder is the one
    `text_preprocessor()` returns: one SavedModel load, one check."""
    preprocessor, encoder = bert_paths
    loads = []
    load = tf.saved_model.load

    def counting_load(path, *args, **kwargs):
        loads.append(os.path.realpath(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(tf.saved_model, "load", counting_load)
    backbone = Backbone.from_hub_text(preprocessor, encoder, seq_length=16)
    assert backbone.text_preprocessor() is backbone.text_preprocessor()
    assert loads.count(os.path.realpath(preprocessor)) == 1


def test_from_hub_text_without_preprocessor_passes_strings(text_embedding_path):
    backbone = Backbone.from_hub_text(None, text_embedding_path)
    strings = backbone.text_preprocessor()(tf.constant(SENTENCES))
    assert strings.dtype == tf.string
    assert backbone.feature_dim == 6
    assert backbone.build()(strings).shape == (2, 6)


def test_from_hub_text_packs_to_any_seq_length(bert_paths):
    backbone = Backbone.from_hub_text(*bert_paths, seq_length=24)
    tokens = backbone.text_preprocessor()(tf.constant(SENTENCES))
    assert tokens["input_word_ids"].shape == (len(SENTENCES), 24)
    features = backbone.build()(tokens)
    assert features.shape == (len(SENTENCES), backbone.feature_dim)


def test_image_backbone_has_no_text_preprocessor(image_model_path):
    with pytest.raises(tftransfer.InputSpecError, match="takes images"):
        Backbone.from_hub(image_model_path).text_preprocessor()


# --- Backbone.from_keras_application -----------------------------------------


def test_from_keras_application_describes_and_builds():
    backbone = tiny_application()
    assert backbone.source == "keras_application"
    assert backbone.image_size == (32, 32)
    assert backbone.value_range == (0.0, 255.0)
    assert backbone.feature_dim == 1280
    frozen = backbone.build(trainable=False)
    assert frozen.trainable_weights == []
    assert frozen(images(32, 255.0)).shape == (2, 1280)
    assert len(backbone.build(trainable=True).trainable_weights) > 100


def test_from_keras_application_loads_a_weights_file(tmp_path):
    backbone = tiny_application()
    layer = backbone.build()
    base = next(sub for sub in layer.layers if isinstance(sub, keras.Model))
    weights_file = str(tmp_path / "mobilenet.weights.h5")
    base.save_weights(weights_file)
    reloaded = Backbone.from_keras_application(
        "MobileNetV2", weights=weights_file, image_size=(32, 32)
    ).build()
    x = images(32, 255.0)
    np.testing.assert_allclose(reloaded(x), layer(x), atol=1e-5)


def test_from_keras_application_errors_name_the_fix(tmp_path):
    with pytest.raises(tftransfer.HandleError, match="MobileNetV2"):
        Backbone.from_keras_application("MobileNetV9", weights=None)
    with pytest.raises(tftransfer.HandleNotFoundError, match="missing.h5"):
        Backbone.from_keras_application(
            "MobileNetV2", weights=str(tmp_path / "missing.h5")
        )


# --- Backbone.from_keras_hub -------------------------------------------------


def test_from_keras_hub_image_preset(keras_hub_image_preset):
    backbone = Backbone.from_keras_hub(keras_hub_image_preset)
    assert backbone.source == "keras_hub"
    assert backbone.image_size == (16, 16)
    assert backbone.value_range == (0.0, 255.0)
    assert backbone.feature_dim == 64
    assert backbone.build()(images(16, 255.0)).shape == (2, 64)


def test_from_keras_hub_bert_preset_uses_serving_safe_preprocessor(
    keras_hub_bert_preset, tmp_path
):
    import keras_hub

    backbone = Backbone.from_keras_hub(keras_hub_bert_preset, seq_length=12)
    assert (backbone.modality, backbone.feature_dim, backbone.seq_length) == (
        "text",
        8,
        12,
    )
    ours = backbone.text_preprocessor()(tf.constant(SENTENCES))
    tokenizer = keras_hub.tokenizers.Tokenizer.from_preset(keras_hub_bert_preset)
    theirs = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=12
    )(tf.constant(SENTENCES))
    np.testing.assert_array_equal(ours["input_word_ids"], theirs["token_ids"])
    np.testing.assert_array_equal(ours["input_mask"], theirs["padding_mask"])
    assert backbone.build()(ours).shape == (2, 8)
    tf.saved_model.save(backbone.text_preprocessor(), str(tmp_path / "pre"))
    assert unsupported_ops(saved_model_ops(str(tmp_path / "pre"))) == {}


def test_from_keras_hub_mean_pooling_averages_unmasked_tokens(keras_hub_bert_preset):
    import keras_hub

    backbone = Backbone.from_keras_hub(
        keras_hub_bert_preset, seq_length=12, pooling="mean"
    )
    inputs = backbone.text_preprocessor()(tf.constant(SENTENCES))
    features = backbone.build()(inputs).numpy()
    encoder = keras_hub.models.Backbone.from_preset(keras_hub_bert_preset)
    sequence = encoder(
        {
            "token_ids": inputs["input_word_ids"],
            "segment_ids": inputs["input_type_ids"],
            "padding_mask": inputs["input_mask"],
        }
    )["sequence_output"].numpy()
    mask = inputs["input_mask"].numpy().astype(bool)
    expected = [sequence[i][mask[i]].mean(axis=0) for i in range(2)]
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_bert_pack_inputs_trims_pairs_round_robin(keras_hub_bert_preset):
    preprocess = Backbone.from_keras_hub(keras_hub_bert_preset).text_preprocessor()
    first = preprocess.tokenize(tf.constant(["a man is playing a guitar ."]))
    second = preprocess.tokenize(tf.constant(["the stock"]))
    packed = preprocess.bert_pack_inputs([first, second], tf.constant(8))
    # 8 + 2 word pieces, 5 places: one from each in turn gives 3 + 2.
    assert packed["input_word_ids"].numpy()[0].tolist() == [2, 5, 6, 7, 3, 11, 12, 3]
    assert packed["input_type_ids"].numpy()[0].tolist() == [0, 0, 0, 0, 0, 1, 1, 1]
    assert packed["input_mask"].numpy().sum() == 8


def test_from_keras_hub_rejects_unknown_pooling(keras_hub_bert_preset):
    with pytest.raises(tftransfer.ConfigError, match="pooling"):
        Backbone.from_keras_hub(keras_hub_bert_preset, pooling="sum")


def test_from_keras_hub_first_pooling_takes_the_cls_token(keras_hub_bert_preset):
    first = Backbone.from_keras_hub(
        keras_hub_bert_preset, seq_length=12, pooling="first"
    )
    sequence = first.with_output("sequence_output")
    inputs = first.text_preprocessor()(tf.constant(SENTENCES))
    np.testing.assert_allclose(
        first.build()(inputs), sequence.build()(inputs)[:, 0, :], atol=1e-6
    )


def test_old_pooling_spellings_name_the_vocabulary_word(
    keras_hub_image_preset, keras_hub_bert_preset
):
    cases = [
        (lambda: tiny_application(pooling="avg"), "'mean'"),
        (
            lambda: Backbone.from_keras_hub(keras_hub_image_preset, pooling="avg"),
            "'mean'",
        ),
        (
            lambda: Backbone.from_keras_hub(keras_hub_bert_preset, pooling="cls"),
            "'first'",
        ),
    ]
    for build, word in cases:
        with pytest.raises(tftransfer.ConfigError, match=f"now spelled {word}"):
            build()
    assert tiny_application(pooling="max").feature_dim == 1280


def test_from_keras_hub_names_the_preset_it_cannot_load(tmp_path):
    pytest.importorskip("keras_hub")
    with pytest.raises(tftransfer.HandleError, match="no_such_preset"):
        Backbone.from_keras_hub(str(tmp_path / "no_such_preset"))


# --- get_config / from_config ------------------------------------------------


def test_config_round_trip_recreates_the_backbone(
    image_model_path, bert_paths, keras_hub_bert_preset
):
    originals = (
        tiny_application(),
        Backbone.from_hub(image_model_path),
        Backbone.from_hub_text(*bert_paths, seq_length=16),
        tftransfer.backbone(keras_hub_bert_preset, seq_length=12, pooling="mean"),
    )
    for original in originals:
        config = json.loads(json.dumps(original.get_config()))
        recreated = Backbone.from_config(config)
        assert recreated.get_config() == config
        assert (recreated.source, recreated.image_size, recreated.feature_dim) == (
            original.source,
            original.image_size,
            original.feature_dim,
        )


def test_config_records_the_source_and_the_arguments_given():
    backbone = tftransfer.backbone(
        "keras:MobileNetV2", weights=None, image_size=(32, 32)
    )
    assert backbone.get_config() == {
        "source": "keras_application",
        "arguments": {
            "handle": "keras:MobileNetV2",
            "weights": None,
            "image_size": [32, 32],
        },
    }


def test_catalogue_backbones_record_the_catalogue_name_not_the_weights_cache(
    keras_hub_bert_preset, monkeypatch
):
    from tftransfer.backbones.weights import minilm

    monkeypatch.setattr(minilm, "preset_dir", lambda: keras_hub_bert_preset)
    backbone = tftransfer.backbone("MiniLM", seq_length=12)
    assert backbone.source == "keras_hub"  # the model is a KerasHub preset
    assert backbone.name == "all-minilm-l6-v2"
    assert backbone.get_config() == {
        "source": "catalogue",
        "arguments": {"handle": "MiniLM", "seq_length": 12},
    }
    sequence = backbone.with_output("sequence_output")
    assert sequence.get_config()["arguments"]["output_key"] == "sequence_output"
    assert Backbone.from_config(sequence.get_config()).output_key == "sequence_output"


def test_hand_built_backbones_have_no_source_and_no_config():
    assert handmade().source is None
    with pytest.raises(tftransfer.ConfigError, match="BackboneSource"):
        handmade().get_config()
    with pytest.raises(tftransfer.ConfigError, match="'nowhere'"):
        handmade(source="nowhere")


def test_from_config_names_a_missing_source_and_how_to_register_it():
    config = {"source": "onnx", "arguments": {"handle": "model.onnx"}}
    with pytest.raises(tftransfer.ConfigError, match="'onnx'.*register_source"):
        Backbone.from_config(config)
    with pytest.raises(tftransfer.ConfigError, match="get_config"):
        Backbone.from_config({"constructor": "from_hub", "arguments": {}})


# --- tftransfer.backbone() ---------------------------------------------------


def test_backbone_picks_keras_applications(monkeypatch):
    for handle in ("keras:MobileNetV2", "keras.applications.MobileNetV2"):
        backbone = tftransfer.backbone(handle, weights=None, image_size=(32, 32))
        assert (backbone.source, backbone.name) == ("keras_application", "MobileNetV2")


def test_backbone_picks_keras_hub(keras_hub_image_preset, keras_hub_bert_preset):
    assert tftransfer.backbone(f"keras_hub:{keras_hub_image_preset}").feature_dim == 64
    assert tftransfer.backbone(keras_hub_image_preset).source == "keras_hub"
    assert tftransfer.backbone(keras_hub_bert_preset).modality == "text"


def test_backbone_picks_kaggle_and_hf_handles_for_keras_hub():
    for handle in (
        "kaggle://keras/efficientnet/keras/efficientnet_lite0_ra_imagenet",
        "hf://keras/bert_tiny_en_uncased",
        "keras_hub:bert_tiny_en_uncased",
    ):
        assert registry.find_source(handle).name == "keras_hub"


def test_backbone_picks_tf_hub_for_folders_and_urls(image_model_path, bert_paths):
    assert tftransfer.backbone(image_model_path).source == "hub"
    assert tftransfer.backbone(f"file://{image_model_path}").image_size == (8, 8)
    preprocessor, encoder = bert_paths
    text = tftransfer.backbone(
        f"file://{encoder}", preprocessor=preprocessor, seq_length=16
    )
    assert (text.source, text.feature_dim) == ("hub_text", 8)


def test_backbone_resolves_catalogue_names_to_published_handles(monkeypatch):
    """The TF Hub sources' builds are recorded (nothing downloads); the
    catalogue passes them the published handle and options."""
    calls = []

    def recording(source):
        def build(self, handle, **options):
            calls.append((source, handle, options))
            return handmade()

        return build

    monkeypatch.setattr(hub_source.HubImageSource, "build", recording("hub"))
    monkeypatch.setattr(hub_source.HubTextSource, "build", recording("hub_text"))
    image = tftransfer.backbone("EfficientNetV2_B0")
    tftransfer.backbone("bert-small", seq_length=64)
    tftransfer.backbone("universal-sentence-encoder")
    assert calls[0] == (
        "hub",
        "https://tfhub.dev/google/imagenet/efficientnet_v2_imagenet1k_b0/feature_vector/2",
        {
            "image_size": (224, 224),
            "value_range": (0.0, 1.0),
            "name": "efficientnetv2-b0",
        },
    )
    assert calls[1] == (
        "hub_text",
        "https://tfhub.dev/tensorflow/small_bert/bert_en_uncased_L-4_H-512_A-8/1",
        {
            "preprocessor": "https://tfhub.dev/tensorflow/bert_en_uncased_preprocess/3",
            "name": "small-bert-small",
            "seq_length": 64,
        },
    )
    assert calls[2][2]["preprocessor"] is None
    assert image.get_config() == {
        "source": "catalogue",
        "arguments": {"handle": "EfficientNetV2_B0"},
    }


def test_catalogue_covers_the_families_with_sizes():
    for name in (
        "mobilenet-v2", "mobilenet-v3-small", "mobilenet-v3-large", "efficientnet-b0",
        "efficientnetv2-b0", "efficientnetv2-s", "resnet-v2-50", "bert-base-uncased",
        "small-bert-tiny", "electra-small", "universal-sentence-encoder",
        "all-minilm-l6-v2", "efficientnet-lite0",
    ):  # fmt: skip
        _, entry = catalogue.lookup(name)
        assert entry["feature_dim"] > 0
    assert catalogue.lookup("efficientnetv2-s")[1]["options"]["image_size"] == (
        384,
        384,
    )
    assert catalogue.lookup("electra-small")[1]["feature_dim"] == 256


def test_backbone_unknown_handle_suggests_and_lists_forms():
    with pytest.raises(tftransfer.HandleError, match="efficientnetv2-b0") as error:
        tftransfer.backbone("efficientnetv2-b9")
    assert "keras_hub:<preset>" in str(error.value)


# --- hubify ------------------------------------------------------------------


def tiny_conv_model():
    """Conv + BatchNorm (+ an L2 regularizer) + pooling: 8x8x3 -> 4 features."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, kernel_regularizer=keras.regularizers.L2(1e-3))(
        inputs
    )
    x = keras.layers.BatchNormalization()(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))


def test_hubify_round_trip_in_hub_layer(tmp_path):
    model = tiny_conv_model()
    written = tftransfer.hubify(model, str(tmp_path / "conv"))
    assert written.preprocessor_path is None
    x = images(8)
    assert np.max(np.abs(tftransfer.HubLayer(written.path)(x) - model(x))) < 1e-5
    loaded = tf.saved_model.load(written.path)
    assert len(loaded.variables) == len(model.variables) == 6
    assert len(loaded.trainable_variables) == len(model.trainable_variables) == 4
    [regularization] = loaded.regularization_losses
    kernel = model.layers[1].kernel.numpy()
    np.testing.assert_allclose(regularization(), 1e-3 * np.sum(kernel**2), rtol=1e-5)
    trained = loaded(x, training=True)  # batch statistics, as in training
    assert np.max(np.abs(trained - model(x, training=True))) < 1e-5


def test_hubify_output_loads_in_legacy_hub_keras_layer(tmp_path):
    hub = pytest.importorskip("tensorflow_hub")
    tf_keras = pytest.importorskip("tf_keras")
    model = tiny_conv_model()
    written = tftransfer.hubify(model, str(tmp_path / "conv"))
    legacy = tf_keras.Sequential(
        [tf_keras.Input((8, 8, 3)), hub.KerasLayer(written.path, trainable=True)]
    )
    x = images(8)
    assert np.max(np.abs(legacy(x) - model(x))) < 1e-5
    assert len(legacy.trainable_weights) == 4
    assert len(legacy.losses) == 1  # the kernel regularizer came along


@pytest.mark.slow
def test_hubify_keras_application_round_trip(tmp_path):
    base = next(
        m for m in tiny_application().build().layers if isinstance(m, keras.Model)
    )
    weights_file = str(tmp_path / "mobilenet.weights.h5")
    base.save_weights(weights_file)
    backbone = Backbone.from_keras_application(
        "MobileNetV2", weights=weights_file, image_size=(32, 32)
    )
    written = tftransfer.hubify(backbone, str(tmp_path / "mobilenet"))
    described = Backbone.from_hub(written.path)
    assert (described.image_size, described.value_range) == ((32, 32), (0.0, 1.0))
    x = images(32)
    expected = backbone.build()(x * 255.0)
    assert np.max(np.abs(described.build()(x) - expected)) < 1e-5


def test_hubify_backbone_follows_tf_hub_image_convention(
    keras_hub_image_preset, tmp_path
):
    backbone = Backbone.from_keras_hub(keras_hub_image_preset)
    written = tftransfer.hubify(backbone, str(tmp_path / "resnet"))
    described = Backbone.from_hub(written.path)
    assert (described.image_size, described.value_range, described.feature_dim) == (
        (16, 16),
        (0.0, 1.0),
        64,
    )
    x = images(16)
    diff = np.max(np.abs(described.build()(x) - backbone.build()(x * 255.0)))
    assert diff < 1e-5


def test_hubify_bert_writes_serving_safe_pair(keras_hub_bert_preset, tmp_path):
    hub = pytest.importorskip("tensorflow_hub")
    tf_keras = pytest.importorskip("tf_keras")
    backbone = Backbone.from_keras_hub(keras_hub_bert_preset, seq_length=12)
    written = tftransfer.hubify(backbone, str(tmp_path / "bert"))
    assert written.preprocessor_path == str(tmp_path / "bert_preprocessor")
    assert unsupported_ops(saved_model_ops(written.preprocessor_path)) == {}
    hubbed = Backbone.from_hub_text(
        written.preprocessor_path, written.path, seq_length=12
    )
    strings = tf.constant(SENTENCES)
    ours = backbone.text_preprocessor()(strings)
    theirs = hubbed.text_preprocessor()(strings)
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key])
    expected = backbone.build()(ours)
    assert np.max(np.abs(hubbed.build()(theirs) - expected)) < 1e-5
    inputs = {k: tf_keras.Input((12,), dtype=tf.int32, name=k) for k in ours}
    outputs = hub.KerasLayer(written.path, output_key="pooled_output")(inputs)
    legacy = tf_keras.Model(inputs, outputs)
    assert np.max(np.abs(legacy(theirs) - expected)) < 1e-5


def test_hubify_writes_neither_folder_when_the_preprocessor_check_fails(
    keras_hub_bert_preset, tmp_path, monkeypatch
):
    checked = []

    def unsupported_ops_reporting_one(ops):
        checked.append(ops)
        return {"FastWordpieceTokenizeWithOffsets": "tensorflow_text"}

    monkeypatch.setattr(
        reusable_saved_model, "unsupported_ops", unsupported_ops_reporting_one
    )
    backbone = Backbone.from_keras_hub(keras_hub_bert_preset, seq_length=12)
    target = str(tmp_path / "out" / "bert")
    with pytest.raises(tftransfer.ExportError, match="FastWordpiece") as error:
        tftransfer.hubify(backbone, target)
    assert os.listdir(tmp_path / "out") == []  # no folder, no staging leftovers
    assert "Nothing was written" in str(error.value)
    assert "WordpieceTokenizeWithOffsets" in checked[0]  # the staged model's ops
    monkeypatch.undo()
    written = tftransfer.hubify(backbone, target)
    assert sorted(os.listdir(tmp_path / "out")) == ["bert", "bert_preprocessor"]
    assert written.preprocessor_path == f"{target}_preprocessor"


def test_hubify_refuses_existing_paths_and_tf_hub_backbones(image_model_path, tmp_path):
    existing = tmp_path / "taken"
    existing.mkdir()
    with pytest.raises(tftransfer.ExportError, match="already exists"):
        tftransfer.hubify(tiny_conv_model(), str(existing))
    with pytest.raises(tftransfer.ExportError, match="already is a TF Hub"):
        tftransfer.hubify(Backbone.from_hub(image_model_path), str(tmp_path / "x"))
    assert sorted(os.listdir(tmp_path)) == ["taken"]


# --- one training code path for every source ---------------------------------


def fit_once(backbone, inputs, labels):
    """Backbone features -> softmax head, trained with model.fit for one epoch."""
    if backbone.modality == "image":
        model_inputs = keras.Input((*backbone.image_size, 3), dtype="float32")
    else:
        model_inputs = {k: keras.Input((None,), dtype="int32", name=k) for k in inputs}
    features = backbone.build(trainable=True)(model_inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(features)
    model = keras.Model(model_inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy"
    )
    before = [w.numpy().copy() for w in model.trainable_weights]
    history = model.fit(inputs, labels, batch_size=2, epochs=1, verbose=0)
    changed = sum(
        not np.allclose(a, w.numpy())
        for a, w in zip(before, model.trainable_weights, strict=True)
    )
    return history.history["loss"][0], changed


@pytest.mark.slow
def test_every_source_trains_through_model_fit(
    image_model_path, bert_paths, keras_hub_image_preset
):
    labels = np.array([0, 1])
    cases = [
        (Backbone.from_hub(image_model_path), images(8)),
        (tiny_application(), images(32, 255.0)),
        (Backbone.from_keras_hub(keras_hub_image_preset), images(16, 255.0)),
    ]
    text = Backbone.from_hub_text(*bert_paths, seq_length=16)
    cases.append((text, dict(text.text_preprocessor()(tf.constant(SENTENCES)))))
    for backbone, inputs in cases:
        loss, changed = fit_once(backbone, inputs, labels)
        assert np.isfinite(loss), backbone.source
        assert changed > 2, backbone.source  # the head and backbone weights moved


# --- other outputs: features= / with_output ----------------------------------


def test_keras_hub_bert_gives_its_sequence_output(keras_hub_bert_preset):
    backbone = Backbone.from_keras_hub(keras_hub_bert_preset, seq_length=12)
    assert backbone.outputs == ("pooled_output", "sequence_output")
    inputs = backbone.text_preprocessor()(tf.constant(SENTENCES))
    sequence = backbone.with_output("sequence_output")
    assert sequence.output_key == "sequence_output"
    assert tuple(sequence.build()(inputs).shape) == (2, 12, 8)
    with pytest.raises(tftransfer.ConfigError, match="sequence_output"):
        backbone.with_output("token_output")


def test_unsupported_outputs_and_kwargs_are_config_errors_naming_the_choices(
    keras_hub_image_preset, image_model_path
):
    # Image backbones of Keras models offer their unpooled feature map.
    for backbone, outputs in (
        (tiny_application(), r"its outputs are \['feature_map'\]"),
        (Backbone.from_keras_hub(keras_hub_image_preset), "feature_map"),
        (Backbone.from_hub(image_model_path), "single output"),
    ):
        with pytest.raises(tftransfer.ConfigError, match=outputs) as error:
            backbone.with_output("sequence_output")
        assert backbone.name in str(error.value)
    with pytest.raises(
        tftransfer.ConfigError, match=r"unknown keyword arguments: \['image_size'\]"
    ):
        tftransfer.backbone("efficientnet-lite0", image_size=(160, 160))
    with pytest.raises(tftransfer.ConfigError, match="now spelled 'first'"):
        tftransfer.backbone("all-minilm-l6-v2", pooling="cls")


def test_feature_extraction_pools_a_catalogue_bert_sequence_output(
    keras_hub_bert_preset, tmp_path, monkeypatch
):
    """The docs' `FeatureExtraction(backbone("all-minilm-l6-v2"),
    features="sequence_output", pooling="mean")`, with a tiny BERT standing
    in for MiniLM's weights: mean pooling in the recipe gives MiniLM's own
    (mean-pooled) embedding."""
    from tftransfer.backbones.weights import minilm
    from tftransfer.recipes import FeatureExtraction

    monkeypatch.setattr(minilm, "preset_dir", lambda: keras_hub_bert_preset)
    backbone = tftransfer.backbone("all-minilm-l6-v2", seq_length=12)
    recipe = FeatureExtraction(
        backbone,
        features="sequence_output",
        pooling="mean",
        head_epochs=1,
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        verbose=0,
    )
    inputs = dict(backbone.text_preprocessor()(tf.constant(SENTENCES)))
    data = tf.data.Dataset.from_tensor_slices((inputs, np.array([0, 1]))).batch(2)
    recipe.fit(data)
    features = recipe.cached_features(data, "train").arrays()[0]
    np.testing.assert_allclose(features, backbone.build()(inputs), atol=1e-5)
