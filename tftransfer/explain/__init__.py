"""Explain predictions: attributions for images and text.

`tftransfer.explain` is a callable module: `tftransfer.explain(recipe,
inputs)` calls `explain()`, which says which parts of each input made the
model give its output: pixels of an image, words of a text.

| method | images | text |
| --- | --- | --- |
| `"integrated_gradients"` (default) | per pixel, from a black image | per word, on the token embeddings, from `[PAD]` embeddings |
| `"grad_cam"` | on the last spatial feature map | (none) |
| `"occlusion"` | patches set to black | leave one word out |

Integrated gradients (Sundararajan et al., 2017) integrate the gradient
from a baseline to the input; the attributions add up to the change of
the output between the two (completeness), which `Explanation` reports as
`completeness_gap`. Occlusion needs only the forward pass: it explains a
text model whose token embedding lookup is hidden inside a TF Hub
SavedModel (integrated gradients then fall back to it, with a warning and
a `note`), and exported models (`tftransfer explain`). `render` draws
heat maps over images and shades the words of texts. See `docs/explain.md`.
"""

from __future__ import annotations

import os
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tftransfer.errors import ArgumentError
from tftransfer.explain import (
    grad_cam,
    graph,
    integrated_gradients,
    layers,
    occlusion,
    render,
    text,
)
from tftransfer.explain.explanation import Explanation
from tftransfer.explain.integrated_gradients import DEFAULT_STEPS

METHODS = ("integrated_gradients", "grad_cam", "occlusion")
HIDDEN_LOOKUP = (
    "integrated gradients on token embeddings need the model's embedding "
    "lookup, which {model} hides (a TF Hub SavedModel does); explained by "
    "leave-one-word-out occlusion instead"
)
UNMAPPED_TOKENS = (
    "the text preprocessor's tokens cannot be mapped back to words (it has no "
    "BERT-style `tokenize()`); explained by leave-one-word-out occlusion instead"
)

__all__ = ["DEFAULT_STEPS", "METHODS", "Explanation", "explain", "graph", "render"]


def explain(
    model_or_recipe: Any,
    inputs: Sequence[Any],
    method: str = "integrated_gradients",
    *,
    backbone: Any = None,
    class_names: Sequence[str] | None = None,
    target: int | None = None,
    steps: int = DEFAULT_STEPS,
) -> list[Explanation]:
    """Attributions of a model's predictions with respect to its inputs.

    Inputs are raw, as a user has them, and prepared as in training
    (`tftransfer.data.prepare_fn`). Each explanation is of one output of
    the model (`target`; the predicted class, the most probable label or
    the first target by default), for models of any backbone source (TF
    Hub, KerasHub, `keras.applications`), frozen or fine-tuned.

    Images: integrated gradients per pixel from a black baseline (the low
    end of the backbone's `value_range`), `steps` intervals of the
    midpoint rule, placed where the output changes; Grad-CAM on the last spatial feature map Keras sees
    in the model (a TF Hub SavedModel hides its layers: `ArgumentError`);
    occlusion of an 8 x 8 grid of black patches.

    Text: integrated gradients on the token embeddings, from the same
    tokens with their word pieces' embeddings replaced by the padding
    token's (special tokens, padding, position and segment embeddings
    unchanged), summed per token and per word; occlusion leaves out one word at a time. Where the embedding
    lookup is hidden (a TF Hub encoder) or tokens cannot be mapped to
    words, integrated gradients fall back to occlusion, with a warning
    and the reason in `Explanation.note`.

    Cost per example: integrated gradients, a forward pass over a batch of
    `steps / 2 + 1` points and a forward and backward pass over `steps`; Grad-CAM, one pass; occlusion, one
    forward pass per word or patch (65 for images).

    Args:
        model_or_recipe: A fitted recipe (its `model`, `backbone` and
            `class_names` are used) or a `keras.Model` from prepared
            inputs to outputs `[batch, outputs]` (with `backbone=`).
        inputs: Raw inputs. Text: strings (or UTF-8 bytes). Images:
            encoded image bytes, image file paths (`str` or
            `os.PathLike`) or pixel arrays `[height, width, channels]` in
            `[0, 255]`. A single string, bytes or path is one input.
        method: One of `METHODS`.
        backbone: The `tftransfer.Backbone` the model was built on (a
            recipe's by default): its `modality` and preparation.
        class_names: The output names (a recipe's by default), for
            `Explanation.target_name`.
        target: The output to explain for every input; by default each
            input's largest output.
        steps: Integrated gradients: intervals of the path (the default
            keeps completeness within 1% on the tests' models).

    Returns:
        One `Explanation` per input, in order.

    Raises:
        ArgumentError: if the recipe is not fitted, the backbone's
            modality is unknown, `method`, `target` or `steps` is invalid,
            or `method="grad_cam"` meets text or a model without a spatial
            feature map.

    Example:

    >>> explanation, = tftransfer.explain(recipe, [piero_article])
    >>> explanation.target_name, explanation.top(2)
    ('sports', [('try', 0.142), ('England', 0.132)])
    >>> tftransfer.explain(recipe, ["cat.jpg"], method="grad_cam")[0].attributions.shape
    (224, 224)
    """
    model, backbone, class_names = _unpack(model_or_recipe, backbone, class_names)
    if method not in METHODS:
        raise ArgumentError(
            f"Expected method to be one of {METHODS}. Received: method={method!r}."
        )
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ArgumentError(
            f"Expected steps to be a positive integer. Received: steps={steps!r}."
        )
    if isinstance(inputs, (str, bytes, os.PathLike)):
        inputs = [inputs]
    explainer = _Text if backbone.modality == "text" else _Image
    if explainer is _Text and method == "grad_cam":
        raise ArgumentError(
            "method='grad_cam' needs a spatial feature map, which text models "
            "have not. Use method='integrated_gradients' or 'occlusion'."
        )
    return explainer(model, backbone, class_names, method, steps).explain_all(
        inputs, target
    )


class _Explainer:
    """What the image and text explainers share: the model and its outputs."""

    def __init__(self, model, backbone, class_names, method, steps):
        from tftransfer.data import prepare_fn

        self.model = model
        self.backbone = backbone
        self.class_names = list(class_names or [])
        self.method = method
        self.steps = steps
        self.prepare = prepare_fn(backbone)

    def predict(self, prepared) -> np.ndarray:
        return np.asarray(self.model(prepared, training=False), np.float64)

    def target_of(self, outputs: np.ndarray, target: int | None) -> int:
        if target is None:
            return int(np.argmax(outputs))
        if isinstance(target, bool) or not 0 <= int(target) < len(outputs):
            raise ArgumentError(
                f"Expected target to be an output index in [0, {len(outputs)}) "
                f"of model {self.model.name!r}. Received: target={target!r}."
            )
        return int(target)

    def named(self, target: int) -> str | None:
        return self.class_names[target] if target < len(self.class_names) else None

    def explain_all(self, inputs, target) -> list[Explanation]:
        return [self.explain_one(raw, target) for raw in inputs]


class _Image(_Explainer):
    def __init__(self, *args):
        super().__init__(*args)
        self.low = self.backbone.value_range[0]
        self.layer = None  # Grad-CAM's, found on the first image.

    def explain_one(self, raw, target) -> Explanation:
        if isinstance(raw, (str, os.PathLike)):
            raw = tf.io.read_file(os.fspath(raw))
        image = self.prepare(raw)
        target = self.target_of(self.predict(image[None])[0], target)
        fill = tf.fill(image.shape, tf.constant(self.low, image.dtype))
        baseline_score = None
        if self.method == "integrated_gradients":
            values, scores = integrated_gradients.pixels(
                self.model, image, fill, target, self.steps
            )
            score, baseline_score = float(scores[-1]), float(scores[0])
        elif self.method == "grad_cam":
            if self.layer is None:
                self.layer = layers.last_spatial_layer(self.model, image[None])
            values = grad_cam.grad_cam(self.model, self.layer, image, target)
            score = float(self.predict(image[None])[0, target])
        else:
            values, score, baseline_score = occlusion.patches(
                self.predict, image.numpy(), self.low, target
            )
        return Explanation(
            method=self.method,
            target=target,
            target_name=self.named(target),
            score=score,
            baseline_score=baseline_score,
            attributions=np.asarray(values, np.float64),
            image=render.display_pixels(image.numpy(), self.backbone.value_range),
        )


class _Text(_Explainer):
    def __init__(self, *args):
        super().__init__(*args)
        self.embedding = layers.token_embedding(self.model)

    def explain_all(self, inputs, target) -> list[Explanation]:
        explanations = super().explain_all(inputs, target)
        notes = sorted({e.note for e in explanations if e.note})
        for note in notes:
            warnings.warn(f"{note}.", stacklevel=3)
        return explanations

    def padding_id(self) -> int:
        """The id that pads token sequences: the last of the empty text's."""
        return int(self.prepare(tf.constant([""]))["input_word_ids"][0, -1])

    def explain_one(self, raw, target) -> Explanation:
        if isinstance(raw, bytes):
            raw = raw.decode("utf-8", "replace")
        words = text.split_words(raw)
        prepared = self.prepare(tf.constant([str(raw)]))
        target = self.target_of(self.predict(prepared)[0], target)
        method, note, positions = self.method, "", None
        if method == "integrated_gradients":
            if self.embedding is None:
                note = HIDDEN_LOOKUP.format(model=f"model {self.model.name!r}")
            else:
                ids = np.asarray(prepared["input_word_ids"])[0]
                preprocessor = self.backbone.text_preprocessor()
                positions = text.word_positions(preprocessor, words, ids)
                note = "" if positions is not None else UNMAPPED_TOKENS
            method = "occlusion" if note else method
        if method == "integrated_gradients":
            token_values, scores = integrated_gradients.token_embeddings(
                self.model,
                self.embedding,
                prepared,
                (positions >= 0).astype(np.float32),
                self.padding_id(),
                target,
                self.steps,
            )
            values = text.word_sums(token_values, positions, len(words))
            score, baseline_score = float(scores[-1]), float(scores[0])
        else:
            values, score, baseline_score = occlusion.words(
                lambda texts: self.predict(self.prepare(tf.constant(texts))),
                words,
                target,
            )
        return Explanation(
            method=method,
            target=target,
            target_name=self.named(target),
            score=score,
            baseline_score=baseline_score,
            attributions=np.asarray(values, np.float64),
            words=words,
            note=note,
        )


def _unpack(model_or_recipe, backbone, class_names):
    """The model, backbone and output names of a recipe or a Keras model."""
    if isinstance(model_or_recipe, keras.Model):
        model = model_or_recipe
    elif hasattr(model_or_recipe, "model"):
        recipe = model_or_recipe
        model = recipe.model
        if not isinstance(model, keras.Model):
            raise ArgumentError(
                f"The {type(recipe).__name__} recipe is not fitted: its `model` "
                f"is {model!r}. Call `recipe.fit(train, validation)` first."
            )
        backbone = backbone or getattr(recipe, "backbone", None)
        class_names = class_names or getattr(recipe, "class_names", None)
    else:
        raise ArgumentError(
            "Expected a fitted recipe (with a `model`) or a `keras.Model`. "
            f"Received: {type(model_or_recipe).__name__}."
        )
    if getattr(backbone, "modality", None) not in ("image", "text"):
        raise ArgumentError(
            "explain() prepares raw inputs as the backbone does: pass "
            "`backbone=` (a `tftransfer.Backbone`) with the Keras model. "
            f"Received: backbone={backbone!r}."
        )
    return model, backbone, class_names


class _CallableModule(types.ModuleType):
    """Lets `tftransfer.explain(...)` call `tftransfer.explain.explain(...)`."""

    def __call__(self, *args, **kwargs):
        return explain(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
