"""`FeatureExtraction`: a frozen backbone, cached features, a trained head."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator

import keras
import numpy as np
import tensorflow as tf

from tftransfer import defaults, distribute, precision
from tftransfer.backbones import Backbone
from tftransfer.backbones.weights import cache
from tftransfer.data import length_buckets
from tftransfer.errors import ConfigError
from tftransfer.hub import HubLayer
from tftransfer.recipes import heads, learning_rates, training_loop
from tftransfer.recipes.base import Recipe, holds_run_lock
from tftransfer.recipes.feature_cache import (
    DEFAULT_MEMORY_BUDGET,
    CachedFeatures,
    DataDigest,
    FeatureCache,
    files_digest,
    fingerprint,
    weights_digest,
)
from tftransfer.recipes.grouped_adam import GroupedAdam
from tftransfer.recipes.tasks import get_task

PREDICTION_BATCH_SIZE = 1024


class FeatureExtraction(Recipe):
    """Trains a head on features of a frozen backbone.

    The backbone runs once over each split, in inference mode, and its
    features are cached on disk (sharded, written atomically, keyed by a
    fingerprint of backbone, feature choice, data and preparation): a rerun
    reuses them and any change computes new ones. Features larger than
    `memory_budget` are streamed from disk. The head (by default linear, or
    a small MLP with dropout; or any Keras layer, see `head`) then trains on
    the cached features in seconds. The result, `model`, is one
    `keras.Model` (backbone + head) from prepared inputs to the task's
    outputs, whose predictions equal `head(features)`.

    The task (`task`, or the training data's `LabeledData.task`) decides
    the outputs and the loss: `"classification"` (softmax, cross-entropy),
    `"multi_label"` (sigmoid per label, binary cross-entropy) or
    `"regression"` (linear, mean squared error); see
    `tftransfer.recipes.tasks`.

    Training runs under a `tf.distribute` strategy (`"auto"` picks TPU,
    multi-worker, multi-GPU or default), resumes from the last checkpoint in
    `run_dir` when restarted with the same arguments, and stops with a
    `TrainingError` if the loss becomes NaN.

    Args:
        backbone: a `tftransfer.Backbone`, or a `keras.Layer` mapping
            prepared inputs to features (then pass datasets, not
            `LabeledData`).
        task: `"classification"`, `"multi_label"` or `"regression"`
            (`tftransfer.vocabulary.TASKS`); `None` takes the training
            data's (`LabeledData.task`; classification for a dataset).
            Given, it must match a `LabeledData`'s task.
        head: `None` (the default head: `hidden_units`, `dropout`,
            `head_weight_decay`); a `keras.Layer` mapping features
            `[batch, feature_dim]` to `[batch, num_outputs]` raw outputs
            (logits, or values for regression: the task's activation is
            added after it); or a callable `(features_spec, num_outputs) ->
            keras.Layer`, `features_spec` a `tf.TensorSpec` `[None,
            feature_dim]`. The layer must be Keras-serialisable (a
            registered class whose `get_config()` gives its constructor
            arguments): every candidate of the learning-rate search trains
            a fresh copy, and export saves it. A custom head regularises
            itself (a `kernel_regularizer`): `head_weight_decay` applies to
            the default head only, and `"auto"` then searches the learning
            rate alone.
        features: which backbone output to use (e.g. `"sequence_output"`);
            `None` uses the backbone's feature output.
        pooling: `"mean"`, `"max"`, `"first"` or `"attention"` for sequence
            outputs (checked when the recipe is made; the old `"avg"` and
            `"cls"` name their new words). `"attention"` is learned with the
            head (`AttentionPooling`, starting as the masked mean): the
            cache holds the sequence `[length, dim]` with its mask as one
            more channel (text padded to `seq_length`), and the head pools
            it before its layers (or `head`) see `[batch, dim]`. The output
            must be a sequence: a `ConfigError` says so at the first
            backbone pass otherwise.
        hidden_units: hidden layer sizes of the head (`()`: linear).
        dropout: dropout rate of the default head (with a custom `head`,
            leave it at its default: build dropout into the head).
        label_smoothing: label smoothing of the cross-entropy loss
            (classification and multi-label).
        learning_rate: Adam learning rate of the head, or `"auto"`: chosen
            on the validation data from `tftransfer.defaults.HEAD_LEARNING_RATES` (each
            candidate trained to its best validation loss on the cached
            features, and scored by the task's plain validation loss; see
            `tftransfer.recipes.learning_rates`).
        head_weight_decay: L2 penalty on the default head's kernels, or
            `"auto"`: chosen like the learning rate, from
            `tftransfer.defaults.HEAD_WEIGHT_DECAYS`.
        head_epochs: the most head training epochs: training stops earlier
            when the validation loss has not improved for `patience` epochs.
        patience: epochs without validation improvement before stopping
            early (best weights are restored); `None` never stops early.
        batch_size: batch size per replica. Training drops the last
            partial batch of each epoch (every step has the global batch
            size), unless the data holds less than one global batch.
        cache_dir: feature cache directory, shared between runs.
        memory_budget: bytes of features held in memory; more are streamed.
        run_dir: checkpoints and TensorBoard logs; a rerun with the same
            directory resumes. Default: `runs/<recipe>-<settings hash>`.
        strategy: a strategy kind for `resolve_strategy()` or a strategy.
        tpu: TPU name or address (see `resolve_strategy()`).
        precision: the compute precision of the backbone pass
            (`tftransfer.vocabulary.PRECISIONS`). `"auto"` tries the
            hardware's reduced precision (bfloat16 on TPUs, recent GPUs and
            CPUs with AMX or AVX-512 BF16; float16 on older GPUs) and keeps
            it where the first batches' features stay within
            `tftransfer.precision.DRIFT_TOLERANCE` of float32's and it runs
            faster; else float32 (the log says which, and why).
            `"float32"` turns it off; a mixed policy name forces it,
            unguarded. Heads train, and `model` predicts and exports, in
            float32. A plain `keras.Layer` backbone computes in its own
            dtype policy, a TF Hub SavedModel in its saved dtypes.
            `precision_choice` holds what the guard chose and measured.
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
            cache_dir or os.path.join(cache.cache_dir(), "features")
        )
        self.memory_budget = memory_budget
        self.head: keras.Model | None = None
        self._input_spec = None
        self._input_data = None
        self._train_key: str | None = None
        # The last fit's cached validation features (None without any).
        self._validation_features: CachedFeatures | None = None
        self._backbone_fingerprint: str | None = None
        # The dtype policy the backbone pass tries (`precision` resolved for
        # this hardware; a plain layer is built already, in its own), the
        # one it runs in once chosen (by the guard, or read from cached
        # features), and its frozen backbone layers.
        self._candidate_policy = (
            precision.candidate_policy(self.settings["precision"], self.strategy)
            if isinstance(backbone, Backbone)
            else "float32"
        )
        self._pass_policy: str | None = None
        self.precision_choice: precision.PrecisionChoice | None = None
        self._pass_layers: dict[str, keras.Layer] = {}
        self._pass_functions: dict[str, Callable] = {}

    @property
    def model(self) -> keras.Model | None:
        """Backbone + head, from prepared inputs to the task's outputs.

        Built when first read (training and evaluation need only the head
        and the cached features); `None` before `fit()`.
        """
        if self._model is None and self.head is not None:
            self._model = self._join(self.head)
        return self._model

    @holds_run_lock
    def fit(self, train, validation=None, *, class_names: list[str] | None = None):
        """Caches features (or reuses them) and trains the head.

        Args:
            train: a `tftransfer.data.LabeledData`, or a `tf.data.Dataset`
                of batched `(prepared inputs, labels)`: class indices, or
                multi-hot vectors or targets `[batch, outputs]` (read as
                float32 for those tasks, whatever their dtype).
            validation: the same kind of data, or `None`: then a part of
                `train` is held out for validation (10% of each class, or
                one example in ten of a dataset, by a hash of its content),
                and the log says so.
            class_names: class names, where `train` does not carry them.

        Returns:
            The `keras.callbacks.History` of the head training (all epochs,
            including those done before a resume).

        Raises:
            DataError: if `validation` has a class that `train` lacks (its
                labels are otherwise matched to `train`'s by class name), or
                a label is not a class index.
            TrainingError: if another process is training into `run_dir`.
        """
        train, validation = self._prepare_splits(train, validation, class_names)
        return self._fit_head(train, validation, class_names)

    def _fit_head(self, train, validation, class_names: list[str] | None):
        """Caches the features of the prepared splits and trains the head."""
        train_key = self._feature_key(train)
        train_features = self.cached_features(train, "train", key=train_key)
        validation_key = (
            self._feature_key(validation) if validation is not None else None
        )
        validation_features = (
            self.cached_features(validation, "validation", key=validation_key)
            if validation is not None
            else None
        )
        self._validation_features = validation_features
        # The model's inputs, read when it is first built (`_join`).
        self._input_data = train
        self._input_spec = None
        # From the keys, not the folders: a non-chief worker's features may
        # sit in a private temporary folder, yet it must find the chief's
        # checkpoints. The validation data belongs to the key too: early
        # stopping and the learning-rate choice depend on it.
        self._train_key = fingerprint(
            train_key,
            train_features.data_digest,
            validation_key,
            validation_features.data_digest if validation_features else None,
        )
        self._set_class_names(train, class_names, train_features.labels())
        self._check_labels(train_features.labels(), "training")
        if validation_features is not None:
            self._check_labels(validation_features.labels(), "validation")
        seed = self.settings["seed"]
        keras.utils.set_random_seed(seed)
        batch = self.global_batch_size

        def train_batches() -> tf.data.Dataset:
            # A new dataset for each use: a seeded shuffle's orders advance
            # with every pass over one dataset object, and the head search
            # must not change the orders the head's own training sees.
            return train_features.dataset(
                batch,
                shuffle=True,
                seed=seed,
                memory_budget=self.memory_budget,
                drop_remainder=self._drop_remainder(train_features.num_examples),
            )

        validation_batches = (
            validation_features.dataset(batch, memory_budget=self.memory_budget)
            if validation_features
            else None
        )
        steps_per_execution = self._head_steps_per_execution(
            train_features, int(train_batches().cardinality())
        )

        def untrained_head(weight_decay: float) -> keras.Model:
            # Every head starts from the same weights.
            keras.utils.set_random_seed(seed)
            with self._building():
                return self._new_head(train_features.feature_shape, weight_decay)

        def new_head(learning_rate: float, weight_decay: float) -> keras.Model:
            head = untrained_head(weight_decay)
            with self._building():
                self._compile(
                    head,
                    keras.optimizers.Adam(learning_rate),
                    steps_per_execution=steps_per_execution,
                )
            return head

        def candidate_heads(candidates: list) -> tuple[keras.Model, list]:
            """The candidates' heads side by side in one compiled model, each
            with its own output (`"candidate_<i>"` of a dict), loss and
            learning rate."""
            candidate_heads = [untrained_head(decay) for _, decay in candidates]
            names = [f"candidate_{index}" for index in range(len(candidates))]
            loss = get_task(self.task).loss(self.settings["label_smoothing"])
            with self._building():
                features = keras.Input(tuple(candidate_heads[0].inputs[0].shape[1:]))
                model = keras.Model(
                    features,
                    {
                        name: keras.Sequential([head], name=name)(features)
                        for name, head in zip(names, candidate_heads, strict=True)
                    },
                )
                model.compile(
                    optimizer=GroupedAdam(
                        [
                            (head.trainable_variables, rate)
                            for head, (rate, _) in zip(
                                candidate_heads, candidates, strict=True
                            )
                        ]
                    ),
                    loss=dict.fromkeys(names, loss),
                    steps_per_execution=steps_per_execution,
                    jit_compile=self.settings["jit_compile"],
                )
            return model, candidate_heads

        learning_rate, weight_decay = self._head_hyperparameters(
            candidate_heads, train_batches, validation_batches
        )
        self.head = new_head(learning_rate, weight_decay)
        self._model = None
        self.history = self._train_phase(
            "head",
            self.head,
            train_batches(),
            validation_batches,
            self.settings["head_epochs"],
            data_key=self._train_key,
            learning_rate_setting=("learning_rate", learning_rate),
        )
        return self.history

    def _new_head(
        self, feature_shape: tuple[int, ...], weight_decay: float
    ) -> keras.Model:
        """An untrained head on features of `feature_shape`: the default one,
        or one from `head=`; for `pooling="attention"`, on the sequence's
        `AttentionPooling` (`heads.attention_head`)."""
        attention = self.settings["pooling"] == "attention"
        # The sequence's mask is its last channel (`MaskChannel`).
        feature_dim = feature_shape[-1] - 1 if attention else feature_shape[0]
        if self.head_choice is None:
            head = heads.build_head(
                feature_dim,
                len(self.class_names),
                hidden_units=tuple(self.settings["hidden_units"]),
                dropout=self.settings["dropout"],
                weight_decay=weight_decay,
                task=self.task,
            )
        else:
            head = heads.custom_head(
                self.head_choice, feature_dim, len(self.class_names), task=self.task
            )
        return heads.attention_head(head) if attention else head

    def _head_hyperparameters(
        self, candidate_heads, train_batches, validation_batches
    ) -> tuple[float, float]:
        """The head's learning rate and weight decay: as set, or, for
        `"auto"`, the best on the validation data (see `search_head`)."""
        settings = {
            "learning_rate": (
                self.settings["learning_rate"],
                defaults.HEAD_LEARNING_RATES,
            ),
            "head_weight_decay": (
                self.settings["head_weight_decay"],
                # A custom head regularises itself: no decay to search.
                defaults.HEAD_WEIGHT_DECAYS if self.head_choice is None else (0.0,),
            ),
        }
        candidates = {
            name: candidates if value == defaults.AUTO else (value,)
            for name, (value, candidates) in settings.items()
        }
        searched = [name for name, values in candidates.items() if len(values) > 1]
        if not searched:
            return tuple(values[0] for values in candidates.values())
        if validation_batches is None:
            fallback = {
                "learning_rate": defaults.HEAD_LEARNING_RATE_WITHOUT_VALIDATION,
                "head_weight_decay": 0.0,
            }
            chosen = [
                fallback[name] if name in searched else values[0]
                for name, values in candidates.items()
            ]
            self.say(
                f"No validation data to choose {' and '.join(searched)} from: "
                f"using learning_rate={chosen[0]:g}, "
                f"head_weight_decay={chosen[1]:g}."
            )
            return chosen[0], chosen[1]

        validation_arrays = functools.cache(self._validation_arrays)

        def train_candidates(candidates: list) -> list[float]:
            model, heads_ = candidate_heads(candidates)

            names = list(model.output)

            def validation_losses() -> list[float]:
                if validation_arrays() is None:
                    labels, outputs = self._predict("search", model, validation_batches)
                else:
                    inputs, labels = validation_arrays()
                    # In chunks: activations of every candidate stay small.
                    parts = [
                        model(
                            inputs[start : start + PREDICTION_BATCH_SIZE * 4],
                            training=False,
                        )
                        for start in range(0, len(inputs), PREDICTION_BATCH_SIZE * 4)
                    ]
                    outputs = {
                        name: np.concatenate([np.asarray(p[name]) for p in parts])
                        for name in names
                    }
                task = get_task(self.task)
                return [
                    task.validation_loss(labels, np.asarray(outputs[name]))
                    for name in names
                ]

            learning_rates.train_to_best_epochs(
                model,
                heads_,
                # Each head's output is trained on the labels.
                train_batches().map(lambda x, y: (x, dict.fromkeys(names, y))),
                validation_losses,
                strategy=self.strategy,
                epochs=self.settings["head_epochs"],
                patience=self.settings["patience"],
            )
            return validation_losses()

        def search() -> dict:
            choice = learning_rates.search_head(
                train_candidates,
                candidates["learning_rate"],
                candidates["head_weight_decay"],
            )
            tried = ", ".join(
                f"lr {rate:g} / wd {decay:g}: {loss:.4f}"
                for (rate, decay), loss in choice.trials.items()
            )
            return {
                "chosen": [choice.learning_rate, choice.weight_decay],
                "tried": tried,
            }

        search_result = self._remembered("head-search", self._train_key, search)
        chosen = search_result["chosen"]
        self.say(
            f"Head: learning_rate={chosen[0]:g}, head_weight_decay={chosen[1]:g}, "
            f"chosen by validation loss ({search_result['tried']})."
        )
        for name, value in zip(candidates, chosen, strict=True):
            if name in searched:
                self.tuned[name] = value
        return chosen[0], chosen[1]

    def predict(self, data, *, split: str = "test") -> np.ndarray:
        """Returns the outputs `[num_examples, num_outputs]` of the trained
        model on `data`, in the order of `data`: class probabilities,
        label probabilities (multi-label) or predicted values (regression).

        The head runs on the cached features of `data` (computed and cached
        under `split` the first time), which gives the same predictions as
        `model` on the prepared inputs without running the backbone again.

        Args:
            data: a `LabeledData`, or a dataset of batched `(prepared
                inputs, labels)`.
            split: the name `data`'s features are cached under.

        Example:

        >>> probabilities = recipe.predict(test)
        >>> [recipe.class_names[i] for i in probabilities.argmax(axis=1)]
        """
        return self._labels_and_probabilities(data, split)[1]

    def evaluate(self, test, *, split: str = "test") -> dict:
        """Returns the task's metrics of the trained model on `test`, as
        numbers (`tftransfer.recipes.tasks.task_metrics`): for
        classification accuracy, top-k, per-class precision/recall/F1 and
        the confusion matrix; for multi-label micro/macro F1, subset
        accuracy and per-label precision/recall/F1 at 0.5; for regression
        MAE, RMSE and R².

        Like `predict()`, the head runs on the cached features of `test`.

        Example:

        >>> metrics = recipe.evaluate(test)
        >>> metrics["accuracy"], metrics["confusion_matrix"]
        """
        return self._report(*self._labels_and_probabilities(test, split))

    def cached_features(
        self, data, split: str, *, key: str | None = None
    ) -> CachedFeatures:
        """Returns the features of `data`, computing and caching them if needed.

        Nothing is built or run when the features are cached (a plain
        dataset's examples are read once more, to check that they are
        unchanged); otherwise the backbone runs once over `data`.

        Args:
            data: a `LabeledData` or a dataset of batched `(prepared, label)`.
            split: a name for the cache directory (`"train"`, ...).
            key: `data`'s feature key, where the caller has computed it
                already (it reads every image file's size and time).
        """
        key = key or self._feature_key(data)
        prepared = isinstance(data, tf.data.Dataset)
        cached = self.cache.lookup(key, split)
        if cached is not None and (
            not prepared or cached.data_digest == DataDigest.of(self._batches(data))
        ):
            if self._pass_policy is None and cached.precision != "float32":
                self.say(
                    f"Backbone pass: the cached {split} features were computed "
                    f"in {cached.precision}; later passes use it too."
                )
            # Later passes (other splits, fine-tuning) keep its precision.
            self._pass_policy = self._pass_policy or cached.precision
            return cached
        digest = DataDigest() if prepared else None
        return self.cache.store(
            key,
            split,
            self._feature_batches(self._batches(data), digest, by_length=not prepared),
            data_digest=digest,
            precision=lambda: self._pass_policy,
            write=self.is_chief,
        )

    def _feature_key(self, data) -> str:
        """The cache key of `data`'s features: backbone, feature choice, data."""
        return fingerprint(
            self._backbone_key(),
            self.settings["features"],
            self.settings["pooling"],
            self._data_key(data),
        )

    def _validation_arrays(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached validation `(features, labels)` in memory, for the
        head search to evaluate its candidates every epoch with one call;
        `None` where they are streamed or a strategy distributes the model
        (the search then makes a pass under the strategy, `_predict`)."""
        features = self._validation_features
        single_device = self.strategy.num_replicas_in_sync == 1 and not (
            distribute.is_tpu(self.strategy)
            or distribute.is_multi_worker(self.strategy)
        )
        if not single_device or features.nbytes > self.memory_budget:
            return None
        inputs, labels = features.arrays()
        if self.task == "classification":
            labels = labels.reshape(-1)
        return inputs, labels

    def _labels_and_probabilities(self, data, split: str):
        self._require_fitted()
        data = self._with_class_names(data, self.class_names, split)
        features = self.cached_features(data, split)
        self._check_labels(features.labels(), split)
        batches = features.dataset(
            self._prediction_batch_size(), memory_budget=self.memory_budget
        )
        return self._predict("head", self.head, batches)

    def _feature_batches(
        self,
        batches: tf.data.Dataset,
        digest: DataDigest | None,
        *,
        by_length: bool = False,
    ):
        """Runs the frozen backbone over `batches`; yields `(features, labels)`
        in the order of `batches` and adds the examples' fingerprints to
        `digest`, if given.

        With `by_length` (the recipe's own batches of `global_batch_size`),
        text runs in batches of similar length, each cut at its longest
        member (`tftransfer.data.length_buckets`), except on TPUs, which
        need one shape.
        """
        if digest is not None:
            batches = batches.map(
                lambda inputs, labels: (
                    inputs,
                    (labels, DataDigest.example_fingerprints(inputs, labels)),
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            ).prefetch(tf.data.AUTOTUNE)
        verbose = 0 if self.verbose == 0 or not self.is_chief else 1
        if (
            by_length
            and length_buckets.applies_to(batches.element_spec)
            and not distribute.is_tpu(self.strategy)
        ):
            sorted_batches = length_buckets.sorted_by_length(
                batches, self.global_batch_size
            )
            # Sequence features (`pooling="attention"`) of batches cut at
            # their longest member are padded back to the data's length, so
            # the cache holds one shape.
            length = batches.element_spec[0]["input_mask"].shape[1]
            passed = length_buckets.in_original_order(
                (
                    (_padded_sequences(features, length), labels)
                    for features, labels in self._backbone_pass(sorted_batches, verbose)
                ),
                self.global_batch_size * length_buckets.WINDOW_BATCHES,
            )
        else:
            passed = self._backbone_pass(batches, verbose)
        for features, labels in passed:
            if digest is not None:
                labels, fingerprints = labels
                digest.update(fingerprints)
            yield features.astype("float32", copy=False), labels

    def _backbone_pass(self, batches: tf.data.Dataset, verbose: int):
        """Yields the backbone's `(features, labels)` of every batch, in the
        precision chosen for the pass: by the guard (`precision="auto"`,
        the first time), by a previous pass or cached features, or by
        `precision`."""
        policy = self._pass_policy or self._candidate_policy
        if self._pass_policy is None and policy != "float32":
            if isinstance(self._built_backbone(), HubLayer):
                policy = "float32"
                self.say(
                    "Backbone pass: float32 (a TF Hub SavedModel computes in "
                    "the dtypes it was saved with, whatever the precision)."
                )
            elif self.settings["precision"] == defaults.AUTO:
                yield from self._guarded_pass(batches, policy, verbose)
                return
        self._pass_policy = policy
        predictor = self._predictor(f"features-{policy}", self._pass_function(policy))
        yield from predictor.batches(batches, verbose=verbose)

    def _guarded_pass(self, batches: tf.data.Dataset, candidate: str, verbose: int):
        """The backbone pass under `precision="auto"`: the first batches,
        read once and held, run in `candidate` and in float32,
        `precision.guarded_choice()` picks one, and the rest of the pass
        runs in that one."""
        reading = training_loop.DistributedPass(batches, self.strategy)
        probe = [
            reading.next() for _ in range(min(precision.PROBE_BATCHES, reading.steps))
        ]
        predictors = {
            policy: self._predictor(f"features-{policy}", self._pass_function(policy))
            for policy in (candidate, "float32")
        }
        runs = {
            policy: _timed(predictor.outputs(reading, batch) for batch in probe)
            for policy, predictor in predictors.items()
        }
        (reduced, reduced_seconds), (full, full_seconds) = runs.values()
        choice = precision.guarded_choice(
            candidate,
            [features for features, _ in reduced],
            reduced_seconds,
            [features for features, _ in full],
            full_seconds,
        )
        self.precision_choice = choice
        self._pass_policy = choice.policy
        self.say(f"Backbone pass: {choice.reason}")
        yield from runs[choice.policy][0]
        yield from predictors[choice.policy].rest(reading, verbose=verbose)

    def _pass_function(self, policy: str) -> Callable:
        """The feature pass in the dtype `policy`: the frozen backbone (built
        once per policy, eagerly: built while the step is traced, a
        backbone would load its weights into the trace instead of its
        variables) in inference mode, its outputs pooled in float32."""
        function = self._pass_functions.get(policy)
        if function is not None:
            return function
        layer = self._pass_layer(policy)

        def extract_features(inputs, training: bool = False):
            del training  # Always inference: the backbone is frozen here.
            outputs = tf.nest.map_structure(
                lambda t: tf.cast(t, tf.float32) if t.dtype.is_floating else t,
                layer(inputs, training=False),
            )
            return heads.select_features(
                outputs,
                inputs,
                output_key=self._output_key(),
                pooling=self.settings["pooling"],
                backbone_name=repr(self.settings["backbone"]),
            )

        self._pass_functions[policy] = extract_features
        return extract_features

    def _pass_layer(self, policy: str) -> keras.Layer:
        """The frozen backbone layer that computes in the dtype `policy`:
        the model's own (`_built_backbone()`) for float32, else one more
        layer built under `policy`, with the same weights."""
        if policy == "float32":
            return self._built_backbone()
        if policy not in self._pass_layers:
            with self._building(policy):
                self._pass_layers[policy] = self._backbone_layer(trainable=False)
        return self._pass_layers[policy]

    def _backbone_key(self) -> str:
        """Fingerprint of the backbone's weights and the feature settings,
        `precision` among them: as set, not as this machine resolves
        `"auto"` (the manifest records the precision used), so a run folder
        keeps its features and checkpoints on another machine.

        A `Backbone` whose weights are files in a local directory is
        fingerprinted from their names, sizes and times, without building
        it; any other backbone from its weight values.
        """
        if self._backbone_fingerprint is None:
            files = (
                files_digest(self.backbone.handle)
                if isinstance(self.backbone, Backbone)
                else None
            )
            self._backbone_fingerprint = fingerprint(
                _describe(self.backbone),
                self.settings["precision"],
                files or weights_digest(self._built_backbone()),
            )
        return self._backbone_fingerprint

    def _head_steps_per_execution(self, features: CachedFeatures, steps: int) -> int:
        """Steps per execution of the head: a whole epoch (`steps`) per
        call when the features are in memory (the steps are tiny, so
        per-call overhead would dominate) and the strategy can, the
        recipe's setting (a divisor of `steps`) otherwise."""
        if features.nbytes > self.memory_budget or not (
            distribute.several_steps_per_execution(self.strategy)
        ):
            return self._steps_per_execution(steps)
        return steps

    def _prediction_batch_size(self) -> int:
        return max(self.global_batch_size, PREDICTION_BATCH_SIZE)

    def _inference_mode(self) -> bool:
        """Whether the model calls the backbone in inference mode always."""
        return True

    def _join(self, head: keras.Model) -> keras.Model:
        """`head(features(inputs))`, sharing the backbone layer's weights."""
        if self._input_spec is None:
            self._input_spec = self._batches(self._input_data).element_spec[0]
        with self._building():
            features = self._feature_model(self._input_spec, self._inference_mode())
            return keras.Model(features.input, head(features.output), name=self.kind)


def _describe(backbone) -> dict:
    """What identifies a backbone besides its weights."""
    if not isinstance(backbone, Backbone):
        return {"class": type(backbone).__name__, "name": backbone.name}
    try:
        return backbone.get_config()
    except ConfigError:
        return {
            key: str(getattr(backbone, key))
            for key in ("name", "handle", "source", "output_key", "seq_length")
        }


def _padded_sequences(features: np.ndarray, length: int) -> np.ndarray:
    """Sequence features `[batch, cut, channels]` padded with zeros to
    `[batch, length, channels]` (the mask channel 0: padding); vectors as
    they are."""
    if features.ndim != 3 or features.shape[1] >= length:
        return features
    return np.pad(features, ((0, 0), (0, length - features.shape[1]), (0, 0)))


def _timed(batches: Iterator) -> tuple[list, list[float]]:
    """All of `batches` in a list, and the seconds each took to come."""
    results, seconds = [], []
    start = time.perf_counter()
    for batch in batches:
        results.append(batch)
        now = time.perf_counter()
        seconds.append(now - start)
        start = now
    return results, seconds
