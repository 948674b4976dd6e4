"""`BackboneSource`: where backbones come from, one module per source."""

from __future__ import annotations

import abc
import contextlib
import inspect
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from tftransfer.errors import ConfigError
from tftransfer.vocabulary import POOLINGS

if TYPE_CHECKING:
    from tftransfer.backbones.description import Backbone

FORMS = ("name", "prefix", "url", "path")
"""The kinds of handle a source recognises, in the order the registry tries
them: catalogue names, explicit prefixes (`"keras:"`, `"keras_hub:"`, ...),
URLs, then local files and folders."""

# Pooling words that tftransfer used to take, and the vocabulary word for each.
_OLD_POOLINGS = {"avg": "mean", "average": "mean", "cls": "first"}


class BackboneSource(abc.ABC):
    """One place pretrained backbones come from: a hub, a library, a file type.

    A source says which handles it supports and builds a `Backbone` from
    one. Register an instance with `tftransfer.backbones.register_source()`;
    `tftransfer.backbone(handle, **options)` then asks the registered sources
    in turn (by `form`, see `FORMS`) whether they support `handle`, and the
    first that does builds it. The `Backbone` records the source's `name`
    and the arguments, so `Backbone.from_config()` rebuilds it through the
    same source (in another process too, once the source is registered
    there).

    Subclasses set `name`, `form` and `accepts` and implement
    `is_supported()` and `build()`; `suggest()`, `check_hubify()` and
    `works_offline()` have defaults.

    Attributes:
        name: The registered name, recorded in `Backbone.get_config()`.
        form: Which kind of handle it recognises, one of `FORMS`; decides
            when the registry asks it.
        accepts: One line for error messages: the handles it takes.

    Example:

    >>> class NpyImages(BackboneSource):
    ...     name, form, accepts = "npy", "path", 'a ".npy" file of a conv kernel'
    ...     def is_supported(self, handle, **options):
    ...         return handle.endswith(".npy")
    ...     def build(self, handle, *, name=None):
    ...         kernel = np.load(handle, allow_pickle=False)
    ...         return Backbone(name=name or "npy", handle=handle,
    ...                         modality="image", feature_dim=kernel.shape[-1],
    ...                         image_size=(32, 32), builder=...)
    >>> tftransfer.backbones.register_source(NpyImages())
    >>> tftransfer.backbone("kernel.npy").get_config()
    {'source': 'npy', 'arguments': {'handle': 'kernel.npy'}}
    """

    name: str
    form: str
    accepts: str

    @abc.abstractmethod
    def is_supported(self, handle: str, **options: Any) -> bool:
        """Whether this source builds `handle`.

        Args:
            handle: What the user passed to `tftransfer.backbone()`.
            **options: The keyword arguments passed with it (most sources
                decide on `handle` alone).

        Returns:
            `True` to build it; checks only the form, never loads weights.
        """

    @abc.abstractmethod
    def build(self, handle: str, **options: Any) -> Backbone:
        """Builds the `Backbone` for `handle`.

        Declare the options as keyword arguments: the registry names them in
        the `ConfigError` for an unknown one. Called through
        `Backbone.from_source()`, which records `name`, `handle` and the
        options for `get_config()`.

        Args:
            handle: A handle that `is_supported()` accepted, or the one a
                config recorded.
            **options: The source's own keyword arguments.

        Returns:
            A `Backbone`.
        """

    def suggest(self, handle: str) -> list[str]:
        """Handles close to an unsupported `handle` ("did you mean"); none."""
        del handle
        return []

    def check_hubify(self, backbone: Backbone) -> None:
        """Raises `ExportError` if `tftransfer.hubify()` must refuse `backbone`.

        By default every backbone of the source can be written as a TF Hub
        SavedModel (its `build()` gives a Keras layer); sources whose models
        already are TF Hub SavedModels refuse.
        """
        del backbone

    def works_offline(self, handle: str, **options: Any) -> bool:
        """Whether `handle` builds here without a network; `False` if unknown."""
        del handle, options
        return False


def check_pooling(handle: str, pooling: str, choices: tuple[str, ...]) -> str:
    """Checks a backbone's `pooling` against the words it takes.

    Args:
        handle: The backbone, for the message.
        pooling: The word given.
        choices: The words of `tftransfer.vocabulary.POOLINGS` that apply.

    Returns:
        `pooling`.

    Raises:
        ConfigError: naming the vocabulary word to use for an old spelling
            (`"avg"`: `"mean"`, `"cls"`: `"first"`), else the choices.
    """
    if pooling in choices:
        return pooling
    if pooling in _OLD_POOLINGS:
        raise ConfigError(
            f"pooling={pooling!r} for backbone {handle!r} is now spelled "
            f"{_OLD_POOLINGS[pooling]!r} (tftransfer.vocabulary.POOLINGS: "
            f"{POOLINGS}). Pass pooling={_OLD_POOLINGS[pooling]!r}."
        )
    raise ConfigError(
        f"Expected pooling to be one of {choices} for backbone {handle!r}. "
        f"Received: pooling={pooling!r}."
    )


def call_with_options(
    handle: str, function: Callable, *args: Any, **options: Any
) -> Any:
    """Calls `function(*args, **options)`, first checking that it takes
    every keyword in `options`.

    Raises:
        ConfigError: naming `handle` and the keywords `function` takes, for
            an option it does not take (instead of a `TypeError`).
    """
    parameters = list(inspect.signature(function).parameters.values())[len(args) :]
    accepted = [
        parameter.name
        for parameter in parameters
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    takes_any = any(parameter.kind == parameter.VAR_KEYWORD for parameter in parameters)
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        takes = f"takes {accepted}" if accepted else "takes no keyword arguments"
        raise ConfigError(
            f"Backbone {handle!r} {takes}. Received unknown keyword "
            f"arguments: {unknown}."
        )
    return function(*args, **options)


@contextlib.contextmanager
def seeded_initialization(seed: int) -> Iterator[None]:
    """Makes the random initial weights of models built inside deterministic.

    Keras draws the seed of every unseeded initializer from Python's
    `random` module (and unseeded random ops from its global
    `SeedGenerator`). Inside this context both start from `seed`; on exit
    Python's, NumPy's and Keras's random states are put back as they were,
    so the caller's random streams (shuffling, dropout, their own
    `keras.utils.set_random_seed`) are not disturbed.

    Args:
        seed: The seed; the same seed gives the same weights.

    Example:

    >>> with seeded_initialization(0):
    ...     model = keras.applications.MobileNetV2(weights=None)
    """
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator

    python_state, numpy_state = random.getstate(), np.random.get_state()
    generator = global_state.get_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR)
    random.seed(seed)
    np.random.seed(seed)
    global_state.set_global_attribute(
        seed_generator.GLOBAL_SEED_GENERATOR, seed_generator.SeedGenerator(seed)
    )
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        global_state.set_global_attribute(
            seed_generator.GLOBAL_SEED_GENERATOR, generator
        )
