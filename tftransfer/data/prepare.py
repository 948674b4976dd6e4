"""`prepare_fn`: raw input to what a backbone takes, for training and serving."""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

from tftransfer.errors import DataError

RESIZE_MODES = ("center_crop", "stretch")
_JPEG_MAGIC = b"\xff\xd8\xff"
# Factors libjpeg can downscale by while decoding, largest first (1 aside).
_JPEG_RATIOS = (8, 4, 2)


def _center_window(hw: tf.Tensor, size: tuple[int, int]) -> tf.Tensor:
    """`[..., 4]` `(top, left, height, width)` of the largest central window
    of `size`'s aspect ratio in images of `hw = [..., (height, width)]`."""
    crop = tf.minimum(hw, hw[..., ::-1] * [size[0], size[1]] // [size[1], size[0]])
    return tf.concat([(hw - crop) // 2, crop], -1)


def _decode_other(encoded: tf.Tensor, size: tuple[int, int], crop: bool) -> tf.Tensor:
    """Decodes PNG, BMP, GIF (first frame) or JPEG in full, then crops."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    if not crop:
        return image
    window = _center_window(tf.shape(image)[:2], size)
    return tf.slice(
        image, tf.pad(window[:2], [[0, 1]]), tf.concat([window[2:], [3]], 0)
    )


def decode_image(
    encoded: tf.Tensor, size: tuple[int, int], mode: str = "center_crop"
) -> tf.Tensor:
    """Decodes JPEG, PNG, BMP or GIF (first frame) bytes to uint8 RGB.

    Grayscale becomes RGB and alpha is dropped. With `mode="center_crop"`,
    returns only the largest central window of `size`'s aspect ratio (for
    JPEGs, only that window is decoded); with `"stretch"`, the whole image.

    JPEGs at least twice `size` are downscaled by 2, 4 or 8 while decoding:
    libjpeg scales in the DCT domain, much faster than decoding at full size
    and resizing after. The largest factor is chosen that still leaves the
    area kept at least `size`, so the final resize only ever shrinks by less
    than 2x or enlarges.

    Control flow costs about 0.05-0.1 ms per image in `tf.data`, more when
    nested, so the common case, a JPEG decoded at full scale, takes two flat
    `tf.cond`s and everything else a `tf.switch_case` as well.
    """
    crop = mode == "center_crop"
    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, 3), _JPEG_MAGIC)
    # A tf.cond, not tf.where(is_jpeg, encoded, <a stand-in JPEG>): selecting
    # a string copies it, ~2 ms for a 12-megapixel photo's bytes.
    hw = tf.cond(
        is_jpeg,
        lambda: tf.image.extract_jpeg_shape(encoded)[:2],
        lambda: tf.constant([1, 1]),
    )
    fits = tf.reduce_all(hw >= [[r * size[0], r * size[1]] for r in _JPEG_RATIOS], 1)
    # Index into _JPEG_RATIOS of the largest factor that fits; 3 for none.
    index = tf.argmax(tf.concat([fits, [True]], 0), output_type=tf.int32)

    def decode_jpeg(ratio: int) -> tf.Tensor:
        if not crop:
            return tf.io.decode_jpeg(encoded, channels=3, ratio=ratio)
        # The window is in the coordinates of the downscaled image.
        window = _center_window((hw + ratio - 1) // ratio, size)
        if size[0] != size[1]:
            # Rounding can leave the window off the aspect ratio by a pixel:
            # keep the central window of the window too, the one `resize`
            # would take of it (a square window is always exact).
            inner = _center_window(window[2:], size)
            window = tf.concat([window[:2] + inner[:2], inner[2:]], 0)
        return tf.io.decode_and_crop_jpeg(encoded, window, channels=3, ratio=ratio)

    branches = [lambda r=r: decode_jpeg(r) for r in _JPEG_RATIOS]
    branches.append(lambda: _decode_other(encoded, size, crop))
    image = tf.cond(
        is_jpeg & tf.equal(index, len(_JPEG_RATIOS)),
        lambda: decode_jpeg(1),
        lambda: tf.switch_case(tf.where(is_jpeg, index, len(_JPEG_RATIOS)), branches),
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
        top, left, crop_h, crop_w = tf.unstack(
            _center_window(tf.shape(image)[-3:-1], size)
        )
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
    scale = (high - low) / 255.0

    def prepare_one(image: tf.Tensor) -> tf.Tensor:
        if image.dtype == tf.string:  # Decoding already cropped it.
            image = decode_image(image, size, resize_mode)
            image = tf.image.resize(image, size, method="bilinear")
        else:
            image = resize(_to_rgb(image), size, resize_mode)
        # Each operation is a pass over the image: skip those that do nothing.
        if scale != 1.0:
            image = image * scale
        return image + low if low else image

    # Plain TensorFlow ops throughout: AutoGraph would only slow down the
    # tracing (by about as long as Keras takes to list a folder).
    @tf.autograph.experimental.do_not_convert
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
