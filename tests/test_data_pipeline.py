"""`prepare_fn`, `augmenter` and `make_pipeline`: shapes, values, batching."""

import io

import hub_fixtures
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import COLORS, image_backbone, image_bytes, image_folder
from PIL import Image

from tftransfer import data
from tftransfer.backbones import Backbone
from tftransfer.errors import DataError


def _striped(height, width):
    """Left third black, the rest white: shows what a resize kept."""
    pixels = np.full((height, width, 3), 255, np.uint8)
    pixels[:, : width // 3] = 0
    return pixels


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF"])
def test_prepare_decodes_resizes_and_maps_to_value_range(fmt):
    prepare = data.prepare_fn(image_backbone(size=(16, 16), value_range=(-1.0, 1.0)))
    image = prepare(tf.constant(image_bytes(fmt, size=(40, 60), color=(255, 0, 0))))
    assert image.shape == (16, 16, 3) and image.dtype == tf.float32
    np.testing.assert_allclose(image[8, 8], [1.0, -1.0, -1.0], atol=0.05)


def test_prepare_turns_grayscale_and_rgba_into_rgb():
    prepare = data.prepare_fn(image_backbone(size=(8, 8)))
    gray = prepare(tf.constant(image_bytes("PNG", color=(128, 128, 128), mode="L")))
    rgba = prepare(tf.constant(image_bytes("PNG", color=(0, 255, 0), mode="RGBA")))
    pixels = prepare(tf.fill([10, 12, 1], tf.constant(255, tf.uint8)))
    assert gray.shape == rgba.shape == pixels.shape == (8, 8, 3)
    np.testing.assert_allclose(gray[0, 0], [128 / 255] * 3, atol=0.01)
    np.testing.assert_allclose(rgba[0, 0], [0.0, 1.0, 0.0], atol=0.01)
    np.testing.assert_allclose(pixels, 1.0)


def test_prepare_center_crop_keeps_aspect_and_stretch_keeps_everything():
    pixels = tf.constant(_striped(30, 90))  # 1/3 black on the left
    crop = data.prepare_fn(image_backbone(size=(10, 10)))(pixels)
    stretch = data.prepare_fn(image_backbone(size=(10, 10)), resize_mode="stretch")(
        pixels
    )
    assert float(tf.reduce_min(crop)) == 1.0  # the centre square is all white
    assert float(tf.reduce_mean(stretch)) == pytest.approx(2 / 3, abs=0.05)
    with pytest.raises(DataError, match="resize_mode"):
        data.prepare_fn(image_backbone(), resize_mode="pad")


def test_prepare_large_jpeg_downscaled_while_decoding_matches_full_decode():
    encoded = tf.io.encode_jpeg(tf.constant(_striped(480, 640)), quality=95)
    prepare = data.prepare_fn(image_backbone(size=(48, 48)))
    fast = prepare(encoded)  # decoded at 1/8 scale: 60x80
    full = tf.image.resize(
        tf.image.central_crop(tf.io.decode_jpeg(encoded, channels=3), 480 / 640)[
            :, :480
        ],
        (48, 48),
        antialias=True,
    )
    np.testing.assert_allclose(fast, full / 255.0, atol=0.08)


def test_prepare_jpeg_smaller_than_the_target_is_decoded_at_full_scale():
    encoded = tf.io.encode_jpeg(tf.constant(_striped(60, 90)), quality=95)
    prepare = data.prepare_fn(image_backbone(size=(120, 120)))
    central = tf.io.decode_jpeg(encoded, channels=3)[:, 15:75]
    expected = tf.image.resize(central, (120, 120)) / 255.0
    np.testing.assert_allclose(prepare(encoded), expected, atol=1e-5)


@pytest.mark.parametrize("size", [(30, 30), (40, 40)])
def test_prepare_jpeg_crops_while_decoding_as_it_crops_pixels(size):
    encoded = tf.io.encode_jpeg(tf.constant(_striped(47, 83)), quality=95)
    prepare = data.prepare_fn(image_backbone(size=size))
    pixels = tf.io.decode_jpeg(encoded, channels=3)
    np.testing.assert_allclose(prepare(encoded), prepare(pixels), atol=1e-5)


def test_prepare_large_jpeg_stretch_keeps_the_whole_image():
    encoded = tf.io.encode_jpeg(tf.constant(_striped(480, 640)), quality=95)
    prepare = data.prepare_fn(image_backbone(size=(48, 48)), resize_mode="stretch")
    assert float(tf.reduce_mean(prepare(encoded))) == pytest.approx(2 / 3, abs=0.03)


def test_prepare_animated_gif_gives_its_first_frame():
    frames = [
        Image.fromarray(np.full((12, 12, 3), color, np.uint8))
        for color in ((255, 0, 0), (0, 0, 255))
    ]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    image = data.prepare_fn(image_backbone(size=(8, 8)))(tf.constant(buffer.getvalue()))
    np.testing.assert_allclose(image[4, 4], [1.0, 0.0, 0.0], atol=0.02)


def test_prepare_accepts_a_batch_of_encoded_images_as_serving_does():
    prepare = data.prepare_fn(image_backbone(size=(8, 8)))
    batch = tf.constant([image_bytes("PNG"), image_bytes("JPEG", size=(50, 20))])
    prepared = tf.function(prepare)(batch)
    assert prepared.shape == (2, 8, 8, 3)


def test_augmenter_builds_named_layers_and_rejects_unknown_names():
    layers = data.augmenter({"flip": "horizontal", "rotation": 0.05, "contrast": 0.1})
    assert [type(layer).__name__ for layer in layers.layers] == [
        "RandomFlip",
        "RandomRotation",
        "RandomContrast",
    ]
    images = tf.random.uniform([2, 8, 8, 3])
    assert layers(images, training=True).shape == (2, 8, 8, 3)
    names = [type(layer).__name__ for layer in data.augmenter("randaugment").layers]
    assert names == ["RandAugment"]
    with pytest.raises(DataError, match="augmentation names among"):
        data.augmenter(["flip", "blur"])


def test_pipeline_batches_prepared_images_with_labels(tmp_path):
    source = data.from_image_folder(image_folder(tmp_path, {"cats": 3, "dogs": 2}))
    batches = list(data.make_pipeline(source, image_backbone(), batch_size=2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    images = tf.concat([b[0] for b in batches], 0)
    labels = tf.concat([b[1] for b in batches], 0).numpy().tolist()
    assert images.shape == (5, 16, 16, 3) and labels == [0, 0, 0, 1, 1]
    np.testing.assert_allclose(
        images[0, 0, 0], np.array(COLORS["cats"]) / 255, atol=0.02
    )


def test_pipeline_training_shuffles_augments_and_uses_global_batch(tmp_path):
    source = data.from_image_folder(image_folder(tmp_path, {"cats": 5, "dogs": 4}))
    train = data.make_pipeline(
        source,
        image_backbone(),
        batch_size=2,
        training=True,
        augment=["flip", "contrast"],
        replicas=2,
        seed=3,
    )
    batches = list(train)
    assert [b[0].shape[0] for b in batches] == [
        4,
        4,
    ]  # 2 x 2 replicas, remainder dropped
    assert train.element_spec[0].shape.as_list() == [4, 16, 16, 3]
    epoch_labels = sum((b[1].numpy().tolist() for b in batches), [])
    assert epoch_labels != [0, 0, 0, 0, 0, 1, 1, 1]  # not the folder order


def test_unseeded_training_pipeline_keeps_the_readers_order(tmp_path):
    """Only the pipeline's own maps may reorder: `split()` picks by position."""
    source = data.from_image_folder(image_folder(tmp_path, {"cats": 3, "dogs": 3}))
    train = data.make_pipeline(source, image_backbone(), 2, training=True)
    assert train.options().deterministic is not False


def test_pipeline_caches_when_small_and_not_when_told():
    source = data.from_arrays(np.zeros((4, 8, 8, 3), np.uint8), [0, 1, 0, 1])
    cached = data.make_pipeline(source, image_backbone(), 2)
    uncached = data.make_pipeline(source, image_backbone(), 2, cache=False)
    small_budget = data.make_pipeline(source, image_backbone(), 2, cache_bytes=100)
    assert "CacheDatasetV2" in _dataset_ops(cached)
    assert "CacheDatasetV2" not in _dataset_ops(uncached)
    assert "CacheDatasetV2" not in _dataset_ops(small_budget)


def _dataset_ops(dataset):
    graph = tf.compat.v1.GraphDef.FromString(dataset._as_serialized_graph().numpy())
    return {node.op for node in graph.node}


def test_pipeline_can_be_distributed_by_a_strategy():
    source = data.from_arrays(np.zeros((8, 8, 8, 3), np.uint8), [0, 1] * 4)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    pipeline = data.make_pipeline(
        source, image_backbone(), 4, replicas=strategy.num_replicas_in_sync
    )
    distributed = strategy.experimental_distribute_dataset(pipeline)
    shapes = [strategy.experimental_local_results(x)[0].shape for x, _ in distributed]
    assert shapes == [(4, 16, 16, 3), (4, 16, 16, 3)]


def test_pipeline_refuses_mismatched_kind_and_misplaced_augmentation():
    texts = data.from_arrays(["a", "b"], [0, 1])
    images = data.from_arrays(np.zeros((2, 4, 4, 3), np.uint8), [0, 1])
    with pytest.raises(
        DataError, match="holds text data but backbone 'tiny_image' takes image"
    ):
        data.make_pipeline(texts, image_backbone(), 2)
    with pytest.raises(DataError, match="training pipelines only"):
        data.make_pipeline(images, image_backbone(), 2, augment="flip")


@pytest.fixture(scope="module")
def text_backbone(bert_paths):
    preprocessor, encoder = bert_paths
    return Backbone.from_hub_text(
        preprocessor, encoder, seq_length=hub_fixtures.TEXT_SEQ_LENGTH
    )


def test_text_pipeline_tokenizes_raw_strings_in_tf_data(text_backbone):
    source = data.from_arrays(["hello world", "the cat", "a dog"], [0, 1, 1])
    pipeline = data.make_pipeline(source, text_backbone, 2, training=True, seed=0)
    inputs, labels = next(iter(pipeline))
    assert sorted(inputs) == ["input_mask", "input_type_ids", "input_word_ids"]
    assert inputs["input_word_ids"].shape == (2, hub_fixtures.TEXT_SEQ_LENGTH)
    assert inputs["input_word_ids"].dtype == tf.int32
    assert labels.shape == (2,)
    single = data.prepare_fn(text_backbone)(tf.constant("hello world"))
    assert single["input_word_ids"].shape == (hub_fixtures.TEXT_SEQ_LENGTH,)
