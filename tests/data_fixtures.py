"""Small generated data for the `tftransfer.data` tests: images, text, backbones."""

import io
import os

import keras
import numpy as np
from PIL import Image

from tftransfer.backbones import Backbone

# A distinct colour per class, so tests can tell which image they got.
COLORS = {"cats": (250, 10, 10), "dogs": (10, 250, 10), "fish": (10, 10, 250)}


def image_bytes(fmt: str, size=(24, 32), color=(250, 10, 10), mode="RGB") -> bytes:
    """Encodes a `size` = (height, width) image of one colour in `fmt`."""
    height, width = size
    pixels = np.zeros((height, width, 3), np.uint8) + np.asarray(color, np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write(path, data: bytes) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def image_folder(root, counts=None, fmt="PNG", size=(24, 32)) -> str:
    """Writes `root/<class>/<i>.<ext>` images; `counts` maps class -> number."""
    counts = counts or {"cats": 3, "dogs": 3}
    ext = {"JPEG": "jpg", "PNG": "png", "BMP": "bmp", "GIF": "gif"}[fmt]
    for name, count in counts.items():
        for i in range(count):
            data = image_bytes(fmt, size, COLORS[name])
            write(os.path.join(root, name, f"{i}.{ext}"), data)
    return str(root)


def image_backbone(size=(16, 16), value_range=(0.0, 1.0)) -> Backbone:
    """An image `Backbone` whose model is a global average pool."""
    return Backbone(
        name="tiny_image",
        handle="test://tiny_image",
        modality="image",
        feature_dim=3,
        builder=lambda trainable: keras.layers.GlobalAveragePooling2D(),
        image_size=size,
        value_range=value_range,
    )


def seeded_image_backbone(name: str, conv_filters: int | None = None) -> Backbone:
    """An 8x8 image `Backbone` built with seed 0: a `Conv2D(conv_filters, 3)`
    named "conv" (if given) and a global average pool."""

    def build(trainable):
        keras.utils.set_random_seed(0)
        conv = (
            [keras.layers.Conv2D(conv_filters, 3, name="conv")] if conv_filters else []
        )
        return keras.Sequential(
            [keras.Input((8, 8, 3)), *conv, keras.layers.GlobalAveragePooling2D()],
            name=name,
        )

    return Backbone(
        name=name,
        handle=f"test://{name}",
        modality="image",
        feature_dim=conv_filters or 3,
        builder=build,
        image_size=(8, 8),
    )


def signal_images(count: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` 8x8 uint8 images and a signal in [0, 1) each: the brighter
    the first channel, the larger the signal (labels and targets follow
    it)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 128, size=(count, 8, 8, 3)).astype("float32")
    signal = rng.random(count)
    pixels[..., 0] += 120 * signal[:, None, None]
    return pixels.astype("uint8"), signal


def tiny_recipe(cls, tmp_path, name: str = "run", **settings):
    """A quiet recipe of class `cls` on a seeded 4-filter image backbone,
    training into `tmp_path / name` (3 head epochs at learning rate 0.01
    unless `settings` say otherwise)."""
    arguments = dict(
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / name,
        strategy="default",
        head_epochs=3,
        learning_rate=1e-2,
        verbose=0,
    )
    arguments.update(settings)
    return cls(seeded_image_backbone("tiny", conv_filters=4), **arguments)


def batchnorm_network(seed: int = 0) -> keras.Sequential:
    """An 8x8 image model built with `seed`: `Conv2D(4)` "conv_a",
    `BatchNormalization` "bn", `Conv2D(6)` "conv_b", global average pool."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="conv_a"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Conv2D(6, 3, name="conv_b"),
            keras.layers.GlobalAveragePooling2D(),
        ],
        name="tiny",
    )


def batchnorm_backbone() -> Backbone:
    """A `Backbone` over `batchnorm_network()`: the same pretrained weights
    at every build, and it takes `LabeledData`."""
    return Backbone(
        name="tiny",
        handle="test://tiny",
        modality="image",
        feature_dim=6,
        builder=lambda trainable: batchnorm_network(),
        image_size=(8, 8),
    )


def tiny_bert_preset(path: str, vocabulary: list[str], seed: int, **sizes) -> str:
    """Saves a KerasHub BERT preset (backbone and tokenizer) to `path`, its
    weights drawn with `seed`; `sizes` are `BertBackbone` arguments
    (`num_layers`, `num_heads`, `hidden_dim`, `intermediate_dim`; by
    default 2, 2, 32 and 64)."""
    import keras_hub

    sizes = dict(num_layers=2, num_heads=2, hidden_dim=32, intermediate_dim=64) | sizes
    keras.utils.set_random_seed(seed)
    keras_hub.models.BertBackbone(
        vocabulary_size=len(vocabulary), max_sequence_length=16, **sizes
    ).save_to_preset(path)
    keras_hub.models.BertTokenizer(vocabulary=vocabulary).save_to_preset(path)
    return path


def with_lora_products(factors: dict, values: list) -> list:
    """`values` (a backbone's weights, in order) with `scale * a @ b` of
    each LoRA factor entry `{position: (a, b, scale)}` (a recipe's
    `lora_factors`) added to its kernel: what serving the LoRA model must
    compute with."""
    values = list(values)
    for position, (a, b, scale) in factors.items():
        kernel = values[position]
        values[position] = kernel + scale * (a @ b).reshape(kernel.shape)
    return values
