"""Training-time image augmentation with Keras 3 preprocessing layers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import keras

from tftransfer.errors import DataError

# name: (default setting, factory(setting, value_range, seed) -> layer)
AUGMENTATIONS = {
    "flip": ("horizontal", lambda s, vr, seed: keras.layers.RandomFlip(s, seed=seed)),
    "rotation": (0.1, lambda s, vr, seed: keras.layers.RandomRotation(s, seed=seed)),
    "zoom": (0.1, lambda s, vr, seed: keras.layers.RandomZoom(s, seed=seed)),
    "translation": (
        0.1,
        lambda s, vr, seed: keras.layers.RandomTranslation(s, s, seed=seed),
    ),
    "contrast": (
        0.2,
        lambda s, vr, seed: keras.layers.RandomContrast(s, value_range=vr, seed=seed),
    ),
    "brightness": (
        0.2,
        lambda s, vr, seed: keras.layers.RandomBrightness(s, value_range=vr, seed=seed),
    ),
    "randaugment": (
        0.5,
        lambda s, vr, seed: keras.layers.RandAugment(
            value_range=vr, factor=s, seed=seed
        ),
    ),
}


def augmenter(
    augment: str | Sequence[str] | Mapping[str, object],
    value_range: tuple[float, float] = (0.0, 1.0),
    seed: int | None = None,
) -> keras.Sequential:
    """Builds a random image augmentation model from names.

    Names: `"flip"` (setting: `"horizontal"`, `"vertical"` or
    `"horizontal_and_vertical"`; default horizontal), `"rotation"` (fraction
    of a full turn, default 0.1), `"zoom"` (0.1), `"translation"` (fraction of
    the size, 0.1), `"contrast"` (0.2), `"brightness"` (0.2) and
    `"randaugment"` (Keras `RandAugment` factor, 0.5). The layers run in the
    order given, on batches of prepared images, in the `tf.data` pipeline of
    the training split only.

    Args:
        augment: One name, a list of names (default settings) or a dict of
            `{name: setting}`.
        value_range: `(low, high)` of the images' values; the backbone's.
        seed: Seed of the random transformations.

    Returns:
        A `keras.Sequential` of Keras preprocessing layers.

    Example:

    >>> augment = augmenter({"flip": "horizontal", "rotation": 0.05})
    >>> augmented = augment(images, training=True)
    """
    if isinstance(augment, str):
        augment = [augment]
    settings = (
        dict(augment)
        if isinstance(augment, Mapping)
        else {name: AUGMENTATIONS.get(name, (None,))[0] for name in augment}
    )
    unknown = sorted(set(settings) - set(AUGMENTATIONS))
    if unknown or not settings:
        raise DataError(
            f"Expected augmentation names among {sorted(AUGMENTATIONS)}. "
            f"Received: augment={augment!r}."
        )
    layers = [
        AUGMENTATIONS[name][1](setting, tuple(value_range), seed)
        for name, setting in settings.items()
    ]
    return keras.Sequential(layers, name="augment")
