"""`FineTuning`: train the head on a frozen backbone, then unfreeze and tune."""

from __future__ import annotations

import math
import re
from collections.abc import Callable

import keras
import numpy as np

from tftransfer import defaults
from tftransfer.backbones import Backbone
from tftransfer.errors import ConfigError
from tftransfer.messages import short_repr
from tftransfer.recipes import learning_rates, peft, training_loop
from tftransfer.recipes.base import (
    check_auto_or_number,
    check_epochs,
    holds_run_lock,
    setting_value,
)
from tftransfer.recipes.callbacks import LossNotFiniteError
from tftransfer.recipes.feature_extraction import FeatureExtraction
from tftransfer.recipes.optimizers import DiscriminativeAdamW
from tftransfer.recipes.tasks import get_task

# The settings of phase 2 alone: phase 1's checkpoints do not depend on them.
PHASE_2_SETTINGS = (
    "fine_tune_epochs",
    "unfreeze",
    "fine_tune_learning_rate",
    "backbone_lr_scale",
    "warmup_fraction",
    "weight_decay",
    "clipnorm",
    "train_batchnorm",
    "method",
    "lora_rank",
    "lora_alpha",
    "lora_targets",
)


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

    `method` chooses what phase 2 trains of the part of the backbone that
    `unfreeze` chose: all of it (`"full"`); its biases and normalization
    parameters only (`"bitfit"`, every backbone, TF Hub SavedModels
    included); low-rank factors `a @ b * lora_alpha / lora_rank` added to
    the kernels of its layers that match `lora_targets` (`"lora"`, through
    Keras's `enable_lora` on KerasHub and `keras.applications` backbones,
    and on the SavedModel's own kernel variables for TF Hub backbones, see
    `tftransfer.recipes.hub_lora`);
    or nothing (`"head"`: phase 1 alone). After LoRA, `model` serves a
    rebuilt backbone with the product merged into its kernels (no LoRA
    overhead when exported); `lora_factors` keeps the factors for
    `tftransfer.deltas.save_delta`.
    With `pooling="attention"` the `AttentionPooling` is part of the head:
    phase 1 trains it on the cached sequences, phase 2 with the backbone
    (at the head's learning rate).

    By default the learning rates come from the data: phase 1's from a
    search on the cached features (see `FeatureExtraction`), phase 2's peak
    rate from a learning-rate range test on the unfrozen model, which
    starts from the best phase-1 head. After phase 2 the fine-tuned model
    is compared with the frozen one on the validation data (by accuracy,
    then cross-entropy, for classification; by the task's plain validation
    loss otherwise), and the better one is kept (`chosen` is `"fine_tuned"`
    or `"frozen"`): fine-tuning never ends worse than frozen features. `predict()` and `evaluate()` run
    the kept model on the prepared inputs.

    Args:
        backbone: a `tftransfer.Backbone` or a `keras.Layer` (see
            `FeatureExtraction`).
        fine_tune_epochs: the most epochs of phase 2 (it stops early);
            `head_epochs` (see `FeatureExtraction`) bounds phase 1.
        unfreeze: what phase 2 trains of the backbone (fastai's
            `splitter`): `"all"`; a fraction in `(0, 1]` (the top fraction
            of the backbone's layers that have weights, nested models
            flattened into their layers; for a single SavedModel layer, the
            last fraction of its variables); a list of regular expressions
            matched against variable paths; or a callable
            `(backbone_layer) -> list of layers or variables` of that
            layer (the built backbone, `backbone_layer`). A callable's
            module and name (and a digest of its source) are part of the
            settings, so editing it starts a new run.
        learning_rate: head learning rate in phase 1, or `"auto"` (see
            `FeatureExtraction`).
        fine_tune_learning_rate: peak head learning rate in phase 2, or
            `"auto"`: a fifth of the rate at which the training loss starts
            to climb in a learning-rate range test (the rate grows from 1e-6
            to 0.1 over one epoch of steps, at least 50 and at most 100; see
            `learning_rates.find_learning_rate`).
        backbone_lr_scale: backbone learning rate / head learning rate in
            phase 2 (the range test keeps this ratio).
        warmup_fraction: fraction of phase-2 steps of linear warm-up.
        weight_decay: AdamW decoupled weight decay.
        clipnorm: global gradient norm clipping (`None`: off).
        train_batchnorm: let BatchNorm statistics update in phase 2 (the
            backbone then follows the model's `training` flag, so its
            dropout is active too).
        method: `"full"`, `"lora"`, `"bitfit"` or `"head"` (see above).
        lora_rank: the rank of the LoRA factors, or `"auto"`: 8, but 4
            where every adapted kernel is a convolution's (an image
            backbone's thin 1x1 convolutions would store 5% of its weights
            at rank 8).
        lora_alpha: LoRA's scale numerator (the product is scaled by
            `lora_alpha / lora_rank`); `None`: the rank (a scale of 1).
        lora_targets: `"auto"` (the attention query and value projections
            where the backbone has them, else every layer LoRA supports,
            such as the convolutions of an image backbone) or a list of
            regular expressions matched against kernel variable paths
            (for example `["query", "value", "intermediate"]`).
        **kwargs: `FeatureExtraction` arguments (`task`, `head`,
            `head_epochs`, `hidden_units`, `dropout`, `label_smoothing`,
            `patience`, `batch_size`, `run_dir`, `strategy`, `cache_dir`,
            `precision`, ...). Phase 2 trains the backbone in the precision
            that phase 1's backbone pass chose (float16 with loss scaling);
            `model` then computes in float32 again, with the trained
            weights.

    Example:

    >>> recipe = FineTuning(backbone, unfreeze=0.3, fine_tune_epochs=5)
    >>> recipe.fit(train, validation)
    >>> recipe.evaluate(test)["accuracy"]
    >>> lora = FineTuning(backbone, method="lora", lora_rank=8)
    """

    kind = "fine_tuning"

    def __init__(
        self,
        backbone,
        *,
        fine_tune_epochs: int = defaults.FINE_TUNE_EPOCHS,
        unfreeze: str | float | list[str] | Callable = "all",
        fine_tune_learning_rate: float | str = defaults.FINE_TUNE_LEARNING_RATE,
        backbone_lr_scale: float = defaults.BACKBONE_LR_SCALE,
        warmup_fraction: float = defaults.WARMUP_FRACTION,
        weight_decay: float = defaults.FINE_TUNE_WEIGHT_DECAY,
        clipnorm: float | None = defaults.CLIPNORM,
        train_batchnorm: bool = False,
        method: str = defaults.FINE_TUNE_METHOD,
        lora_rank: int | str = defaults.LORA_RANK,
        lora_alpha: float | None = defaults.LORA_ALPHA,
        lora_targets: str | list[str] = defaults.LORA_TARGETS,
        **kwargs,
    ):
        check_epochs("fine_tune_epochs", fine_tune_epochs)
        peft.check_method(method, lora_rank, lora_alpha, lora_targets)
        if method == "lora" and not isinstance(backbone, Backbone):
            raise ConfigError(
                "method='lora' needs a tftransfer.Backbone: after training, "
                "the recipe serves a copy of the backbone rebuilt with the "
                "LoRA product merged into its kernels, and a plain Keras "
                f"layer cannot be rebuilt. Received: backbone={short_repr(backbone)}. "
                "Wrap it as Backbone(builder=...), or use method='bitfit' or 'full'."
            )
        _check_unfreeze(unfreeze)
        check_auto_or_number(
            "fine_tune_learning_rate", fine_tune_learning_rate, positive=True
        )
        if not 0.0 <= warmup_fraction < 1.0:
            raise ConfigError(
                f"Expected 0 <= warmup_fraction < 1. Received: warmup_fraction={warmup_fraction}"
            )
        super().__init__(backbone, **kwargs)
        self._unfreeze = unfreeze
        self.settings.update(
            {
                "fine_tune_epochs": fine_tune_epochs,
                "unfreeze": setting_value(unfreeze),
                "fine_tune_learning_rate": fine_tune_learning_rate,
                "backbone_lr_scale": backbone_lr_scale,
                "warmup_fraction": warmup_fraction,
                "weight_decay": weight_decay,
                "clipnorm": clipnorm,
                "train_batchnorm": train_batchnorm,
                "method": method,
            }
        )
        if method == "lora":
            # Only then: other methods' runs do not depend on them.
            self.settings.update(
                {
                    "lora_rank": lora_rank,
                    "lora_alpha": lora_alpha,
                    "lora_targets": lora_targets,
                }
            )
        self.head_history: keras.callbacks.History | None = None
        # After LoRA: {position in the served backbone's weights: (a, b, scale)}.
        self.lora_factors: dict = {}
        # The float32 backbone layer while phase 2 trains a reduced one.
        self._float32_layer: keras.Layer | None = None

    @holds_run_lock
    def fit(self, train, validation=None, *, class_names: list[str] | None = None):
        """Runs phase 1 (head on cached features) then phase 2 (fine-tuning).

        Args:
            train: a `LabeledData` or a dataset of batched `(prepared, label)`.
            validation: the same kind of data, or `None` (a part of `train`
                is then held out, see `FeatureExtraction.fit`).
            class_names: class names, where `train` does not carry them.

        Returns:
            The `History` of phase 2; phase 1's is in `head_history`.

        Raises:
            ConfigError: on a second `fit` of a recipe whose backbone is a
                plain Keras layer (fine-tuned by the first: it cannot be
                reloaded; a `Backbone` is rebuilt from its weights).
        """
        self._start_from_the_pretrained_backbone()
        train, validation = self._prepare_splits(train, validation, class_names)
        self.head_history = self._fit_head(train, validation, class_names)
        if self.settings["method"] == "head":
            self.history, self.chosen = self.head_history, "frozen"
            return self.history
        self._train_in_pass_precision()
        train_batches = self._batches(train, training=True)
        validation_batches = (
            self._batches(validation) if validation is not None else None
        )
        frozen_scores = (
            self._frozen_validation_scores() if validation is not None else None
        )
        steps_per_epoch = self._steps_per_epoch(train_batches)
        with self._building():
            backbone_variables = self.unfreeze()
        frozen_weights = [np.array(v.numpy()) for v in self.model.weights]
        # The range test reads its own copy of a LabeledData's batches, so
        # that the shuffles phase 2 sees do not depend on it. It runs again
        # on a resumed run (it is short, and deterministic from the same
        # state), so that both runs read a dataset of batches as often.
        peak = self._fine_tune_learning_rate(
            backbone_variables, self._batches(train, training=True), steps_per_epoch
        )
        with self._building():
            self._compile(
                self.model,
                self._optimizer(
                    backbone_variables, self._schedule(steps_per_epoch, peak)
                ),
                steps_per_execution=self._steps_per_execution(steps_per_epoch),
            )
        try:
            self.history = self._train_phase(
                "fine_tune",
                self.model,
                train_batches,
                validation_batches,
                self.settings["fine_tune_epochs"],
                data_key=self._train_key,
                learning_rate_setting=("fine_tune_learning_rate", peak),
            )
        except LossNotFiniteError as error:
            if frozen_scores is None:
                raise
            self._keep_frozen(frozen_weights, f"fine-tuning diverged: {error}")
            self._serve_in_float32()
            return self.head_history
        self._keep_the_better(frozen_scores, frozen_weights, validation_batches)
        self._serve_in_float32()
        return self.history

    def _train_in_pass_precision(self) -> None:
        """Phase 2 trains the backbone in the precision phase 1's backbone
        pass chose (or its cached features were computed in). The float32
        layer, if built, is kept aside for `_serve_in_float32()`; the pass
        functions and their traced steps are let go."""
        policy = self._pass_policy or "float32"
        if policy == "float32":
            return
        self._float32_layer = self.backbone_layer
        self.backbone_layer = self._pass_layer(policy)
        self._pass_layers, self._pass_functions = {}, {}
        for name in [name for name in self._predictors if name.startswith("features-")]:
            del self._predictors[name]
        self._model = None

    def _serve_in_float32(self) -> None:
        """After phase 2 in a reduced precision or with LoRA, `model`
        computes in float32 with plain kernels: a float32 backbone layer
        without LoRA takes the trained weights (mixed precision keeps them
        in float32; LoRA products merged into their kernels, the factors
        kept in `lora_factors`), so predictions and exports compute as they
        are served."""
        trained = self.backbone_layer
        self.lora_factors = peft.lora_factors(trained)
        if (self._pass_policy or "float32") == "float32" and not self.lora_factors:
            return
        layer = self._float32_layer
        if layer is None:
            with self._building():
                layer = self._backbone_layer(trainable=False)
        self._float32_layer = None
        layer.trainable = trained.trainable
        served = peft.served_weights(trained)
        for variable, (source, value) in zip(layer.weights, served, strict=True):
            variable.assign(value)
            variable.trainable = source.trainable
        self.backbone_layer = layer
        self._model = None

    def _start_from_the_pretrained_backbone(self) -> None:
        """Before a second `fit`: the backbone the first one fine-tuned is
        rebuilt from its pretrained weights."""
        if self.history is None:
            return
        if not isinstance(self.backbone, Backbone):
            raise ConfigError(
                "This FineTuning recipe has fine-tuned its backbone layer "
                "already and cannot reload its pretrained weights. Create a "
                "new recipe (with a fresh backbone layer) for another fit()."
            )
        self.backbone_layer = None
        self.head = self._model = None
        self.lora_factors = {}
        self._predictors = {}
        self._pass_layers, self._pass_functions = {}, {}

    def _fine_tune_learning_rate(
        self, backbone_variables, train_batches, steps_per_epoch: int
    ) -> float:
        """Phase 2's peak head learning rate: as set, or from a range test."""
        setting = self.settings["fine_tune_learning_rate"]
        if setting != defaults.AUTO:
            return setting
        steps = min(100, max(50, steps_per_epoch))

        def compile_with(schedule) -> None:
            # One step per execution: the test reads the loss of every step.
            with self._building():
                self._compile(
                    self.model,
                    self._optimizer(backbone_variables, schedule),
                    steps_per_execution=1,
                )

        test = learning_rates.find_learning_rate(
            self.model,
            compile_with,
            train_batches,
            strategy=self.strategy,
            steps=steps,
            min_lr=1e-6,
            max_lr=0.1,
        )
        self.tuned["fine_tune_learning_rate"] = test.learning_rate
        where = (
            "where the training loss started to climb"
            if test.found
            else "the highest rate tried: the loss never climbed"
        )
        self.say(
            f"Fine-tuning: fine_tune_learning_rate={test.learning_rate:.3g} "
            f"(backbone {test.learning_rate * self.settings['backbone_lr_scale']:.3g}"
            f"), a fifth of {test.edge_rate:.3g}, {where} in a "
            f"{len(test.losses)}-step learning-rate range test."
        )
        return test.learning_rate

    def _frozen_validation_scores(self) -> tuple:
        """The task's scores (`Task.scores`: `(accuracy, -cross-entropy)`
        for classification, `(-loss,)` otherwise) of the phase-1 model
        (frozen backbone, best head) on the validation features phase 1
        cached (not looked up again: that would hash every validation
        example once more)."""
        batches = self._validation_features.dataset(
            self._prediction_batch_size(), memory_budget=self.memory_budget
        )
        return get_task(self.task).scores(*self._predict("head", self.head, batches))

    def _keep_the_better(self, frozen_scores, frozen_weights, validation_batches):
        """Keeps the fine-tuned model unless the frozen one did better on
        the validation data (by the task's scores: for classification higher
        accuracy, or equal accuracy and lower cross-entropy; otherwise the
        lower validation loss); sets `chosen`."""
        self.chosen = "fine_tuned"
        if frozen_scores is None:
            self.say("No validation data: keeping the fine-tuned model unchecked.")
            return
        task = get_task(self.task)
        tuned_scores = task.scores(
            *self._predict("model", self.model, validation_batches)
        )
        compared = (
            f"{task.describe(frozen_scores)} frozen vs "
            f"{task.describe(tuned_scores)} fine-tuned"
        )
        if tuned_scores > frozen_scores:
            self.say(f"Fine-tuning helped: {compared}.")
            return
        self._keep_frozen(frozen_weights, f"fine-tuning did not help ({compared})")

    def _keep_frozen(self, frozen_weights: list, reason: str) -> None:
        """Puts the frozen model's weights back; `chosen` becomes "frozen"."""
        self.chosen = "frozen"
        for variable, value in zip(self.model.weights, frozen_weights, strict=True):
            variable.assign(value)
        self.say(f"Keeping the frozen model: {reason}.")

    def unfreeze(self) -> list:
        """Makes the backbone variables that `unfreeze` and `method` choose
        trainable (for LoRA, new factors of the chosen layers); returns them."""
        # Phase 1 may not have built it: its features can come from the cache.
        layer = self._built_backbone()
        layer.trainable = True
        candidates = list(layer.trainable_weights)
        chosen = _select(layer, candidates, self._unfreeze)
        method = self.settings["method"]
        if method == "bitfit":
            chosen = peft.bitfit_variables(chosen)
            if not chosen:
                raise ConfigError(
                    "method='bitfit' found no bias or normalization parameter "
                    f"among the backbone variables unfreeze={short_repr(self._unfreeze)} "
                    "chose. Choose more of the backbone, or use method='full'."
                )
        elif method == "lora":
            s = self.settings
            targets = peft.lora_layers(layer, chosen, s["lora_targets"])
            rank = peft.lora_rank(targets, s["lora_rank"])
            chosen = peft.enable_lora(targets, rank, s["lora_alpha"], seed=s["seed"])
            self.say(f"LoRA: rank {rank} on {len(targets)} kernels.")
        chosen_ids = {id(v) for v in chosen}
        for variable in candidates:
            variable.trainable = id(variable) in chosen_ids
        return chosen

    def _steps_per_epoch(self, train_batches) -> int:
        steps_per_epoch = training_loop.steps_per_epoch(train_batches)
        if not steps_per_epoch:
            raise ConfigError(
                "The training data gives no batch to fine-tune on: it holds "
                "fewer examples than one global batch of "
                f"{self.global_batch_size} (batch_size x replicas), and its size "
                "is not known in advance, so the partial batch was dropped. "
                "Lower batch_size."
            )
        return steps_per_epoch

    def _schedule(self, steps_per_epoch: int, peak: float):
        """Linear warm-up to `peak`, then cosine decay over phase 2."""
        steps = steps_per_epoch * self.settings["fine_tune_epochs"]
        warmup = int(steps * self.settings["warmup_fraction"])
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup else peak,
            decay_steps=max(1, steps - warmup),
            warmup_target=peak if warmup else None,
            warmup_steps=warmup,
        )

    def _optimizer(self, backbone_variables: list, schedule) -> keras.Optimizer:
        """Phase 2's `DiscriminativeAdamW`, with loss scaling when the
        backbone computes in float16."""
        optimizer = DiscriminativeAdamW(
            schedule,
            backbone_variables=backbone_variables,
            backbone_lr_scale=self.settings["backbone_lr_scale"],
            weight_decay=self.settings["weight_decay"],
            global_clipnorm=self.settings["clipnorm"],
        )
        if self._pass_policy == "mixed_float16":
            return keras.optimizers.LossScaleOptimizer(optimizer)
        return optimizer

    def _labels_and_probabilities(self, data, split: str):
        """`predict()` and `evaluate()` run the fine-tuned model on the
        prepared inputs (the cached features are those of the frozen
        backbone); `split` names `data` in errors."""
        self._require_fitted()
        data = self._with_class_names(data, self.class_names, split)
        labels, probabilities = self._predict("model", self.model, self._batches(data))
        self._check_labels(labels, split)
        return labels, probabilities

    def _phase_settings(self, phase: str) -> dict:
        """Phase 1 (`"head"`, and its `"head-search"`) depends neither on
        the settings of phase 2 nor on its own number of epochs
        (`head_epochs`); phase 2 depends on all settings but
        `fine_tune_epochs`."""
        settings = super()._phase_settings(phase)
        excluded = PHASE_2_SETTINGS if phase.startswith("head") else ()
        if phase == "fine_tune":
            excluded = ("fine_tune_epochs",)
            # What "auto" chose: its checkpoints hold that model's optimizer
            # (with loss scaling for float16).
            settings["pass_precision"] = self._pass_policy or "float32"
        return {
            k: v
            for k, v in settings.items()
            if k.removeprefix("tuned.") not in excluded
        }

    def _inference_mode(self) -> bool:
        return not self.settings["train_batchnorm"]


def fine_tune(
    backbone,
    train,
    validation=None,
    *,
    fine_tune_epochs: int = defaults.FINE_TUNE_EPOCHS,
    **kwargs,
) -> FineTuning:
    """Fine-tunes `backbone` on `train` with sensible defaults, in one call.

    Trains a head on cached frozen features (learning rate and weight decay
    chosen on the validation data), then unfreezes the whole backbone and
    tunes it at a peak learning rate found by a range test (the backbone's
    `backbone_lr_scale` times the head's), warm-up and cosine decay, AdamW,
    gradient clipping, BatchNorm in inference mode, early stopping on the
    validation loss and the best weights restored. Keeps the frozen model
    instead if fine-tuning did not improve on it.

    Args:
        backbone: a `tftransfer.Backbone` (or a `keras.Layer`).
        train: a `LabeledData` or a dataset of batched `(prepared, label)`.
        validation: the same kind of data, or `None`.
        fine_tune_epochs: the most fine-tuning epochs (phase 2).
        **kwargs: any `FineTuning` argument.

    Returns:
        The fitted `FineTuning` recipe (`model`, `history`, `evaluate()`).

    Example:

    >>> recipe = tftransfer.fine_tune(backbone, train, validation,
    ...                               fine_tune_epochs=5)
    >>> recipe.evaluate(test)["accuracy"]
    """
    recipe = FineTuning(backbone, fine_tune_epochs=fine_tune_epochs, **kwargs)
    recipe.fit(train, validation)
    return recipe


def _check_unfreeze(unfreeze) -> None:
    if callable(unfreeze) or isinstance(unfreeze, list | tuple):
        return
    if isinstance(unfreeze, str) and unfreeze == "all":
        return
    if (
        isinstance(unfreeze, float | int)
        and not isinstance(unfreeze, bool)
        and 0.0 < unfreeze <= 1.0
    ):
        return
    raise ConfigError(
        "Expected unfreeze='all', a fraction in (0, 1], a list of variable "
        "name patterns or a callable (backbone_layer) -> layers or variables. "
        f"Received: unfreeze={short_repr(unfreeze)}"
    )


def _select(layer: keras.Layer, candidates: list, unfreeze) -> list:
    if callable(unfreeze):
        return _chosen_by(unfreeze, layer, candidates)
    if isinstance(unfreeze, str):  # "all"
        return candidates
    if isinstance(unfreeze, list | tuple):
        patterns = [re.compile(p) for p in unfreeze]
        chosen = [
            v
            for v in candidates
            if any(p.search(peft.variable_path(v)) for p in patterns)
        ]
        if not chosen:
            names = ", ".join(peft.variable_path(v) for v in candidates[:8])
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


def _chosen_by(unfreeze: Callable, layer: keras.Layer, candidates: list) -> list:
    """The backbone variables that `unfreeze(layer)` names: its variables,
    and the trainable weights of its layers."""
    chosen = []
    for item in unfreeze(layer) or []:
        if isinstance(item, keras.Layer):
            chosen.extend(item.trainable_weights)
        else:
            chosen.append(item)
    candidate_ids = {id(v) for v in candidates}
    foreign = [v for v in chosen if id(v) not in candidate_ids]
    if foreign or not chosen:
        problem = (
            f"returned {short_repr(foreign[0])}, which is not a trainable "
            "variable of the backbone"
            if foreign
            else "chose no backbone variable"
        )
        raise ConfigError(
            f"unfreeze={short_repr(unfreeze)} {problem}. It must return a "
            "non-empty list of layers of the backbone layer it is given, or "
            "of their variables."
        )
    unique = {id(v): v for v in chosen}
    return list(unique.values())


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
