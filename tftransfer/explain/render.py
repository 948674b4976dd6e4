"""Pictures of attributions: heat maps over images, text with shaded words.

Both are self-contained (a PNG, an HTML fragment with inline styles), for
the run report and for `tftransfer explain`. Text: words shaded red where
they speak for the explained output, blue against it, the strongest fully
coloured. Images: a red heat map of how much each region carried it
(`overlay()`).
"""

from __future__ import annotations

import base64
import html
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tftransfer.explain.explanation import Explanation

# How opaque the heat map is where an attribution is strongest.
MAX_ALPHA = 0.6
_RED = np.array([220.0, 30.0, 30.0])
_BLUE = np.array([30.0, 80.0, 220.0])


def _scaled(values: np.ndarray) -> np.ndarray:
    """`values` divided by their largest magnitude (`nan` kept; 0 if all 0)."""
    peak = np.nanmax(np.abs(values), initial=0.0)
    return values / peak if peak > 0 else np.zeros_like(values)


def display_pixels(prepared: np.ndarray, value_range: Sequence[float]) -> np.ndarray:
    """A prepared image (values in `value_range`) as uint8 pixels to show."""
    low, high = value_range
    pixels = (np.asarray(prepared, np.float64) - low) * (255.0 / (high - low))
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


# The share of the image's side that a map's magnitudes are averaged over
# before it is shown, and the percentile shown at full strength: pixel
# attributions are speckled (their signs alternate from pixel to pixel), and
# a few extreme pixels would otherwise leave the rest of the map invisible.
SMOOTHING = 1 / 32
SATURATION_PERCENTILE = 99.0


def _shown_map(attributions: np.ndarray) -> np.ndarray:
    """A `[height, width]` attribution map as it is drawn: the magnitudes,
    averaged over windows of `SMOOTHING` of the side, divided by their
    `SATURATION_PERCENTILE` and clipped to [0, 1]. Regions show how much
    they carried the prediction; a pixel's sign says little at that scale."""
    import tensorflow as tf

    values = np.abs(np.nan_to_num(np.asarray(attributions, np.float64)))
    window = max(1, round(SMOOTHING * max(values.shape)))
    if window > 1:
        values = tf.nn.avg_pool2d(
            values[None, :, :, None], window, strides=1, padding="SAME"
        ).numpy()[0, :, :, 0]
    # A map on less than 1% of the image: its largest value is shown in full.
    scale = np.percentile(values, SATURATION_PERCENTILE) or values.max()
    if scale <= 0:
        return np.zeros_like(values)
    return np.clip(values / scale, 0.0, 1.0)


def overlay(explanation: Explanation) -> np.ndarray:
    """The image with the magnitude of its attributions as a red heat map
    over it (smoothed and saturated as `_shown_map()` says).

    Returns:
        uint8 `[height, width, 3]`.
    """
    alpha = MAX_ALPHA * _shown_map(explanation.attributions)[..., None]
    image = explanation.image.astype(np.float64)
    return np.round(image * (1 - alpha) + _RED * alpha).astype(np.uint8)


def write_png(pixels: np.ndarray, path: str | os.PathLike, size: int | None = None):
    """Writes uint8 `pixels` `[height, width, 3]` as a PNG, its longer side
    resized to `size` if given; returns the path."""
    import tensorflow as tf

    image = tf.constant(pixels)
    if size is not None:
        image = tf.image.resize(image, (size, size), preserve_aspect_ratio=True)
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    tf.io.write_file(str(path), tf.io.encode_png(image))
    return Path(path)


def data_uri(path: str | os.PathLike) -> str:
    """The PNG file `path` as a `data:` URI, to embed in a page."""
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode()


def shaded_text(explanation: Explanation) -> str:
    """The text's words as HTML spans shaded by attribution.

    Each word's `title` gives its attribution. The words past the model's
    sequence length (no attribution) are left out and counted.

    Returns:
        An HTML fragment (a `<span class="shaded">`).
    """
    values = explanation.attributions
    known = np.flatnonzero(~np.isnan(values))
    seen = int(known[-1]) + 1 if len(known) else 0
    spans = []
    for word, raw, value in zip(
        explanation.words[:seen], values[:seen], _scaled(values)[:seen], strict=True
    ):
        if np.isnan(value):
            spans.append(html.escape(word))
            continue
        red, green, blue = (_RED if value >= 0 else _BLUE).astype(int)
        spans.append(
            f'<span title="{raw:+.4f}" style="background:rgba({red},{green},'
            f'{blue},{MAX_ALPHA * abs(value):.2f})">{html.escape(word)}</span>'
        )
    unseen = len(values) - seen
    if unseen:
        spans.append(
            f'<span style="color:#999">(and {unseen} more words, past the '
            "model's sequence length)</span>"
        )
    return f'<span class="shaded">{" ".join(spans)}</span>'


def summary(explanation: Explanation, k: int = 5) -> str:
    """One line: the method, the explained output, its top `k` parts and,
    for integrated gradients, the completeness gap."""
    target = explanation.target_name or f"output {explanation.target}"
    parts = ", ".join(f"{part} ({value:+.3f})" for part, value in explanation.top(k))
    line = f"{explanation.method} for {target} ({explanation.score:.3f}): {parts}"
    gap = explanation.completeness_gap
    if gap is not None:
        line += f"; completeness gap {gap:.1%}"
    return f"{line} [{explanation.note}]" if explanation.note else line


def page(
    explanations: Sequence[Explanation],
    names: Sequence[str],
    title: str,
    folder: str | os.PathLike,
) -> Path:
    """Writes `explanations.html` (and a PNG per image) into `folder`.

    Args:
        explanations: One per input.
        names: The inputs' names (file names), in the same order.
        title: The page's title.
        folder: Where to write; created if missing.

    Returns:
        The path of the page, self-contained (PNGs embedded).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index, (explanation, name) in enumerate(zip(explanations, names, strict=True)):
        head = f"<h2>{html.escape(name)}</h2><p>{html.escape(summary(explanation))}</p>"
        if explanation.words is not None:
            body = f"<p>{shaded_text(explanation)}</p>"
        else:
            picture = write_png(overlay(explanation), folder / f"{index:03d}.png")
            body = f'<img src="{data_uri(picture)}" alt="{html.escape(name)}">'
        items.append(head + body)
    path = folder / "explanations.html"
    path.write_text(
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>"
        f'<body style="font-family:system-ui,sans-serif;max-width:1000px;'
        f'margin:2em auto">{"".join(items)}</body></html>\n',
        encoding="utf-8",
    )
    return path
