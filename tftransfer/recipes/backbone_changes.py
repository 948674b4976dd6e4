"""What a fitted recipe changed of its backbone: Δθ, weight by weight.

`backbone_changes(recipe)` compares the backbone a recipe serves with the
source backbone rebuilt from its config. `tftransfer.deltas` stores the
changes; `tftransfer.export.export_tasks` serves several recipes' changes
on one copy of the source weights.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from tftransfer.backbones import Backbone
from tftransfer.errors import ArgumentError
from tftransfer.recipes import hub_lora, peft


@dataclasses.dataclass(frozen=True)
class WeightChange:
    """One changed weight of a backbone.

    Attributes:
        position: the weight's index in the source layer's `weights`.
        path: the weight's variable path (for people reading a delta).
        kind: `"lora"` (the weight is `source + scale * a @ b`, reshaped as
            the weight) or `"difference"` (it is `source + difference`).
        arrays: `(a, b)` for `"lora"`, `(difference,)` otherwise.
        scale: LoRA's `lora_alpha / lora_rank` (1 for a difference).
    """

    position: int
    path: str
    kind: str
    arrays: tuple[np.ndarray, ...]
    scale: float = 1.0

    def applied_to(self, source):
        """The changed weight, from its `source` value (a NumPy array, a
        tensor or a variable; the result is of the same framework).

        Example:

        >>> change.applied_to(layer.weights[change.position].numpy())
        """
        if self.kind == "difference":
            return source + self.arrays[0]
        a, b = self.arrays
        if isinstance(source, np.ndarray):
            return hub_lora.merged(source, a, b, self.scale)
        product = keras.ops.reshape(keras.ops.matmul(a, b), source.shape)
        return source + self.scale * product


@dataclasses.dataclass(frozen=True)
class BackboneChanges:
    """The source backbone of a recipe and what fine-tuning changed of it.

    Attributes:
        config: the source `Backbone`'s config, with the output the recipe
            reads (`Backbone.from_config(config)` rebuilds it).
        source: the source backbone layer, built (frozen) from `config`.
        changes: the changed weights, in weight order; empty where the
            backbone is the source's (feature extraction, `method="head"`,
            or fine-tuning that kept the frozen model).
    """

    config: dict
    source: keras.Layer
    changes: tuple[WeightChange, ...]


def source_backbone(recipe) -> Backbone:
    """The `Backbone` a fitted recipe started from, with the output it reads.

    Raises:
        ArgumentError: if `recipe` is not fitted, or its backbone is a
            plain Keras layer (which cannot be rebuilt from a config).

    Example:

    >>> source_backbone(recipe).get_config()["arguments"]["handle"]
    'all-minilm-l6-v2'
    """
    model = getattr(recipe, "model", None)
    if model is None or not isinstance(getattr(recipe, "backbone", None), Backbone):
        raise ArgumentError(
            "Expected a fitted recipe whose backbone is a tftransfer.Backbone "
            "(rebuilt from its config to compare with). Received: "
            f"{type(recipe).__name__} "
            f"{'not fitted' if model is None else 'with a plain Keras layer backbone'}."
        )
    key = recipe.settings["features"]
    return recipe.backbone.with_output(key) if key else recipe.backbone


def backbone_changes(recipe, source: keras.Layer | None = None) -> BackboneChanges:
    """Compares the backbone a fitted recipe serves with its source.

    A kernel that LoRA adapted is one `"lora"` change (its factors, left
    out where the product is zero: fine-tuning kept the frozen model); any
    other weight whose value differs (BitFit's biases and norms, every
    weight after full fine-tuning, BatchNorm statistics with
    `train_batchnorm=True`) is one `"difference"`.

    Args:
        recipe: a fitted `FeatureExtraction` or `FineTuning` whose backbone
            is a `tftransfer.Backbone`.
        source: the source layer, where the caller has built it from
            `source_backbone(recipe)` already (else it is built here).

    Returns:
        A `BackboneChanges`.

    Raises:
        ArgumentError: as `source_backbone()`.

    Example:

    >>> changes = backbone_changes(lora_recipe)
    >>> {change.kind for change in changes.changes}
    {'lora'}
    """
    backbone = source_backbone(recipe)
    config = backbone.get_config()
    if source is None:
        source = Backbone.from_config(config).build(trainable=False)
    # A fitted FineTuning serves its LoRA products merged; it keeps the factors.
    factors = getattr(recipe, "lora_factors", None) or None
    changes = weight_changes(source, recipe.backbone_layer, factors)
    return BackboneChanges(config, source, changes)


def weight_changes(
    source: keras.Layer, tuned: keras.Layer, factors: dict | None = None
) -> tuple[WeightChange, ...]:
    """The weights of `tuned` that differ from those of `source` (the same
    backbone before fine-tuning), as `backbone_changes()` describes them.

    Args:
        source: the source backbone layer.
        tuned: the fine-tuned copy, LoRA enabled or merged.
        factors: LoRA factors by position (`peft.lora_factors()`), where
            `tuned` has them merged already (a recipe's `lora_factors`);
            `None`: those of `tuned`'s LoRA layers.

    Example:

    >>> [change.path for change in weight_changes(source, tuned)]
    ['dense/bias']
    """
    if factors is None:
        factors = peft.lora_factors(tuned)
    changes = []
    for position, (weight, (variable, value)) in enumerate(
        zip(source.weights, peft.served_weights(tuned), strict=True)
    ):
        path = peft.variable_path(variable)
        if position in factors:
            a, b, scale = factors[position]
            if np.any(b) and np.any(a):
                changes.append(WeightChange(position, path, "lora", (a, b), scale))
        else:
            original = weight.numpy()
            if not np.array_equal(value, original):
                changes.append(
                    WeightChange(position, path, "difference", (value - original,))
                )
    return tuple(changes)
