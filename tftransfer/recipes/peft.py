"""Parameter-efficient fine-tuning: which backbone weights phase 2 trains.

`FineTuning(method=...)` trains all of the chosen backbone variables
(`"full"`), only their biases and normalization parameters (`"bitfit"`),
low-rank factors added to the kernels of chosen layers (`"lora"`, through
Keras's own `enable_lora` of `Dense`, `EinsumDense`, `Embedding` and the
convolutions, and `tftransfer.recipes.hub_lora` for the kernel variables of
TF Hub SavedModels), or nothing of the backbone (`"head"`: phase 1 only).
"""

from __future__ import annotations

import re

import keras
import numpy as np

from tftransfer import defaults
from tftransfer.errors import ConfigError
from tftransfer.messages import short_list, short_repr
from tftransfer.recipes import hub_lora
from tftransfer.recipes.optimizers import NO_DECAY_PATTERNS

METHODS = ("full", "lora", "bitfit", "head")

# `lora_targets="auto"`: the attention query and value projections where a
# backbone has them (Hu et al., 2021), else every layer LoRA supports (the
# convolutions of an image backbone).
ATTENTION_TARGETS = (r"(^|/)(query|value)(_dense)?/",)
# `lora_rank="auto"`: 8 (as Hu et al. on attention projections), but 4 where
# every target is a convolution: the thin 1x1 convolutions of a mobile image
# backbone make rank-8 factors 5.0% of EfficientNet-Lite0's weights, rank 4
# 2.6%, at the same test accuracy within 0.3 point (BENCHMARKS.md, PEFT).
AUTO_RANK = 8
CONVOLUTION_RANK = 4


def check_method(method, lora_rank, lora_alpha, lora_targets) -> None:
    """Raises a `ConfigError` for a method or LoRA option out of range.

    Example:

    >>> check_method("lora", 8, 16.0, "auto")
    """
    if method not in METHODS:
        raise ConfigError(
            f"Expected method to be one of {list(METHODS)}. "
            f"Received: method={short_repr(method)}"
        )
    if lora_rank != defaults.AUTO and (
        isinstance(lora_rank, bool) or not isinstance(lora_rank, int) or lora_rank < 1
    ):
        raise ConfigError(
            "Expected lora_rank='auto' or an integer >= 1. "
            f"Received: lora_rank={short_repr(lora_rank)}"
        )
    if lora_alpha is not None and (
        isinstance(lora_alpha, bool)
        or not isinstance(lora_alpha, int | float)
        or lora_alpha <= 0
    ):
        raise ConfigError(
            "Expected lora_alpha > 0 (or None: the rank, a scale of 1). "
            f"Received: lora_alpha={short_repr(lora_alpha)}"
        )
    if lora_targets != defaults.AUTO and (
        not isinstance(lora_targets, list | tuple)
        or not lora_targets
        or not all(isinstance(p, str) for p in lora_targets)
    ):
        raise ConfigError(
            "Expected lora_targets='auto' or a non-empty list of regular "
            "expressions matched against kernel variable paths. Received: "
            f"lora_targets={short_repr(lora_targets)}"
        )


def bitfit_variables(variables: list) -> list:
    """The biases and normalization parameters among `variables` (the
    variables `DiscriminativeAdamW` does not decay), by variable path.

    Example:

    >>> [v.path for v in bitfit_variables(layer.trainable_weights)]
    ['dense/bias', 'layer_normalization/gamma', 'layer_normalization/beta']
    """
    pattern = re.compile("|".join(map(re.escape, NO_DECAY_PATTERNS)))
    return [v for v in variables if pattern.search(variable_path(v))]


def lora_layers(layer: keras.Layer, variables: list, targets) -> list:
    """What LoRA adapts in `layer`: its layers with Keras's `enable_lora`
    whose kernel is one of `variables` (the part `unfreeze` chose), and the
    kernel variables among `variables` of its TF Hub SavedModels
    (`hub_lora.HubKernel`s), those whose path matches `targets` (`"auto"`:
    see `ATTENTION_TARGETS`, else all of them).

    Raises:
        ConfigError: if nothing qualifies.

    Example:

    >>> targets = lora_layers(backbone_layer, backbone_layer.trainable_weights, "auto")
    """
    chosen = {id(v) for v in variables}
    capable = [
        sub
        for sub in layer._flatten_layers(include_self=True, recursive=True)
        if hasattr(sub, "enable_lora")
        and sub.built
        and id(_base_kernel(sub)) in chosen
        and not getattr(sub, "kernel_constraint", None)
    ] + hub_lora.hub_kernels(layer, variables)
    patterns = ATTENTION_TARGETS if targets == defaults.AUTO else targets
    compiled = [re.compile(p) for p in patterns]
    matched = [
        target
        for target in capable
        if any(p.search(_target_path(target)) for p in compiled)
    ]
    if targets == defaults.AUTO and not matched:
        matched = capable
    if not matched:
        paths = [_target_path(target) for target in capable]
        found = (
            f"Kernel paths of the layers it supports: {short_list(paths)}."
            if paths
            else (
                "Among the backbone variables unfreeze chose there is no "
                "kernel of a layer with Keras's enable_lora (Dense, "
                "EinsumDense, Embedding, convolutions) nor a float variable "
                "of two or more dimensions of a TF Hub SavedModel. Use "
                "method='bitfit' or 'full' there."
            )
        )
        raise ConfigError(
            f"method='lora' found no layer to adapt with "
            f"lora_targets={short_repr(targets)}. {found}"
        )
    return matched


def lora_rank(targets: list, rank: int | str) -> int:
    """The rank of LoRA on `targets` (what `lora_layers` returns): `rank`,
    or for `"auto"` `CONVOLUTION_RANK` where every target is a convolution
    kernel, else `AUTO_RANK`.

    Example:

    >>> lora_rank(lora_layers(lite0_layer, lite0_layer.weights, "auto"), "auto")
    4
    """
    if rank != defaults.AUTO:
        return rank
    if all(_is_convolution(target) for target in targets):
        return CONVOLUTION_RANK
    return AUTO_RANK


def _is_convolution(target) -> bool:
    if isinstance(target, hub_lora.HubKernel):
        return len(target.variable.shape) == 4  # [height, width, in, out]
    return isinstance(
        target, keras.layers.Conv1D | keras.layers.Conv2D | keras.layers.Conv3D
    )


def enable_lora(layers: list, rank: int, alpha: float | None, seed: int = 0) -> list:
    """Enables LoRA of `rank` on `layers` (what `lora_layers` returns: their
    kernels freeze); returns the new trainable factors. The first factors
    start from He-uniform values drawn from `seed` (so a run starts the same
    in every process), the second at zero (so the model starts as the
    pretrained one).

    Example:

    >>> factors = enable_lora(lora_layers(backbone_layer, variables, "auto"), 8, 16)
    """
    factors = []
    hub_kernels, hub_seeds = [], []
    for index, target in enumerate(layers):
        if isinstance(target, hub_lora.HubKernel):
            hub_kernels.append(target)
            hub_seeds.append(seed + index)
            continue
        target.enable_lora(
            rank,
            lora_alpha=alpha,
            a_initializer=keras.initializers.HeUniform(seed=seed + index),
        )
        factors += _factor_variables(target)
    return factors + hub_lora.enable_lora(hub_kernels, rank, alpha, hub_seeds)


def lora_enabled(layer: keras.Layer) -> list[keras.Layer]:
    """The layers of `layer` (itself included) with LoRA enabled, TF Hub
    SavedModel layers (`HubLayer`) included."""
    return [
        sub
        for sub in layer._flatten_layers(include_self=True, recursive=True)
        if getattr(sub, "lora_enabled", False) or hub_lora.adapters(sub)
    ]


def lora_factors(layer: keras.Layer) -> dict[int, tuple[np.ndarray, np.ndarray, float]]:
    """The LoRA factors of `layer`, keyed by the position of their kernel
    in `served_weights(layer)`: `{position: (a, b, scale)}`, the kernel's
    change being `scale * a @ b` (reshaped as the kernel).

    Example:

    >>> a, b, scale = lora_factors(backbone_layer)[0]
    """
    positions = {id(v): i for i, (v, _) in enumerate(served_weights(layer))}
    return {
        positions[id(adapter.kernel)]: (
            np.asarray(adapter.a.numpy()),
            np.asarray(adapter.b.numpy()),
            adapter.scale,
        )
        for adapter in _adapters(layer)
    }


def factor_variables(layer: keras.Layer) -> list:
    """The LoRA factor variables of `layer` (Keras's and those of its TF
    Hub SavedModels): what `served_weights` leaves out.

    Example:

    >>> [v.path for v in factor_variables(backbone_layer)][:2]
    ['query/lora_kernel_a', 'query/lora_kernel_b']
    """
    return [v for adapter in _adapters(layer) for v in (adapter.a, adapter.b)]


def served_weights(layer: keras.Layer) -> list[tuple[keras.Variable, np.ndarray]]:
    """`(variable, value)` of each weight of `layer` as a copy of it without
    LoRA has them, in that copy's order: the LoRA factors left out, the
    kernels they adapt with the product merged in.

    Example:

    >>> for target, (source, value) in zip(fresh.weights, served_weights(tuned)):
    ...     target.assign(value)
    """
    merged = {id(a.kernel): hub_lora.merged_value(a) for a in _adapters(layer)}
    factor_ids = {id(v) for v in factor_variables(layer)}
    return [
        (v, merged[id(v)] if id(v) in merged else np.asarray(v.numpy()))
        for v in layer.weights
        if id(v) not in factor_ids
    ]


def variable_path(variable) -> str:
    return getattr(variable, "path", None) or variable.name


def _target_path(target) -> str:
    """The path `lora_targets` is matched against: a LoRA-capable layer's
    kernel path, or a SavedModel kernel's (`hub_lora.HubKernel.path`)."""
    if isinstance(target, hub_lora.HubKernel):
        return target.path
    return variable_path(_base_kernel(target))


def _adapters(layer: keras.Layer) -> list[hub_lora.Adapter]:
    """The kernels LoRA adapts in `layer`: those of Keras's `enable_lora`
    (the kernel is its own frozen value) and those of TF Hub SavedModels."""
    keras_adapters = [
        hub_lora.Adapter(
            _base_kernel(sub),
            _base_kernel(sub),
            *_factor_variables(sub),
            float(sub.lora_alpha / sub.lora_rank),
        )
        for sub in layer._flatten_layers(include_self=True, recursive=True)
        if getattr(sub, "lora_enabled", False)
    ]
    return keras_adapters + hub_lora.adapters(layer)


def _base_kernel(layer: keras.Layer):
    """The weight that Keras's LoRA adapts: the kernel, or an embedding table."""
    if hasattr(layer, "_embeddings"):
        return layer._embeddings
    return getattr(layer, "_kernel", None)


def _factor_variables(layer: keras.Layer) -> tuple:
    if hasattr(layer, "lora_embeddings_a"):
        return layer.lora_embeddings_a, layer.lora_embeddings_b
    return layer.lora_kernel_a, layer.lora_kernel_b
