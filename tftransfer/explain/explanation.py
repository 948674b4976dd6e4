"""`Explanation`: the attributions of one prediction, and their top parts."""

from __future__ import annotations

import dataclasses

import numpy as np

# Images: `Explanation.top()` ranks the cells of a GRID x GRID grid.
GRID = 4


@dataclasses.dataclass
class Explanation:
    """The attributions of one prediction with respect to its input.

    Positive values speak for the target output, negative ones against it.
    Integrated gradients and occlusion share the output's units (the
    target's probability, or its value for regression), Grad-CAM does not.

    Attributes:
        method: `"integrated_gradients"`, `"grad_cam"` or `"occlusion"`:
            the method that computed them (occlusion where a text model's
            embedding lookup is hidden; `note` says so).
        target: Index of the explained output (the predicted class unless
            one was asked for).
        target_name: Its name, where the model's output names are known.
        score: The model's output for `target` on the input.
        baseline_score: Its output on the baseline (integrated gradients:
            black image, or the text with its word pieces' embeddings
            replaced by the padding token's) or on
            the fully occluded input; `None` for Grad-CAM and where it is
            unknown (a served `explain` signature does not return it).
        attributions: Images: float `[height, width]` on the prepared
            image (summed over the colour channels). Text: one per word of
            `words`, `nan` for words past the model's sequence length.
        words: Text: the input's words, as split on whitespace.
        image: Images: the prepared image as uint8 `[height, width, 3]`.
        note: Why a fallback method was used; empty otherwise.

    Example:

    >>> explanation = tftransfer.explain(recipe, [piero_article])[0]
    >>> explanation.top(2)
    [('try', 0.142), ('England', 0.132)]
    """

    method: str
    target: int
    target_name: str | None
    score: float
    baseline_score: float | None
    attributions: np.ndarray
    words: list[str] | None = None
    image: np.ndarray | None = None
    note: str = ""

    @property
    def completeness_gap(self) -> float | None:
        """Integrated gradients: `|sum(attributions) - (score -
        baseline_score)| / |score - baseline_score|`, how far the attributions
        are from adding up to the change of the output (0 is exact; `None`
        for other methods)."""
        if self.method != "integrated_gradients" or self.baseline_score is None:
            return None
        change = self.score - self.baseline_score
        total = float(np.nansum(self.attributions))
        return abs(total - change) / max(abs(change), 1e-12)

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The `k` parts with the largest attributions, largest first.

        Args:
            k: How many parts.

        Returns:
            `(part, attribution)` pairs. Text: each word (a word that
            occurs several times adds up its occurrences). Images: the cells
            of a 4 x 4 grid over the prepared image, named by their pixel
            rows and columns, with the sum of their attributions.
        """
        if self.words is not None:
            totals: dict[str, float] = {}
            for word, value in zip(self.words, self.attributions, strict=True):
                if not np.isnan(value):
                    totals[word] = totals.get(word, 0.0) + float(value)
            parts = list(totals.items())
        else:
            height, width = self.attributions.shape
            rows = np.linspace(0, height, GRID + 1).astype(int)
            columns = np.linspace(0, width, GRID + 1).astype(int)
            parts = [
                (
                    f"rows {top}-{bottom - 1}, columns {left}-{right - 1}",
                    float(self.attributions[top:bottom, left:right].sum()),
                )
                for top, bottom in zip(rows[:-1], rows[1:], strict=True)
                for left, right in zip(columns[:-1], columns[1:], strict=True)
            ]
        parts.sort(key=lambda part: -part[1])
        return parts[:k]
