"""Recipe files: typed settings read from YAML, validated with clear errors.

A recipe file says the whole job: the backbone, the data, the training
recipe and its settings, the distribution strategy, the evaluation and the
export. `load()` reads one with a safe YAML loader into a `RunConfig`;
every key is checked against the dataclasses below, so a typo is an error
that suggests the closest known key, and a wrong type or value names the
key, the value and what is allowed.

Example:

>>> config = tftransfer.config.load(
...     "recipes/default.yaml", overrides=["recipe.head_epochs=5"]
... )
>>> config.recipe.head_epochs
5
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from typing import Any, Literal

import yaml

from tftransfer import defaults
from tftransfer.errors import ConfigError
from tftransfer.messages import short_repr, short_text
from tftransfer.selection.scores import ESTIMATORS
from tftransfer.vocabulary import DATA_FORMATS

ESTIMATOR_NAMES = tuple(ESTIMATORS)


@dataclasses.dataclass
class BackboneConfig:
    """Which pretrained model to start from.

    Args:
        handle: A catalogue name (`tftransfer backbones` lists them), a
            `keras_hub:` preset, a `keras:` application, a TF Hub URL or a
            local folder (anything `tftransfer.backbone()` accepts).
        seq_length: Text backbones: tokens per example.
        options: More keyword arguments for `tftransfer.backbone()` (for
            example `image_size: [160, 160]` or `preprocessor: URL`).
    """

    handle: str
    seq_length: int | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DataConfig:
    """Where the labelled examples come from and how they are split.

    Args:
        format: `image_folder`, `text_folder` (one sub-folder of `.txt`
            files per class), `csv`, `jsonl`, `tfds` or `tfrecord`.
        path: The folder or file; for `tfds`, the dataset name. A path
            `package://NAME/SUB/PATH` points inside an installed Python
            package.
        options: More keyword arguments for the reader (for example
            `text_column: review` for `csv`, `split: train` for `tfds`).
        validation: Fraction of each class held out for validation, in
            (0, 1).
        test: Fraction of each class held out for the final test, in
            (0, 1), or `null` for none.
        seed: Seed of the split.
        batch_size: Examples per batch (per replica).
    """

    format: Literal[DATA_FORMATS]
    path: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    validation: float = 0.1
    test: float | None = 0.2
    seed: int = 0
    batch_size: int = defaults.BATCH_SIZE


@dataclasses.dataclass
class RecipeConfig:
    """The training recipe and its settings.

    Args:
        kind: `feature_extraction` (frozen backbone, features computed once
            and cached, a head trained on them) or `fine_tuning` (head
            first, then the backbone unfrozen at a lower learning rate).
        head_epochs: The most epochs of head training (it stops early when
            the validation loss stops improving).
        learning_rate: Learning rate of the head, or `auto` (chosen on the
            validation data).
        fine_tune_epochs: `fine_tuning`: the most epochs with the backbone
            unfrozen (at least 1).
        fine_tune_learning_rate: `fine_tuning`: peak learning rate of the
            head while the backbone is unfrozen, or `auto` (from a
            learning-rate range test); the backbone's is this times the
            recipe option `backbone_lr_scale`.
        dropout: Dropout rate of the default head, before each dense layer.
        patience: Epochs without validation improvement before stopping
            early, or `null` to never stop early.
        options: More keyword arguments for the recipe class of `kind`,
            under their Python names (for example `unfreeze: 0.3`,
            `hidden_units: [256]`, `head_weight_decay: 0.0001`, `task:
            multi_label`). Not the settings a recipe file sets elsewhere
            (`recipe.head_epochs`, `data.batch_size`, `distribute.strategy`,
            ...: `RECIPE_ARGUMENT_KEYS`) nor `run_dir`, `verbose` and
            `callbacks`, which the command sets; `tftransfer run` (and
            `--check`) checks the keys against the class before it reads
            any data.

    Every setting has the name of the recipe's Python argument, so
    `recipe.head_epochs: 5` here, `--set recipe.head_epochs=5` and
    `FineTuning(..., head_epochs=5)` say the same thing. The defaults are
    those of the Python API (`tftransfer.defaults`).
    """

    kind: Literal["feature_extraction", "fine_tuning"] = "feature_extraction"
    head_epochs: int = defaults.HEAD_EPOCHS
    learning_rate: float | Literal["auto"] = defaults.HEAD_LEARNING_RATE
    fine_tune_epochs: int = defaults.FINE_TUNE_EPOCHS
    fine_tune_learning_rate: float | Literal["auto"] = defaults.FINE_TUNE_LEARNING_RATE
    dropout: float = defaults.DROPOUT
    patience: int | None = defaults.PATIENCE
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class DistributeConfig:
    """Where training runs.

    Args:
        strategy: `auto` (a TPU if one is reachable, else all GPUs, else the
            CPU), `tpu`, `multi_worker`, `mirrored` or `default`.
        tpu: The TPU to connect to (`local` on a Colab or Cloud TPU VM).
    """

    strategy: Literal["auto", "tpu", "multi_worker", "mirrored", "default"] = "auto"
    tpu: str | None = None


@dataclasses.dataclass
class EvaluationConfig:
    """What the run report shows.

    Args:
        split: The split the final evaluation uses: `test`, or
            `validation` when the data has no test part.
        confidently_wrong: How many of the most confidently wrong examples
            the report shows.
        explain: Show, for those and for each class's typical correct
            prediction, what carried it: words shaded or a heat map over
            the image (`tftransfer.explain`; about 8 s per article on 2 CPU
            cores for MiniLM at 128 tokens).
    """

    split: Literal["test", "validation"] = "test"
    confidently_wrong: int = 12
    explain: bool = True


@dataclasses.dataclass
class ExportConfig:
    """Where and how the trained model is exported.

    Args:
        enabled: Whether the run exports at all.
        base_path: Folder of the model's versions; defaults to
            `saved_models/<name>`.
        tflite: Also convert to `model.tflite` (dynamic-range quantized)
            and record its accuracy change on the evaluation split in the
            model card, as `export(..., tflite=TFLiteOptions(...))` does.
        verify: Reload the export in a fresh process and compare it with
            the trained model.
        explain: Add the `explain` signature (raw input -> class and its
            attributions), as `export(..., explain=True)` does.
    """

    enabled: bool = True
    base_path: str | None = None
    tflite: bool = False
    verify: bool = True
    explain: bool = False


@dataclasses.dataclass
class CandidateConfig:
    """One candidate that `tftransfer rank` scores (see `tftransfer.rank`).

    Args:
        handle: The backbone, as `backbone.handle` takes it.
        seq_length: Text backbones: tokens per example.
        options: More keyword arguments for `tftransfer.backbone()` (for
            example `layers: [-2]`, `pooling: max`, `load_weights: false`).
        features: The recipe's `features`: which backbone output to use.
        pooling: The recipe's `pooling` for a sequence output.
        classifier: The source model's classifier, for LEEP: a mapping with
            a `handle` and more `tftransfer.backbone()` arguments, whose
            "features" are the source task's class probabilities.
        name: Its label in the table (by default made from the others).
    """

    handle: str
    seq_length: int | None = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    features: str | None = None
    pooling: str | None = None
    classifier: dict[str, Any] | None = None
    name: str | None = None


@dataclasses.dataclass
class RankConfig:
    """What `tftransfer rank` compares, and how it orders them.

    Args:
        candidates: The candidates, each a mapping of `CandidateConfig`
            keys. `tftransfer rank` writes `rank.json` (and a chart) into the
            run folder; `backbone: {handle: best}` then trains its top one.
        by: The estimator that orders them (`tftransfer.defaults.RANK_BY`).
        scores: The estimators computed (`tftransfer.defaults.RANK_SCORES`).
        examples: The size of the stratified sample of the training data
            that is scored.
    """

    candidates: list[CandidateConfig] = dataclasses.field(default_factory=list)
    by: Literal[ESTIMATOR_NAMES] = defaults.RANK_BY
    scores: list[Literal[ESTIMATOR_NAMES]] = dataclasses.field(
        default_factory=lambda: list(defaults.RANK_SCORES)
    )
    examples: int = defaults.RANK_EXAMPLES


@dataclasses.dataclass
class RunConfig:
    """A whole job, as one recipe file states it.

    Args:
        name: The run's name: used for the run folder and the exported
            model. One folder name: letters, digits, `_`, `-` and `.`, not
            starting with `.`, at most 100 characters (so the run stays
            inside `runs_dir` and the export inside `saved_models/`).
        backbone: See `BackboneConfig`.
        data: See `DataConfig`.
        recipe: See `RecipeConfig`.
        distribute: See `DistributeConfig`.
        evaluation: See `EvaluationConfig`.
        export: See `ExportConfig`.
        rank: See `RankConfig` (read by `tftransfer rank` only).
        runs_dir: Folder that holds run folders (`<runs_dir>/<name>`).
        cache_dir: Folder of the feature cache; defaults to tftransfer's
            cache folder.
    """

    name: str
    backbone: BackboneConfig
    data: DataConfig
    recipe: RecipeConfig = dataclasses.field(default_factory=RecipeConfig)
    distribute: DistributeConfig = dataclasses.field(default_factory=DistributeConfig)
    evaluation: EvaluationConfig = dataclasses.field(default_factory=EvaluationConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    rank: RankConfig = dataclasses.field(default_factory=RankConfig)
    runs_dir: str = "runs"
    cache_dir: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Returns the settings as plain, JSON- and YAML-serialisable data."""
        return dataclasses.asdict(self)


# Keys that older recipe files used, and their names now (one name per
# setting in Python, YAML and `--set`).
RENAMED_KEYS = {
    "recipe.epochs": "recipe.head_epochs",
    "export.format": "export.tflite",
    "recipe.mixed_precision": "recipe.precision",
}

# The recipe class's keyword arguments that a recipe file sets outside
# `recipe.options`, and the key that sets each.
RECIPE_ARGUMENT_KEYS = {
    "head_epochs": "recipe.head_epochs",
    "learning_rate": "recipe.learning_rate",
    "fine_tune_epochs": "recipe.fine_tune_epochs",
    "fine_tune_learning_rate": "recipe.fine_tune_learning_rate",
    "dropout": "recipe.dropout",
    "patience": "recipe.patience",
    "batch_size": "data.batch_size",
    "seed": "data.seed",
    "strategy": "distribute.strategy",
    "tpu": "distribute.tpu",
    "cache_dir": "cache_dir",
}
# Those that only `FineTuning` takes.
_FINE_TUNING_ARGUMENTS = ("fine_tune_epochs", "fine_tune_learning_rate")
# Arguments that the `tftransfer` command gives the recipe itself.
_COMMAND_ARGUMENTS = {
    "run_dir": "the run folder <runs_dir>/<name>: set runs_dir and name",
    "verbose": "2, one line per epoch",
    "callbacks": "Keras callbacks are Python objects, not settings",
}

# Values that must be positive, or fractions, whatever their section.
_POSITIVE = {
    "data.batch_size",
    "recipe.head_epochs",
    "recipe.fine_tune_epochs",
    "recipe.learning_rate",
    "recipe.fine_tune_learning_rate",
    "recipe.patience",
    "backbone.seq_length",
    "evaluation.confidently_wrong",
    "rank.examples",
}
_FRACTIONS = {"recipe.dropout"}
# Split fractions: a part of size 0 is no part (data.test: null says that).
_OPEN_FRACTIONS = {"data.validation", "data.test"}
_NON_NEGATIVE = {"data.seed"}

# A run's name is one folder name, inside `runs_dir` and `saved_models/`.
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}")
_NAME_RULE = (
    "one folder name: letters, digits, '_', '-' and '.', not starting "
    "with '.', at most 100 characters"
)

# Bounds on what a recipe file may make tftransfer hold. A recipe has a few
# hundred values; a YAML alias (`*name`) repeats a value without copying
# it, so a file of a few lines could otherwise stand for billions of values
# ("billion laughs").
MAX_RECIPE_BYTES = 2**20
MAX_VALUES = 100_000
MAX_DEPTH = 50


class _Refused(yaml.YAMLError):
    """Valid YAML that a recipe file may not hold (too large or too deep)."""

    def __init__(self, problem: str, mark: yaml.Mark | None):
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


class _BoundedLoader(yaml.SafeLoader):
    """A `yaml.SafeLoader` that refuses documents of more than `MAX_VALUES`
    values, counting each alias as the values it repeats, or nested more
    than `MAX_DEPTH` levels deep, and aliases inside the value they name.

    It counts while it composes the document, before any Python object is
    built, so refusing a "billion laughs" file costs as little as reading it.
    """

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        # id(node) -> how many values the node stands for, aliases expanded.
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self._sizes:
                raise _Refused(
                    f"the alias *{short_text(event.anchor)} is inside the value it names, "
                    "so that value would never end",
                    event.start_mark,
                )
            return super().compose_node(parent, index)
        if self._depth >= MAX_DEPTH:
            raise _Refused(
                f"values nest more than {MAX_DEPTH} levels deep",
                self.peek_event().start_mark,
            )
        self._depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        children = node.value if isinstance(node, yaml.CollectionNode) else ()
        if isinstance(node, yaml.MappingNode):
            children = [child for pair in children for child in pair]
        size = 1 + sum(self._sizes[id(child)] for child in children)
        if size > MAX_VALUES:
            raise _Refused(
                f"it holds more than {MAX_VALUES:,} values, counting each "
                "alias (*name) as the values it repeats",
                node.start_mark,
            )
        self._sizes[id(node)] = size
        return node


def _safe_load(text: str) -> Any:
    """`yaml.safe_load` within `_BoundedLoader`'s bounds."""
    return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 (a SafeLoader)


def load(path: str | os.PathLike, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Reads, overrides and validates a recipe file.

    Args:
        path: The YAML recipe file.
        overrides: `"dotted.key=value"` strings applied before validation
            (the CLI's `--set`); values are parsed as YAML, so `head_epochs=5` is
            an integer and `test=null` is `None`.

    Returns:
        The validated `RunConfig`.

    Raises:
        ConfigError: if the file is missing, is not valid YAML, or a key or
            value is not allowed (the message names it and what is allowed).

    Example:

    >>> config = load("recipes/image_feature_extraction.yaml",
    ...               overrides=["data.path=flowers/", "recipe.head_epochs=3"])
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(
            f"Recipe file {path} does not exist. Pass the path of a YAML "
            "recipe file, for example recipes/default.yaml."
        )
    with open(path, "rb") as f:
        data = f.read(MAX_RECIPE_BYTES + 1)
    if len(data) > MAX_RECIPE_BYTES:
        raise ConfigError(
            f"Recipe file {path} is larger than {MAX_RECIPE_BYTES // 2**20} MiB; "
            "recipe files hold a few hundred settings. Pass a recipe file, "
            "not a data file (data files go in `data.path`)."
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"Recipe file {path} is not UTF-8 text (byte {error.start} is "
            f"not valid UTF-8). Save it as UTF-8."
        ) from None
    return loads(text, overrides, source=path)


def loads(
    text: str, overrides: typing.Sequence[str] = (), *, source: str = "<recipe>"
) -> RunConfig:
    """Like `load()`, from the text of a recipe file.

    Args:
        text: YAML text.
        overrides: `"dotted.key=value"` strings, as in `load()`.
        source: Name of the text in error messages.

    Returns:
        The validated `RunConfig`.

    Example:

    >>> loads("name: t\\nbackbone: {handle: minilm}\\n"
    ...       "data: {format: csv, path: a.csv}").recipe.kind
    'feature_extraction'
    """
    try:
        raw = _safe_load(text)
    except _Refused as error:
        raise ConfigError(
            f"{source} is refused{_where(error)}: {error.problem}. A recipe "
            f"file holds at most {MAX_VALUES:,} values, nested at most "
            f"{MAX_DEPTH} levels deep; write the values out instead of "
            "repeating large parts through aliases (&name ... *name)."
        ) from None
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(
            f"{source} is not valid YAML{_where(error)}: {short_text(problem)}. Check "
            "the indentation and quoting there."
        ) from None
    except ValueError as error:  # An integer too long for int().
        raise ConfigError(
            f"{source} holds a value that cannot be read: {short_text(str(error))}. "
            "Write it shorter, or quote it to make it a string."
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source} must hold a mapping of settings (`name:`, `backbone:`, "
            f"`data:`, ...). Received: a YAML {_describe(raw)}."
        )
    for override in overrides:
        apply_override(raw, override)
    config = _build(RunConfig, raw, "", source)
    _check_options_set_elsewhere(config.recipe.options, source)
    return config


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Sets one `"dotted.key=value"` override in a raw settings mapping.

    The value is parsed as YAML (`5` is an integer, `[a, b]` a list, `null`
    is `None`). Keys are checked later, when the settings are validated.

    Raises:
        ConfigError: if `override` has no `=` or an empty key.

    Example:

    >>> raw = {"recipe": {"head_epochs": 10}}
    >>> apply_override(raw, "recipe.head_epochs=3")
    >>> raw
    {'recipe': {'head_epochs': 3}}
    """
    key, sep, value = override.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(
            f"Expected `--set` as KEY=VALUE with a dotted KEY such as "
            f"recipe.head_epochs=5. Received: {short_repr(override)}."
        )
    try:
        parsed = _safe_load(value) if value.strip() else ""
    except _Refused as error:
        raise ConfigError(
            f"--set {short_repr(key.strip())} is refused: {error.problem}. "
            "Give a smaller value."
        ) from None
    except yaml.YAMLError:
        parsed = value
    target = raw
    for depth, part in enumerate(parts[:-1]):
        child = target.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(
                f"Cannot set {short_repr(key.strip())}: "
                f"{short_repr('.'.join(parts[: depth + 1]))} "
                f"is a {_describe(child)}, not a section."
            )
        target = child
    target[parts[-1]] = parsed


def known_keys(cls: type = RunConfig, prefix: str = "") -> list[str]:
    """Lists every dotted key a recipe file may set, in declaration order.

    Example:

    >>> "recipe.head_epochs" in known_keys()
    True
    """
    keys = []
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        hint = typing.get_type_hints(cls)[field.name]
        if dataclasses.is_dataclass(hint):
            keys.extend(known_keys(hint, f"{key}."))
        else:
            keys.append(key)
    return keys


def _build(cls: type, raw: Any, prefix: str, source: str):
    """Builds dataclass `cls` from `raw`, checking every key and value."""
    section = prefix.rstrip(".") or "the top level"
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{source}: {section!r} must be a mapping of settings. Received: "
            f"{short_repr(raw)} (a {_describe(raw)})."
        )
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            raise ConfigError(
                _unknown_key_message(str(key), prefix, list(fields), source)
            )
    values = {}
    for name, field in fields.items():
        key = f"{prefix}{name}"
        if name not in raw:
            required = (
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING
            )
            if required:
                raise ConfigError(
                    f"{source}: missing required key {key!r}. {_field_help(cls, name)}"
                )
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            values[name] = _build(hint, raw[name], f"{key}.", source)
        elif _is_list_of_sections(hint):
            values[name] = _build_list(hint, raw[name], key, source)
        else:
            values[name] = _check_value(key, raw[name], hint, source)
    return cls(**values)


def _is_list_of_sections(hint: Any) -> bool:
    args = typing.get_args(hint)
    return typing.get_origin(hint) is list and dataclasses.is_dataclass(args[0])


def _build_list(hint: Any, raw: Any, key: str, source: str) -> list:
    """Builds a list of sections (`rank.candidates`), each item checked."""
    if not isinstance(raw, list):
        raise ConfigError(
            f"{source}: {key!r} must be a list of mappings. Received: "
            f"{short_repr(raw)} (a {_describe(raw)})."
        )
    (item_class,) = typing.get_args(hint)
    return [
        _build(item_class, item, f"{key}[{index}].", source)
        for index, item in enumerate(raw)
    ]


def _check_options_set_elsewhere(options: dict[str, Any], source: str) -> None:
    """Refuses `recipe.options` keys that the recipe file sets elsewhere
    (`recipe.head_epochs`, `data.batch_size`, ...), under their old names
    (`RENAMED_KEYS`) too, and those the command sets itself."""
    for key in options:
        where = f"{source}: 'recipe.options.{short_text(str(key))}'"
        renamed = RENAMED_KEYS.get(f"recipe.{key}", "").removeprefix("recipe.")
        name = renamed or key
        if name in RECIPE_ARGUMENT_KEYS:
            was = f" (the old name of {name!r})" if renamed else ""
            raise ConfigError(
                f"{where}{was} is set by {RECIPE_ARGUMENT_KEYS[name]!r}. Set "
                f"{RECIPE_ARGUMENT_KEYS[name]} instead, and remove it from "
                "recipe.options."
            )
        if renamed:
            raise ConfigError(
                f"{where} was renamed {name!r}. Write recipe.options.{name}."
            )
        if name in _COMMAND_ARGUMENTS:
            raise ConfigError(
                f"{where}: the tftransfer command gives the recipe {name} "
                f"itself ({_COMMAND_ARGUMENTS[name]}). Remove it from recipe.options."
            )


def check_recipe_options(
    config: RunConfig,
    arguments: typing.Mapping[str, typing.Collection[str]],
    source: str = "<recipe>",
) -> None:
    """Checks `recipe.options` against the keyword arguments of the recipe
    class of `recipe.kind`.

    `load()` has already refused options that the file sets elsewhere; this
    needs the recipe classes' arguments, which the `tftransfer` command
    reads (starting TensorFlow) before it loads any data or backbone.

    Args:
        config: The validated settings.
        arguments: For each recipe kind, the keyword arguments of its class
            (`Recipe.argument_names()`).
        source: Name of the recipe file in error messages.

    Raises:
        ConfigError: for an option that is no argument of the class,
            suggesting the closest one (or naming the kind that takes it).

    Example:

    >>> check_recipe_options(config, {"feature_extraction": ["hidden_units"],
    ...                               "fine_tuning": ["hidden_units", "unfreeze"]})
    """
    kind = config.recipe.kind
    allowed = [
        name
        for name in arguments[kind]
        if name not in RECIPE_ARGUMENT_KEYS and name not in _COMMAND_ARGUMENTS
    ]
    for key in config.recipe.options:
        if key in allowed:
            continue
        message = _unknown_key_message(str(key), "recipe.options.", allowed, source)
        takers = [
            other
            for other, names in arguments.items()
            if other != kind and key in names
        ]
        if takers:
            message += (
                f" {key!r} is an option of kind {takers[0]!r}, not {kind!r}: set "
                f"recipe.kind: {takers[0]}, or remove it."
            )
        raise ConfigError(message)


def recipe_arguments(config: RunConfig) -> dict[str, Any]:
    """The keyword arguments that `config` gives its recipe class: the
    settings of `RECIPE_ARGUMENT_KEYS` (those of fine-tuning only for
    `kind: fine_tuning`), then `recipe.options`.

    Example:

    >>> recipe_arguments(config)["batch_size"] == config.data.batch_size
    True
    """
    arguments = {
        name: _setting(config, key)
        for name, key in RECIPE_ARGUMENT_KEYS.items()
        if config.recipe.kind == "fine_tuning" or name not in _FINE_TUNING_ARGUMENTS
    }
    return {**arguments, **config.recipe.options}


def _setting(config: RunConfig, key: str) -> Any:
    """The value of dotted `key` in `config`."""
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def _unknown_key_message(key: str, prefix: str, allowed: list[str], source: str):
    full = short_repr(f"{prefix}{key}")
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    if f"{prefix}{key}" in RENAMED_KEYS:
        hint = f" Did you mean {RENAMED_KEYS[prefix + key]!r}? (It was renamed.)"
    elif not close:
        # Maybe the key belongs to another section ("epochs" at the top).
        leaves = {k.rsplit(".", 1)[-1]: k for k in known_keys()}
        match = difflib.get_close_matches(key, list(leaves), n=1, cutoff=0.8)
        close = [leaves[match[0]]] if match else []
        hint = f" Did you mean {close[0]!r}?" if close else ""
    else:
        hint = f" Did you mean {(prefix + close[0])!r}?"
    where = f"under {prefix.rstrip('.')!r}" if prefix else "at the top level"
    return (
        f"{source}: unknown key {full}.{hint} Keys allowed {where}: "
        f"{', '.join(allowed)}."
    )


def _check_value(key: str, value: Any, hint: Any, source: str) -> Any:
    """Returns `value` checked (and, for int -> float, converted) to `hint`."""
    checked = _coerce(value, hint)
    if checked is _INVALID:
        choices = [a for a in typing.get_args(hint) if isinstance(a, str)]
        close = (
            difflib.get_close_matches(value, choices, n=1)
            if isinstance(value, str)
            else []
        )
        suggestion = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(
            f"{source}: {key!r} must be {_allowed(hint)}. Received: "
            f"{key}={short_repr(value)} (a {_describe(value)}).{suggestion}"
        )
    if checked is not None and not isinstance(checked, (bool, str, dict)):
        bound = _bound_problem(key, checked)
        if bound:
            raise ConfigError(
                f"{source}: {key!r} must be {bound}. Received: "
                f"{key}={short_repr(value)}."
            )
    if key == "name" and not _NAME.fullmatch(checked):
        raise ConfigError(
            f"{source}: 'name' must be {_NAME_RULE}: it names the run folder "
            f"<runs_dir>/<name> and the export saved_models/<name>, which must "
            f"stay inside those folders. Received: name={short_repr(value)}. "
            "Use, for example, name: flowers-v2."
        )
    return checked


_INVALID = object()


def _coerce(value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            result = _coerce(value, arg)
            if result is not _INVALID:
                return result
        return _INVALID
    if hint is type(None):
        return None if value is None else _INVALID
    if origin is Literal:
        return value if value in args else _INVALID
    if origin is dict:
        return dict(value) if isinstance(value, dict) else _INVALID
    if origin is list:
        if not isinstance(value, list):
            return _INVALID
        items = [_coerce(item, args[0]) for item in value]
        return _INVALID if any(item is _INVALID for item in items) else items
    if hint is bool:
        return value if isinstance(value, bool) else _INVALID
    if hint is int:
        return (
            value
            if isinstance(value, int) and not isinstance(value, bool)
            else _INVALID
        )
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        return _INVALID
    if hint is str:
        return value if isinstance(value, str) and value.strip() else _INVALID
    return _INVALID


def _where(error: yaml.YAMLError) -> str:
    """` at line L, column C` of a YAML error, where it has a position."""
    mark = getattr(error, "problem_mark", None)
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""


def _bound_problem(key: str, value: float) -> str | None:
    if key in _FRACTIONS and not 0.0 <= value < 1.0:
        return "a fraction in [0, 1)"
    if key in _OPEN_FRACTIONS and not 0.0 < value < 1.0:
        return "a fraction in (0, 1)" + (" or null" if key == "data.test" else "")
    if key in _POSITIVE and value <= 0:
        return "greater than 0"
    if key in _NON_NEGATIVE and value < 0:
        return "0 or more"
    return None


def _allowed(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_allowed(arg) for arg in args)
    if hint is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    names = {
        bool: "true or false",
        int: "an integer",
        float: "a number",
        str: "a non-empty string",
        dict: "a mapping",
    }
    if origin is list:
        return f"a list, each item {_allowed(args[0])}"
    return names.get(origin or hint, str(hint))


def _describe(value: Any) -> str:
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "mapping",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def _field_help(cls: type, name: str) -> str:
    """The `Args:` line of `cls`'s docstring that documents `name`."""
    doc = cls.__doc__ or ""
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        if line.strip().startswith(f"{name}:"):
            text = [line.strip().split(":", 1)[1].strip()]
            for more in lines[i + 1 :]:
                if not more.startswith(" " * 12):
                    break
                text.append(more.strip())
            return f"It is: {' '.join(text)}"
    return ""
