"""LoRA on TF Hub SavedModels (`HubLayer`), without rewriting their graphs.

A `HubLayer` calls the SavedModel's traced functions, which read the
model's own variables: there is no kernel to replace by `W0 + a @ b` inside
the graph. So before each call of the function every adapted kernel
variable `W` is assigned `W0 + scale * a @ b` (`W0`: a frozen copy of the
pretrained value), and the factors' gradients are taken through that sum:
the function runs under a `tf.custom_gradient` whose gradient with respect
to the product is the gradient of the loss with respect to `W`. The
SavedModel stays as it was written; the cost over BitFit is one copy of
each adapted kernel (`W0`), its assignment each step and the gradient of
each adapted kernel (see docs/recipes.md, "Parameter-efficient
fine-tuning"). The factors are all that trains in an adapted SavedModel:
its other variables get no gradient through the function.

Under a `tf.distribute` strategy the assignment is a mirrored update in the
cross-replica context (`merge_call`): every replica's copy of `W` gets the
same sum. The SavedModel's `regularization_losses` read `W` but do not
train the factors.
"""

from __future__ import annotations

import contextlib
import dataclasses

import keras
import numpy as np
import tensorflow as tf

from tftransfer.hub import HubLayer

# `lora_targets="auto"` on a SavedModel with no attention query or value
# kernel adapts every float variable of at least two dimensions (dense and
# convolution kernels, embedding tables).
_MIN_KERNEL_RANK = 2


@dataclasses.dataclass(frozen=True)
class HubKernel:
    """A kernel variable of a `HubLayer`'s SavedModel that LoRA can adapt.

    `path` is the layer's name and the variable's name in the SavedModel
    (e.g. `"hub_layer/transformer/layer_0/self_attention/query/kernel"`):
    what `lora_targets` is matched against.
    """

    layer: HubLayer
    variable: keras.Variable

    @property
    def path(self) -> str:
        return f"{self.layer.name}/{self.variable.value.name.split(':')[0]}"


@dataclasses.dataclass(frozen=True)
class Adapter:
    """An adapted kernel: `kernel` computes as `frozen + scale * a @ b`
    (the product reshaped as the kernel)."""

    kernel: keras.Variable
    frozen: tf.Variable | keras.Variable
    a: keras.Variable
    b: keras.Variable
    scale: float


def hub_kernels(layer: keras.Layer, variables: list) -> list[HubKernel]:
    """The kernels LoRA can adapt in the `HubLayer`s of `layer` (itself
    included): float variables of two or more dimensions among
    `variables` (not depthwise kernels, whose last dimension is 1), in the
    layers that have no LoRA yet.

    Example:

    >>> [k.path for k in hub_kernels(hub_layer, hub_layer.trainable_weights)]
    ['hub_layer/kernel']
    """
    chosen = {id(v) for v in variables}
    return [
        HubKernel(sub, variable)
        for sub in layer._flatten_layers(include_self=True, recursive=True)
        if isinstance(sub, HubLayer) and not adapters(sub)
        for variable in sub.weights
        if id(variable) in chosen
        and len(variable.shape) >= _MIN_KERNEL_RANK
        # A depthwise kernel [h, w, channels, 1] has nothing low-rank to
        # adapt (Keras's DepthwiseConv2D has no enable_lora either).
        and variable.shape[-1] > 1
        and keras.backend.is_float_dtype(variable.dtype)
    ]


def enable_lora(
    kernels: list[HubKernel], rank: int, alpha: float | None, seeds: list[int]
) -> list[keras.Variable]:
    """Adapts `kernels` with LoRA of `rank`; returns the new trainable
    factors. Each kernel `W` of shape `[..., n]` gets `a` of shape
    `[..., rank]` (He-uniform from its entry of `seeds`) and `b` of shape
    `[rank, n]` (zeros: the model starts as the pretrained one), the
    factors of Keras's own LoRA; the product is scaled by `alpha / rank`
    (`alpha=None`: 1). The factors are weights of the kernel's `HubLayer`
    (checkpointed with the model), created in the current strategy scope.

    Example:

    >>> factors = enable_lora(hub_kernels(hub_layer, chosen), 8, 16, [0])
    """
    scale = 1.0 if alpha is None else alpha / rank
    factors = []
    for layer in {id(k.layer): k.layer for k in kernels}.values():
        layer_adapters = []
        layer._tracker.unlock()
        for kernel, seed in zip(kernels, seeds, strict=True):
            if kernel.layer is not layer:
                continue
            variable = kernel.variable
            a = layer.add_weight(
                name=f"{variable.name}_lora_a",
                shape=(*variable.shape[:-1], rank),
                initializer=keras.initializers.HeUniform(seed=seed),
            )
            b = layer.add_weight(
                name=f"{variable.name}_lora_b",
                shape=(rank, variable.shape[-1]),
                initializer="zeros",
            )
            frozen = tf.Variable(
                variable.value.read_value(),
                trainable=False,
                name=f"{variable.name}_pretrained",
            )
            layer_adapters.append(Adapter(variable, frozen, a, b, scale))
            factors += [a, b]
        layer._tracker.lock()
        layer._function = _LoRAFunction(layer._function, layer_adapters)
    return factors


def adapters(layer: keras.Layer) -> list[Adapter]:
    """The adapted kernels of the `HubLayer`s of `layer` (itself included)."""
    return [
        adapter
        for sub in layer._flatten_layers(include_self=True, recursive=True)
        if isinstance(sub, HubLayer) and isinstance(sub._function, _LoRAFunction)
        for adapter in sub._function.adapters
    ]


class _LoRAFunction:
    """A `HubLayer`'s function, run with each adapted kernel set to
    `frozen + scale * a @ b`; the gradient of the loss with respect to the
    kernel is the gradient with respect to that product."""

    def __init__(self, function, adapters: list[Adapter]):
        self.function = function
        self.adapters = adapters

    def __getattr__(self, name):
        # The traces (`concrete_functions`, input signatures) the HubLayer
        # reads for shapes and error messages.
        return getattr(self.function, name)

    def __call__(self, inputs, **kwargs):
        products = [
            adapter.scale
            * tf.reshape(
                keras.ops.matmul(adapter.a.value, adapter.b.value),
                adapter.kernel.shape,
            )
            for adapter in self.adapters
        ]
        if tf.distribute.in_cross_replica_context():
            # Keras traces shapes in a strategy's scope: nothing to train.
            for adapter, product in zip(self.adapters, products, strict=True):
                adapter.kernel.value.assign(adapter.frozen + product)
            return self.function(inputs, **kwargs)
        flat_inputs = tf.nest.flatten(inputs)
        count = len(flat_inputs)
        structure = []

        @tf.custom_gradient
        def call(*tensors):
            for adapter, product in zip(self.adapters, tensors[count:], strict=True):
                _assign(adapter.kernel.value, adapter.frozen + product)
            outputs, gradient = self._differentiable_call(
                lambda flat: self.function(
                    tf.nest.pack_sequence_as(inputs, flat), **kwargs
                ),
                list(tensors[:count]),
            )
            structure.append(outputs)
            return tf.nest.flatten(outputs), gradient

        flat_outputs = call(*flat_inputs, *products)
        return tf.nest.pack_sequence_as(structure[-1], flat_outputs)

    def _differentiable_call(self, function, flat: list):
        """`function(flat)`, and the gradient function of `tf.custom_gradient`
        that differentiates it with respect to the float tensors of `flat`
        and the adapted kernels (none for the other variables it reads)."""
        kernels = [adapter.kernel.value for adapter in self.adapters]
        differentiable = [x for x in flat if x.dtype.is_floating]
        # In a graph (Keras's traced train step) `tf.gradients`
        # differentiates the call; eagerly, a tape of the inputs and adapted
        # kernels. A tape in a graph would have TensorFlow keep the
        # function's intermediates for two tapes (the outer one watches the
        # SavedModel's variables too): on a MiniLM-sized model, 11% more CPU
        # time and 22% more peak memory.
        tape = (
            tf.GradientTape(watch_accessed_variables=False)
            if tf.executing_eagerly()
            else None
        )
        with tape or contextlib.nullcontext():
            if tape:
                tape.watch(differentiable + kernels)
            outputs = function(flat)
        flat_outputs = tf.nest.flatten(outputs)

        def gradient(*upstream, variables=()):
            pairs = [
                (y, tf.zeros_like(y) if g is None else g)
                for y, g in zip(flat_outputs, upstream, strict=True)
                if y.dtype.is_floating
            ]
            ys, grad_ys = [y for y, _ in pairs], [g for _, g in pairs]
            sources = differentiable + kernels
            if tape:
                grads = tape.gradient(ys, sources, output_gradients=grad_ys)
            else:
                grads = tf.gradients(ys, sources, grad_ys=grad_ys)
            count = len(differentiable)
            to_inputs = dict(zip(map(id, differentiable), grads[:count], strict=True))
            to_kernels = zip(grads[count:], kernels, strict=True)
            return (
                [to_inputs.get(id(x)) for x in flat]
                + [_dense(g, kernel) for g, kernel in to_kernels],
                [None] * len(variables),
            )

        return outputs, gradient


def _assign(variable: tf.Variable, value: tf.Tensor) -> None:
    """Assigns `value` (the same in every replica) to `variable`, a
    mirrored variable under a strategy: in the cross-replica context."""
    if not tf.distribute.has_strategy():
        variable.assign(value)
        return

    def update(strategy, value):
        strategy.extended.update(variable, lambda v, x: v.assign(x), args=(value,))

    tf.distribute.get_replica_context().merge_call(update, args=(value,))


def _dense(gradient, kernel: tf.Variable) -> tf.Tensor:
    """The gradient of an adapted kernel as a dense tensor (an embedding
    table's gradient comes as `IndexedSlices`); zeros if unused."""
    if gradient is None:
        return tf.zeros_like(kernel)
    return tf.convert_to_tensor(gradient)


def merged_value(adapter: Adapter) -> np.ndarray:
    """The value `adapter`'s kernel computes with: `frozen + scale * a @ b`."""
    return merged(
        np.asarray(adapter.frozen.numpy()),
        adapter.a.numpy(),
        adapter.b.numpy(),
        adapter.scale,
    )


def merged(value: np.ndarray, a, b, scale: float) -> np.ndarray:
    """`value + scale * a @ b` (the product reshaped as `value`), in
    `value`'s dtype: a LoRA-adapted kernel, Keras's or a SavedModel's.

    Example:

    >>> merged(np.zeros((2, 2), "float32"), np.ones((2, 1)), np.ones((1, 2)), 0.5)
    array([[0.5, 0.5],
           [0.5, 0.5]], dtype=float32)
    """
    product = np.asarray(a) @ np.asarray(b)
    return (value + scale * product.reshape(value.shape)).astype(value.dtype)
