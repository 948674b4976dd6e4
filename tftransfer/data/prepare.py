"""`prepare_fn`: raw input to what a backbone takes, for training and serving."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from tftransfer.errors import DataError

RESIZE_MODES = ("center_crop", "stretch")
_JPEG_RATIOS = (8, 4, 2, 1)


def _center_window(height, width, size):
    """`(top, left, height, width)` of the largest central window of `size`'s
    aspect ratio in a `height x width` image (int32 tensors)."""
    crop_h = tf.minimum(height, width * size[0] // size[1])
    crop_w = tf.minimum(width, height * size[1] // size[0])
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def _decode_jpeg(encoded: tf.Tensor, size: tuple[int, int], crop: bool) -> tf.Tensor:
    """Decodes a JPEG, downscaling by 2, 4 or 8 while decoding where possible.

    libjpeg can scale in the DCT domain as it decodes, which is much faster
    than decoding at full size and resizing after. The largest factor is
    chosen that still leaves the area kept (the central window of the
    target's aspect ratio, or the whole image) at least `size`, so the final
    resize only ever shrinks by less than 2x or enlarges. With `crop`, only
    that central window is decoded.
    """
    shape = tf.image.extract_jpeg_shape(encoded)
    room = tf.minimum(shape[0] / size[0], shape[1] / size[1])
    index = tf.argmax(tf.constant(_JPEG_RATIOS, tf.float64) <= room)

    def decode(ratio):
        if not crop:
            return tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)
        # The window is in the coordinates of the downscaled image.
        scaled = (shape[:2] + ratio - 1) // ratio
        window = tf.stack(_center_window(scaled[0], scaled[1], size))
        return tf.io.decode_and_crop_jpeg(encoded, window, channels=3, ratio=ratio)

    branches = [lambda r=r: decode(r) for r in _JPEG_RATIOS]
    return tf.switch_case(tf.cast(index, tf.int32), branches)


def decode_image(
    encoded: tf.Tensor, size: tuple[int, int], mode: str = "center_crop"
) -> tf.Tensor:
    """Decodes JPEG, PNG, BMP or GIF (first frame) bytes to uint8 RGB.

    Grayscale becomes RGB and alpha is dropped. JPEGs much larger than `size`
    are downscaled while decoding, and with `mode="center_crop"` only their
    central window is decoded (see `_decode_jpeg`).
    """
    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, 3), b"\xff\xd8\xff")
    image = tf.cond(
        is_jpeg,
        lambda: _decode_jpeg(encoded, size, crop=mode == "center_crop"),
        lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
    )
    image.set_shape([None, None, 3])
    return image


def _to_rgb(pixels: tf.Tensor) -> tf.Tensor:
    channels = pixels.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(pixels)
    if channels == 4:
        return pixels[..., :3]
    if channels == 3:
        return pixels
    raise DataError(
        f"Expected images with 1 (grayscale), 3 (RGB) or 4 (RGBA) channels. "
        f"Received: shape={pixels.shape}."
    )


def resize(image: tf.Tensor, size: tuple[int, int], mode: str) -> tf.Tensor:
    """Resizes `[..., h, w, c]` images to `size` (bilinear), returning float32.

    `mode="center_crop"` keeps the aspect ratio: it takes the largest central
    window with the target's aspect ratio and resizes that. `mode="stretch"`
    resizes the whole image, changing its aspect ratio.
    """
    if mode == "center_crop":
        shape = tf.shape(image)
        top, left, crop_h, crop_w = _center_window(shape[-3], shape[-2], size)
        image = image[..., top : top + crop_h, left : left + crop_w, :]
    return tf.image.resize(image, size, method="bilinear")


def prepare_fn(backbone, *, resize_mode: str = "center_crop") -> Callable:
    """Returns the function that prepares raw inputs for `backbone`.

    The same function runs in training pipelines (`make_pipeline`) and in
    exported serving signatures, so training and serving preprocess alike.

    Images: takes encoded image bytes (JPEG, PNG, BMP, GIF; a scalar string
    or a `[batch]` string tensor) or pixels (`[h, w, c]` or `[batch, h, w,
    c]`, values in `[0, 255]`, 1, 3 or 4 channels). Returns float32
    `[(batch,) height, width, 3]` at `backbone.image_size` with values in
    `backbone.value_range`.

    Text: takes raw strings (a scalar or `[batch]`) and returns the dict of
    token tensors of `backbone.text_preprocessor()`. Tokenizing is string
    work, which TPUs cannot do, so it belongs in `tf.data` and in the
    serving graph, never in the trained model.

    Args:
        backbone: A `tftransfer.Backbone` (only `modality`, `image_size`,
            `value_range` and `text_preprocessor()` are used).
        resize_mode: Images only. `"center_crop"` (default) keeps the aspect
            ratio and crops the centre; `"stretch"` resizes the whole image.

    Returns:
        A callable `fn(raw_inputs) -> prepared_inputs`.

    Example:

    >>> prepare = tftransfer.data.prepare_fn(backbone)
    >>> prepare(tf.io.read_file("cat.jpg")).shape
    TensorShape([224, 224, 3])
    """
    if backbone.modality == "text":
        preprocessor = backbone.text_preprocessor()

        def prepare_text(text: tf.Tensor):
            text = tf.convert_to_tensor(text, tf.string)
            if text.shape.rank == 0:
                return tf.nest.map_structure(
                    lambda t: t[0], preprocessor(tf.reshape(text, [1]))
                )
            return preprocessor(text)

        return prepare_text

    if resize_mode not in RESIZE_MODES:
        raise DataError(
            f"Expected `resize_mode` to be one of {RESIZE_MODES}. Received: "
            f"resize_mode={resize_mode!r}."
        )
    size = tuple(backbone.image_size)
    low, high = backbone.value_range

    def prepare_one(image: tf.Tensor) -> tf.Tensor:
        if image.dtype == tf.string:
            image = decode_image(image, size, resize_mode)
        image = resize(_to_rgb(image), size, resize_mode)
        return image * ((high - low) / 255.0) + low

    def prepare_image(image: tf.Tensor) -> tf.Tensor:
        image = tf.convert_to_tensor(image)
        if image.dtype == tf.string and image.shape.rank == 1:
            image = tf.map_fn(
                prepare_one,
                image,
                fn_output_signature=tf.TensorSpec([*size, 3], tf.float32),
            )
        else:
            image = prepare_one(image)
        image.set_shape([*image.shape[:-3], *size, 3])
        return image

    return prepare_image
