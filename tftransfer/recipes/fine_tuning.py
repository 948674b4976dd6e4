"""`FineTuning`: train the head on a frozen backbone, then unfreeze and tune."""

from __future__ import annotations

import math
import re

import keras

from tftransfer.errors import ConfigError
from tftransfer.recipes import training_loop
from tftransfer.recipes.feature_extraction import FeatureExtraction
from tftransfer.recipes.optimizers import DiscriminativeAdamW


class FineTuning(FeatureExtraction):
    """Fine-tunes a pretrained backbone in two phases.

    Phase 1 trains the head with the backbone frozen, on cached features
    (see `FeatureExtraction`). Phase 2 unfreezes all of the backbone or a
    chosen part and trains backbone and head together with AdamW: a lower
    learning rate for the backbone than for the head, linear warm-up then
    cosine decay, no weight decay on biases and normalization parameters,
    gradient clipping. BatchNorm layers stay in inference mode (their
    statistics untouched) unless `train_batchnorm=True`. Each phase stops
    early and restores its best weights, and resumes after a restart.
    `predict()` and `evaluate()` run the fine-tuned model on the prepared
    inputs.

    Args:
        backbone: a `tftransfer.Backbone` or a `keras.Layer` (see
            `FeatureExtraction`).
        head_epochs: epochs of phase 1.
        epochs: epochs of phase 2.
        unfreeze: `"all"`; a fraction in `(0, 1]` (the top fraction of the
            backbone's layers that have weights, nested models flattened
            into their layers; for a single SavedModel layer, the last
            fraction of its variables); or a list of regular expressions
            matched against variable paths.
        learning_rate: head learning rate in phase 1.
        fine_tune_learning_rate: peak head learning rate in phase 2.
        backbone_lr_scale: backbone learning rate / head learning rate in
            phase 2.
        warmup_fraction: fraction of phase-2 steps of linear warm-up.
        weight_decay: AdamW decoupled weight decay.
        clipnorm: global gradient norm clipping (`None`: off).
        train_batchnorm: let BatchNorm statistics update in phase 2 (the
            backbone then follows the model's `training` flag, so its
            dropout is active too).
        **kwargs: `FeatureExtraction` arguments (`hidden_units`, `dropout`,
            `label_smoothing`, `patience`, `batch_size`, `run_dir`,
            `strategy`, `cache_dir`, `mixed_precision`, ...).

    Example:

    >>> recipe = FineTuning(backbone, unfreeze=0.3, epochs=5)
    >>> recipe.fit(train, validation)
    >>> recipe.evaluate(test)["accuracy"]
    """

    kind = "fine_tuning"

    def __init__(
        self,
        backbone,
        *,
        head_epochs: int = 5,
        epochs: int = 10,
        unfreeze: str | float | list[str] = "all",
        learning_rate: float = 1e-3,
        fine_tune_learning_rate: float = 1e-4,
        backbone_lr_scale: float = 0.1,
        warmup_fraction: float = 0.1,
        weight_decay: float = 1e-2,
        clipnorm: float | None = 1.0,
        train_batchnorm: bool = False,
        **kwargs,
    ):
        _check_unfreeze(unfreeze)
        if not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(
                f"Expected 0 <= warmup_fraction < 1. Received: warmup_fraction={warmup_fraction}"
            )
        self._phase2 = {
            "head_epochs": head_epochs,
            "unfreeze": unfreeze,
            "fine_tune_learning_rate": fine_tune_learning_rate,
            "backbone_lr_scale": backbone_lr_scale,
            "warmup_fraction": warmup_fraction,
            "weight_decay": weight_decay,
            "clipnorm": clipnorm,
            "train_batchnorm": train_batchnorm,
        }
        super().__init__(backbone, epochs=epochs, learning_rate=learning_rate, **kwargs)
        self.head_history: keras.callbacks.History | None = None

    def fit(self, train, validation=None, *, class_names: list[str] | None = None):
        """Runs phase 1 (head on cached features) then phase 2 (fine-tuning).

        Args:
            train: a `LabeledData` or a dataset of batched `(prepared, label)`.
            validation: the same kind of data, or `None`.
            class_names: class names, where `train` does not carry them.

        Returns:
            The `History` of phase 2; phase 1's is in `head_history`.
        """
        self.head_history = super().fit(train, validation, class_names=class_names)
        train_batches = self._batches(train, training=True)
        validation_batches = (
            self._batches(validation) if validation is not None else None
        )
        with self._building():
            backbone_variables = self.unfreeze()
            self._compile(
                self.model, self._optimizer(backbone_variables, train_batches)
            )
        self.history = self._train_phase(
            "fine_tune",
            self.model,
            train_batches,
            validation_batches,
            self.settings["epochs"],
            data_key=self._train_key,
        )
        return self.history

    def unfreeze(self) -> list:
        """Makes the chosen backbone variables trainable; returns them."""
        # Phase 1 may not have built it: its features can come from the cache.
        layer = self._built_backbone()
        layer.trainable = True
        candidates = list(layer.trainable_weights)
        chosen = _select(layer, candidates, self.settings["unfreeze"])
        chosen_ids = {id(v) for v in chosen}
        for variable in candidates:
            variable.trainable = id(variable) in chosen_ids
        return chosen

    def _optimizer(
        self, backbone_variables: list, train_batches
    ) -> DiscriminativeAdamW:
        steps_per_epoch = training_loop.steps_per_epoch(train_batches)
        if not steps_per_epoch:
            raise ConfigError(
                "The training data gives no batch to fine-tune on: it holds "
                "fewer examples than one global batch of "
                f"{self.global_batch_size} (batch_size x replicas), and its size "
                "is not known in advance, so the partial batch was dropped. "
                "Lower batch_size."
            )
        steps = steps_per_epoch * self.settings["epochs"]
        warmup = int(steps * self.settings["warmup_fraction"])
        peak = self.settings["fine_tune_learning_rate"]
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else peak,
            decay_steps=max(1, steps - warmup),
            warmup_target=peak if warmup else None,
            warmup_steps=warmup,
        )
        return DiscriminativeAdamW(
            schedule,
            backbone_variables=backbone_variables,
            backbone_lr_scale=self.settings["backbone_lr_scale"],
            weight_decay=self.settings["weight_decay"],
            global_clipnorm=self.settings["clipnorm"],
        )

    def _labels_and_probabilities(self, data, split: str):
        """`predict()` and `evaluate()` run the fine-tuned model on the
        prepared inputs (the cached features are those of the frozen
        backbone); `split` is unused."""
        del split
        self._require_fitted()
        return self._predict("model", self.model, self._batches(data))

    def _recipe_settings(self) -> dict:
        return dict(self._phase2)

    def _phase_settings(self, phase: str) -> dict:
        """Phase 1 (`"head"`) does not depend on the settings of phase 2,
        its own number of epochs (`head_epochs`) included; phase 2 depends
        on all settings but `epochs`."""
        settings = super()._phase_settings(phase)
        if phase == "head":
            settings = {k: v for k, v in settings.items() if k not in self._phase2}
        return settings

    def _head_epochs(self) -> int:
        return self.settings["head_epochs"]

    def _inference_mode(self) -> bool:
        return not self._phase2["train_batchnorm"]


def fine_tune(
    backbone, train, validation=None, *, epochs: int = 10, **kwargs
) -> FineTuning:
    """Fine-tunes `backbone` on `train` with sensible defaults, in one call.

    Trains a head on cached frozen features, then unfreezes the whole
    backbone and tunes it with a 10x lower learning rate than the head,
    warm-up and cosine decay, AdamW, gradient clipping, BatchNorm in
    inference mode, early stopping on the validation loss and the best
    weights restored.

    Args:
        backbone: a `tftransfer.Backbone` (or a `keras.Layer`).
        train: a `LabeledData` or a dataset of batched `(prepared, label)`.
        validation: the same kind of data, or `None`.
        epochs: fine-tuning epochs (phase 2).
        **kwargs: any `FineTuning` argument.

    Returns:
        The fitted `FineTuning` recipe (`model`, `history`, `evaluate()`).

    Example:

    >>> recipe = tftransfer.fine_tune(backbone, train, validation, epochs=5)
    >>> recipe.evaluate(test)["accuracy"]
    """
    recipe = FineTuning(backbone, epochs=epochs, **kwargs)
    recipe.fit(train, validation)
    return recipe


def _check_unfreeze(unfreeze) -> None:
    if unfreeze == "all" or isinstance(unfreeze, list | tuple):
        return
    if isinstance(unfreeze, float | int) and 0.0 < unfreeze <= 1.0:
        return
    raise ConfigError(
        "Expected unfreeze='all', a fraction in (0, 1] or a list of variable "
        f"name patterns. Received: unfreeze={unfreeze!r}"
    )


def _select(layer: keras.Layer, candidates: list, unfreeze) -> list:
    if unfreeze == "all":
        return candidates
    if isinstance(unfreeze, list | tuple):
        patterns = [re.compile(p) for p in unfreeze]
        chosen = [v for v in candidates if any(p.search(_path(v)) for p in patterns)]
        if not chosen:
            names = ", ".join(_path(v) for v in candidates[:8])
            raise ConfigError(
                f"No backbone variable matches unfreeze={list(unfreeze)}. "
                f"Variable paths look like: {names}, ..."
            )
        return chosen
    groups = [sub.trainable_weights for sub in _weighted_layers(layer)] or [
        [v] for v in candidates
    ]
    count = math.ceil(len(groups) * unfreeze)
    return [v for group in groups[-count:] for v in group]


def _weighted_layers(layer: keras.Layer) -> list[keras.Layer]:
    """The layers that own `layer`'s trainable weights, in model order.

    Nested models are flattened into their own layers: `Backbone.build()`
    wraps a pretrained network (a KerasHub or `keras.applications` model)
    in a model whose only weighted layer is that whole network.
    """
    leaves = []
    for sub in getattr(layer, "layers", []):
        if isinstance(sub, keras.Model):
            leaves.extend(_weighted_layers(sub))
        elif sub.trainable_weights:
            leaves.append(sub)
    return leaves


def _path(variable) -> str:
    return getattr(variable, "path", None) or variable.name
