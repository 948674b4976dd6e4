"""`FeatureExtraction`: a frozen backbone, cached features, a trained head."""

from __future__ import annotations

import os

import keras

from tftransfer.recipes import heads, training_loop
from tftransfer.recipes.base import DEFAULT_CACHE_DIR, Recipe
from tftransfer.recipes.feature_cache import (
    DEFAULT_MEMORY_BUDGET,
    CachedFeatures,
    FeatureCache,
    fingerprint,
    weights_digest,
)


class FeatureExtraction(Recipe):
    """Trains a classification head on features of a frozen backbone.

    The backbone runs once over each split, in inference mode, and its
    features are cached on disk (sharded, written atomically, keyed by a
    fingerprint of backbone, feature choice, data and preparation): a rerun
    reuses them and any change computes new ones. Features larger than
    `memory_budget` are streamed from disk. The head (linear, or a small MLP
    with dropout) then trains on the cached features in seconds. The result,
    `model`, is one `keras.Model` (backbone + head) from prepared inputs to
    class probabilities, whose predictions equal `head(features)`.

    Training runs under a `tf.distribute` strategy (`"auto"` picks TPU,
    multi-worker, multi-GPU or default), resumes from the last checkpoint in
    `run_dir` when restarted with the same arguments, and stops with a
    `TrainingError` if the loss becomes NaN.

    Args:
        backbone: a `tftransfer.Backbone`, or a `keras.Layer` mapping
            prepared inputs to features (then pass datasets, not
            `LabeledData`).
        features: which backbone output to use (e.g. `"sequence_output"`);
            `None` uses the backbone's feature output.
        pooling: `"mean"`, `"max"` or `"first"` for sequence outputs.
        hidden_units: hidden layer sizes of the head (`()`: linear).
        dropout: dropout rate in the head.
        label_smoothing: label smoothing of the cross-entropy loss.
        learning_rate: Adam learning rate of the head.
        epochs: head training epochs.
        patience: epochs without validation improvement before stopping
            early (best weights are restored); `None` never stops early.
        batch_size: batch size per replica.
        cache_dir: feature cache directory, shared between runs.
        memory_budget: bytes of features held in memory; more are streamed.
        run_dir: checkpoints and TensorBoard logs; a rerun with the same
            directory resumes. Default: `runs/<recipe>-<settings hash>`.
        strategy: a strategy kind for `resolve_strategy()` or a strategy.
        tpu: TPU name or address (see `resolve_strategy()`).
        mixed_precision: compute in `mixed_float16` (GPU) or
            `mixed_bfloat16` (TPU); the output layer stays float32.
        jit_compile: XLA compilation of the training step (`"auto"`: Keras
            decides).
        steps_per_execution: steps per `fit` execution (TPU default 32).
        seed: seed of shuffling and initialisation.
        verbose: 0 silent, 1 progress bar, 2 one line per epoch.
        callbacks: more Keras callbacks, given to every training phase.

    Example:

    >>> backbone = tftransfer.backbone("all-minilm-l6-v2")
    >>> recipe = FeatureExtraction(backbone, hidden_units=(256,), dropout=0.2)
    >>> history = recipe.fit(train, validation)
    >>> recipe.evaluate(test)["accuracy"]
    0.97
    """

    kind = "feature_extraction"

    def __init__(
        self,
        backbone,
        *,
        cache_dir: str | os.PathLike | None = None,
        memory_budget: int = DEFAULT_MEMORY_BUDGET,
        **kwargs,
    ):
        super().__init__(backbone, **kwargs)
        self.cache = FeatureCache(
            cache_dir or os.environ.get("TFTRANSFER_FEATURE_CACHE", DEFAULT_CACHE_DIR)
        )
        self.memory_budget = memory_budget
        self.head: keras.Model | None = None
        self._features: keras.Model | None = None
        self._backbone_key: str | None = None

    def fit(self, train, validation=None, *, class_names: list[str] | None = None):
        """Caches features (or reuses them) and trains the head.

        Args:
            train: a `tftransfer.data.LabeledData`, or a `tf.data.Dataset`
                of batched `(prepared inputs, int labels)`.
            validation: the same kind of data, or `None`.
            class_names: class names, where `train` does not carry them.

        Returns:
            The `keras.callbacks.History` of the head training (all epochs,
            including those done before a resume).
        """
        train_features = self.cached_features(train, "train")
        validation_features = (
            self.cached_features(validation, "validation")
            if validation is not None
            else None
        )
        self._set_class_names(train, class_names)
        seed = self.settings["seed"]
        keras.utils.set_random_seed(seed)
        with self._building():
            self.head = heads.build_head(
                train_features.feature_dim,
                len(self.class_names),
                hidden_units=tuple(self.settings["hidden_units"]),
                dropout=self.settings["dropout"],
            )
            self._compile(
                self.head, keras.optimizers.Adam(self.settings["learning_rate"])
            )
        batch = self.global_batch_size
        self.history = self._train_phase(
            "head",
            self.head,
            train_features.dataset(
                batch, shuffle=True, seed=seed, memory_budget=self.memory_budget
            ),
            validation_features.dataset(batch, memory_budget=self.memory_budget)
            if validation_features
            else None,
            self._head_epochs(),
            data_key=fingerprint(train_features.directory.parent.name),
        )
        self.model = self._join(self.head)
        return self.history

    def evaluate(self, test, *, split: str = "test") -> dict:
        """Returns accuracy, top-k, per-class precision/recall/F1 and the
        confusion matrix of the trained model on `test`, as numbers.

        The head runs on cached features of `test` (computed once), which
        gives the same predictions as `model` on the prepared inputs.
        """
        self._require_fitted()
        features = self.cached_features(test, split)
        batches = features.dataset(
            self.global_batch_size, memory_budget=self.memory_budget
        )
        labels, probabilities = self._predict(self.head, batches)
        return self._report(labels, probabilities)

    def cached_features(self, data, split: str) -> CachedFeatures:
        """Returns the features of `data`, computing and caching them if needed.

        Args:
            data: a `LabeledData` or a dataset of batched `(prepared, label)`.
            split: a name for the cache directory (`"train"`, ...).
        """
        feature_model = self._feature_model_for(data)
        key = fingerprint(
            self._backbone_key,
            self.settings["features"],
            self.settings["pooling"],
            self._data_key(data),
        )

        def compute():
            verbose = 0 if self.verbose == 0 or not self.is_chief else 1
            return training_loop.predict_batches(
                feature_model, self._batches(data), self.strategy, verbose=verbose
            )

        return self.cache.get_or_compute(key, split, compute, write=self.is_chief)

    def _feature_model_for(self, data) -> keras.Model:
        if self._features is None:
            spec = self._batches(data).element_spec[0]
            with self._building():
                self._features = self._feature_model(spec, self._inference_mode())
            self._backbone_key = fingerprint(
                getattr(self.backbone, "name", type(self.backbone).__name__),
                getattr(self.backbone, "handle", None),
                self._policy,
                weights_digest(self._features),
            )
        return self._features

    def _head_epochs(self) -> int:
        return self.settings["epochs"]

    def _inference_mode(self) -> bool:
        """Whether the model calls the backbone in inference mode always."""
        return True

    def _join(self, head: keras.Model) -> keras.Model:
        inputs = self._features.input
        with self.strategy.scope():
            return keras.Model(inputs, head(self._features(inputs)), name=self.kind)
