"""Occlusion: what the output loses when a part of the input is hidden.

It needs only the forward pass, so it explains any model: a TF Hub text
encoder whose embedding lookup is hidden inside its SavedModel, or an
exported model behind its serving signature.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

# Inputs per forward pass.
DEFAULT_BATCH_SIZE = 32
# Images: patches per side of the grid.
DEFAULT_PATCHES = 8


def _scores(predict: Callable, inputs: Sequence, target: int, batch_size: int):
    """`predict`'s output `target` on each input, `batch_size` at a time."""
    return np.concatenate(
        [
            np.asarray(predict(inputs[start : start + batch_size]))[:, target]
            for start in range(0, len(inputs), batch_size)
        ]
    ).astype(np.float64)


def words(
    predict: Callable,
    word_list: Sequence[str],
    target: int,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[np.ndarray, float, float]:
    """Leave-one-word-out attributions of a text model.

    Word i's attribution is the output on the text minus the output on the
    text without word i (the others joined by single spaces).

    Args:
        predict: From a list of strings to outputs `[n, outputs]`.
        word_list: The text's words.
        target: The output explained.
        batch_size: Texts per call of `predict`.

    Returns:
        `(attributions [words], score, empty_score)`: the output on the
        whole text, and on the empty text (everything occluded).
    """
    texts = [" ".join(word_list)]
    texts += [
        " ".join(word_list[:i] + word_list[i + 1 :]) for i in range(len(word_list))
    ]
    scores = _scores(predict, [*texts, ""], target, batch_size)
    return scores[0] - scores[1:-1], float(scores[0]), float(scores[-1])


def patches(
    predict: Callable,
    image: np.ndarray,
    fill: float,
    target: int,
    patches_per_side: int = DEFAULT_PATCHES,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> tuple[np.ndarray, float, float]:
    """Patch-occlusion attributions of an image model.

    The prepared image is cut into a `patches_per_side` square grid; each
    patch in turn is set to `fill`, and the drop of the output is spread
    evenly over the patch's pixels (so a patch's pixels add up to it).

    Args:
        predict: From prepared images `[n, height, width, 3]` to outputs.
        image: One prepared image `[height, width, 3]`.
        fill: The value hiding a patch (the low end of the value range:
            black).
        target: The output explained.
        patches_per_side: Grid size.
        batch_size: Images per call of `predict`.

    Returns:
        `(attributions [height, width], score, empty_score)`: the output on
        the image, and on the image filled with `fill` entirely.
    """
    height, width = image.shape[:2]
    rows = np.linspace(0, height, min(patches_per_side, height) + 1).astype(int)
    columns = np.linspace(0, width, min(patches_per_side, width) + 1).astype(int)
    cells = [
        (slice(top, bottom), slice(left, right))
        for top, bottom in zip(rows[:-1], rows[1:], strict=True)
        for left, right in zip(columns[:-1], columns[1:], strict=True)
    ]
    occluded = np.repeat(image[None], len(cells) + 2, axis=0)
    for index, cell in enumerate(cells, start=1):
        occluded[(index, *cell)] = fill
    occluded[-1] = fill
    scores = _scores(predict, occluded, target, batch_size)
    attributions = np.zeros((height, width))
    for index, (rows_, columns_) in enumerate(cells, start=1):
        area = (rows_.stop - rows_.start) * (columns_.stop - columns_.start)
        attributions[rows_, columns_] = (scores[0] - scores[index]) / area
    return attributions, float(scores[0]), float(scores[-1])
