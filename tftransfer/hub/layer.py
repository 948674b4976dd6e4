"""`HubLayer`: a TF2 reusable SavedModel (TF Hub, Kaggle) as a Keras 3 layer."""

import inspect
import numbers
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import keras
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops that hub models use)
from keras.src.backend import compute_output_spec as trace_output_spec
from keras.src.saving import serialization_lib

from tftransfer.errors import ArgumentError, HandleError, InputSpecError
from tftransfer.hub.resolver import resolve


class SavedModelVariable(keras.Variable):
    """A Keras variable that *is* an existing `tf.Variable`, not a copy of it.

    Keras 3 copies a `tf.Variable` given as initializer. A hub layer needs the
    very variables that the SavedModel's functions read, so that `fit()`
    updates what the model computes with.
    """

    def __init__(self, variable: tf.Variable, trainable: bool):
        self._existing = variable
        super().__init__(
            initializer=lambda shape, dtype: None,
            shape=variable.shape,
            dtype=variable.dtype.name,
            trainable=trainable,
            name=_keras_variable_name(variable.name),
        )

    def _initialize(self, value):
        self._value = self._existing


@keras.saving.register_keras_serializable(package="tftransfer")
class HubLayer(keras.Layer):
    """A TF Hub model (TF2 reusable SavedModel) as a Keras 3 layer.

    The drop-in successor of `tensorflow_hub.KerasLayer`, which only works with
    legacy Keras 2: the arguments have the same names and meanings, so
    migrating is a rename (README, "Migrating from `hub.KerasLayer`", lists
    the few differences). The SavedModel's own variables become the layer's
    weights (no copies): those listed in the object's `trainable_variables`
    are trainable while the layer is, all others (BatchNorm moving
    statistics, lookup state) never are. A frozen layer always runs the model
    in inference mode, so BatchNorm statistics never move; a trainable one
    passes `training` as a Python bool to models whose call takes it, and
    adds the model's `regularization_losses` to the losses of the Keras model
    it is in whenever it is trainable (also when called with
    `training=False`, as fine-tuning with frozen BatchNorm statistics does).

    Output shapes come from the SavedModel's traced functions, so the layer
    works in `keras.layers.TimeDistributed`, in `compute_output_shape()` and
    in `model.summary()`; `output_shape` fills in what the traces leave
    unknown.

    Args:
        handle: a folder, `file://`, `gs://` or TF Hub / Kaggle URL of the
            SavedModel (see `tftransfer.hub.resolve`), or an object already
            loaded with `tf.saved_model.load`.
        trainable: whether the model's trainable variables are trained. A
            layer that calls a `signature` cannot be trainable (signatures
            have no training mode, update ops or regularization losses), and
            a trainable layer over a model without trainable variables warns
            once that it trains nothing.
        arguments: extra keyword arguments for every call of the model.
        signature: the name of a signature to call instead of `__call__`
            (for signature-only SavedModels). Signatures take keyword
            inputs: pass a dict, or a single tensor for a one-input signature.
        output_key: the key of the output to return when the model returns a
            dict (for example `"pooled_output"` of a BERT encoder); an error
            if the output is not a dict. Without it, dict outputs are
            returned whole for `__call__`, and a signature's `"default"` (or
            only) output is returned.
        signature_outputs_as_dict: return all of a signature's outputs as a
            dict. Needs `signature`; excludes `output_key`.
        output_shape: the shape of the output without the batch dimension,
            e.g. `[1280]`, or a nest (list, dict) of such shapes with the
            structure of the output; `None` entries are unknown. It is set
            on the outputs, and `compute_output_shape()` returns it (after
            the input's batch dimension) without tracing the model.
        load_options: `tf.saved_model.LoadOptions`, e.g.
            `experimental_io_device="/job:localhost"` on TPUs.
        **kwargs: base layer arguments (`name`, `dtype`).

    Call arguments:
        inputs: a tensor, a dict of tensors (BERT encoder inputs) or a string
            tensor, as the SavedModel takes them.
        training: Python bool; used only while the layer is trainable.

    Returns:
        The model's output: a tensor, or a dict of them.

    Raises:
        ArgumentError: if `signature_outputs_as_dict` is set without
            `signature` or together with `output_key`, if a signature layer
            is made trainable, if `output_shape` is not a shape (nest), or,
            when called, if `output_key` is set but the output is no dict or
            `output_shape` does not fit the output.
        HandleError: if the SavedModel cannot be loaded or has no such
            signature (or no `__call__`).
        InputSpecError: when called on inputs the SavedModel does not take.

    Example:

    >>> features = tftransfer.HubLayer(
    ...     "https://tfhub.dev/google/imagenet/mobilenet_v2_100_224/feature_vector/5")
    >>> model = keras.Sequential([
    ...     keras.Input((224, 224, 3)), features, keras.layers.Dense(5)])
    >>> model.compile("adam", "sparse_categorical_crossentropy")
    """

    def __init__(
        self,
        handle: Any,
        trainable: bool = False,
        arguments: dict[str, Any] | None = None,
        signature: str | None = None,
        output_key: str | None = None,
        signature_outputs_as_dict: bool = False,
        output_shape: Any = None,
        load_options: tf.saved_model.LoadOptions | None = None,
        **kwargs,
    ):
        super().__init__(trainable=trainable, autocast=False, **kwargs)
        self.handle = handle
        self.arguments = dict(arguments or {})
        self.signature = signature
        self.output_key = output_key
        self.signature_outputs_as_dict = signature_outputs_as_dict
        self._check_output_arguments()
        self._output_shape = _output_shapes(output_shape)
        if trainable:
            self._refuse_trainable_signature()
        self._loaded = _load(handle, load_options)
        self._function = self._find_function()
        self._accepts_training = _accepts_training(self._function, signature)
        self._track_saved_model_variables()
        self._warned_nothing_to_train = False
        if trainable:
            self._warn_if_nothing_to_train()
        self.built = True

    @property
    def resolved_object(self) -> Any:
        """The object that `handle` resolved to, as `hub.KerasLayer` has it.

        What `tf.saved_model.load` returned (or the object given as
        `handle`), with all of the SavedModel's own attributes, for example
        a TF Hub BERT encoder's `resolved_object.vocab_file.asset_path` and
        `resolved_object.do_lower_case`.
        """
        return self._loaded

    @property
    def trainable(self) -> bool:
        """Whether the SavedModel's trainable variables are trained.

        A layer that calls a signature stays frozen: setting `True` warns
        and leaves it `False` (the constructor refuses `trainable=True` with
        an `ArgumentError`, as `hub.KerasLayer` does; the setter does not
        raise, so that `model.trainable = True` still unfreezes the rest of
        a model). Setting `True` warns (once) if the model has no trainable
        variables.
        """
        return keras.Layer.trainable.fget(self)

    @trainable.setter
    def trainable(self, value: bool) -> None:
        if value and self.signature is not None:
            warnings.warn(
                f"The HubLayer calling the signature {self.signature!r} stays "
                "frozen: signatures cannot be trained (no training mode, no "
                "update ops). Load the model's `__call__` (no signature=) to "
                "fine-tune it.",
                stacklevel=2,
            )
            value = False
        keras.Layer.trainable.fset(self, value)
        if value:
            self._warn_if_nothing_to_train()

    def _check_output_arguments(self) -> None:
        if self.output_key is not None and self.signature_outputs_as_dict:
            raise ArgumentError(
                "Expected at most one of output_key= (return one output) and "
                "signature_outputs_as_dict=True (return all outputs as a "
                f"dict). Received: output_key={self.output_key!r}, "
                "signature_outputs_as_dict=True."
            )
        if self.signature_outputs_as_dict and self.signature is None:
            raise ArgumentError(
                "signature_outputs_as_dict=True applies to the outputs of a "
                "signature, but no signature= was given. Pass signature= the "
                "name of one of the SavedModel's signatures, or leave out "
                "signature_outputs_as_dict (a `__call__` that returns a dict "
                "returns it whole). Received: signature=None."
            )

    def _refuse_trainable_signature(self) -> None:
        if self.signature is not None:
            raise ArgumentError(
                f"A HubLayer that calls the signature {self.signature!r} "
                "cannot be trainable: signatures have no training mode, no "
                "update ops (BatchNorm statistics) and no regularization "
                "losses, so fine-tuning through them goes wrong. Received: "
                "trainable=True. Keep the layer frozen, or fine-tune through "
                "the SavedModel's `__call__` (leave out signature=)."
            )

    def _warn_if_nothing_to_train(self) -> None:
        if self.trainable_weights or self._warned_nothing_to_train:
            return
        self._warned_nothing_to_train = True
        warnings.warn(
            f"The HubLayer of the SavedModel {self._describe_handle()} is "
            "trainable but has no trainable variables (the SavedModel's "
            "`trainable_variables` is empty or missing), so training does not "
            "change it.",
            stacklevel=3,
        )

    def _find_function(self) -> Callable:
        if self.signature is not None:
            signatures = self._loaded.signatures
            if self.signature not in signatures:
                raise HandleError(
                    f"The SavedModel {self._describe_handle()} has no signature "
                    f"{self.signature!r}. It has: {sorted(signatures)}."
                )
            return signatures[self.signature]
        if not callable(self._loaded):
            hint = (
                f" Pass signature= one of {sorted(self._loaded.signatures)}."
                if self._loaded.signatures
                else ""
            )
            raise HandleError(
                f"The SavedModel {self._describe_handle()} is not a TF2 reusable "
                f"SavedModel: it has no `__call__` function.{hint}"
            )
        return self._loaded.__call__

    def _track_saved_model_variables(self) -> None:
        if self.signature is not None:
            # A signature layer is never trainable, so neither are its variables.
            variables = self._function.variables
            trainable_ids = set()
        else:
            variables = getattr(self._loaded, "variables", [])
            trainable_ids = {
                id(v) for v in getattr(self._loaded, "trainable_variables", [])
            }
        self._saved_model_variables = []
        for variable in variables:
            wrapped = SavedModelVariable(variable, id(variable) in trainable_ids)
            self._track_variable(wrapped)
            self._saved_model_variables.append(wrapped)

    def call(self, inputs, training=None):
        if self.trainable:
            # Whenever the weights are trained, also in fine-tuning recipes
            # that run the backbone in inference mode (frozen BatchNorm).
            for regularization_loss in getattr(
                self._loaded, "regularization_losses", []
            ):
                self.add_loss(regularization_loss())
        training = bool(training) and self.trainable
        try:
            if self.signature is not None:
                outputs = self._call_named_signature(inputs)
            elif self._accepts_training:
                outputs = self._function(inputs, training=training, **self.arguments)
            else:
                outputs = self._function(inputs, **self.arguments)
        except (ValueError, TypeError) as error:
            raise InputSpecError(
                f"The SavedModel {self._describe_handle()} cannot be called on "
                f"the inputs given. Expected {self._expected_inputs()}. "
                f"Received: inputs={_describe_structure(inputs)}"
            ) from error
        return self._apply_output_shape(self._select_output(outputs))

    def _call_named_signature(self, inputs):
        if isinstance(inputs, dict):
            return self._function(**inputs, **self.arguments)
        names = self._signature_input_names()
        if len(names) != 1:
            raise TypeError(f"signature takes {len(names)} inputs")
        return self._function(**{names[0]: inputs}, **self.arguments)

    def _signature_input_names(self) -> list[str]:
        return [
            name
            for name in self._function.structured_input_signature[1]
            if name not in self.arguments
        ]

    def _select_output(self, outputs):
        if self.output_key is not None:
            if not isinstance(outputs, dict):
                raise ArgumentError(
                    f"output_key={self.output_key!r} picks an entry of a dict "
                    f"output, but the SavedModel {self._describe_handle()} "
                    f"returns {_describe_structure(outputs)}. Leave out "
                    "output_key."
                )
            if self.output_key not in outputs:
                raise InputSpecError(
                    f"The SavedModel {self._describe_handle()} has no output "
                    f"{self.output_key!r}. Its outputs are: {sorted(outputs)}. "
                    "Pass one of them as output_key."
                )
            return outputs[self.output_key]
        if (
            not isinstance(outputs, dict)
            or self.signature is None
            or self.signature_outputs_as_dict
        ):
            return outputs
        if "default" in outputs:
            return outputs["default"]
        if len(outputs) == 1:
            return next(iter(outputs.values()))
        raise InputSpecError(
            f"The signature {self.signature!r} of {self._describe_handle()} has "
            f"several outputs {sorted(outputs)}: pass output_key= one of them, "
            "or signature_outputs_as_dict=True."
        )

    def _apply_output_shape(self, outputs):
        if self._output_shape is None:
            return outputs
        try:
            tf.nest.assert_same_structure(
                outputs, self._output_shape, check_types=False
            )
            for tensor, shape in zip(
                tf.nest.flatten(outputs),
                tf.nest.flatten(self._output_shape),
                strict=True,
            ):
                tensor.set_shape(tf.TensorShape([None]).concatenate(shape))
        except (TypeError, ValueError) as error:
            raise ArgumentError(
                f"The output of the SavedModel {self._describe_handle()} does "
                "not fit output_shape (the shape, or nest of shapes, without "
                "the batch dimension). Expected outputs of shape "
                f"{_shapes_to_config(self._output_shape)} after the batch "
                f"dimension. Received: outputs={_describe_structure(outputs)}"
            ) from error
        return outputs

    def _expected_inputs(self) -> str:
        if self.signature is not None:
            specs = [self._function.structured_input_signature]
        else:
            specs = [
                function.structured_input_signature
                for function in self._traced_functions()
            ]
        described = {_describe_structure(args[0] if args else kw) for args, kw in specs}
        return " or ".join(sorted(described)) or "the inputs the model was traced for"

    def _traced_functions(self) -> list:
        """The concrete functions of a restored `__call__`; none for a live
        `tf.function` given as handle (its traces are not listed)."""
        return list(getattr(self._function, "concrete_functions", ()))

    def _input_specs(self) -> list[Any]:
        """The input structures (nests of `tf.TensorSpec`) the model was traced for."""
        if self.signature is None:
            return [
                args[0]
                for args, _ in (
                    function.structured_input_signature
                    for function in self._traced_functions()
                )
                if args
            ]
        specs = self._function.structured_input_signature[1]
        names = self._signature_input_names()
        by_name = {name: specs[name] for name in names}
        # A one-input signature also takes its input as a single tensor.
        return [by_name, specs[names[0]]] if len(names) == 1 else [by_name]

    def _describe_handle(self) -> str:
        return repr(self.handle) if isinstance(self.handle, str) else "given"

    def compute_output_spec(self, inputs, training=None):
        # Keras traces `call` on symbolic tensors (signatures too), in
        # inference mode so that nothing is updated.
        return trace_output_spec(self.call, inputs, training=False)

    def compute_output_shape(self, input_shape):
        """The output shape(s) for inputs of shape `input_shape`.

        With `output_shape`, that shape (nest) after the input's batch
        dimension. Otherwise the model is traced on symbolic inputs of
        `input_shape` with the dtypes of the SavedModel's input signature.

        Args:
            input_shape: a shape tuple, or a nest (dict, list) of them like
                the inputs.

        Returns:
            A shape tuple, or a nest of them like the outputs.

        Raises:
            InputSpecError: if no input signature of the SavedModel takes
                inputs of `input_shape`.
        """
        if self._output_shape is not None:
            batch = _first_dimension(input_shape)
            return tf.nest.map_structure(
                lambda shape: (batch, *shape.as_list()), self._output_shape
            )
        for spec in self._input_specs():
            inputs = _symbolic_inputs(spec, input_shape)
            if inputs is not None:
                outputs = self.compute_output_spec(inputs)
                return tf.nest.map_structure(lambda x: tuple(x.shape), outputs)
        raise InputSpecError(
            f"Cannot compute the output shape of the SavedModel "
            f"{self._describe_handle()} for input_shape={input_shape!r}. "
            f"Expected {self._expected_inputs()}. Pass output_shape= to "
            "state the output shape."
        )

    def get_config(self) -> dict[str, Any]:
        if not isinstance(self.handle, str):
            raise HandleError(
                "A HubLayer made from a loaded object cannot be saved: its "
                "config must name the model. Create it from a handle or path."
            )
        config = super().get_config()
        config.update(
            handle=self.handle,
            arguments=self.arguments,
            signature=self.signature,
            output_key=self.output_key,
            signature_outputs_as_dict=self.signature_outputs_as_dict,
            output_shape=_shapes_to_config(self._output_shape),
        )
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "HubLayer":
        if serialization_lib.in_safe_mode():
            raise HandleError(
                "Loading a HubLayer loads the SavedModel "
                f"{config.get('handle')!r}, whose graph may run arbitrary "
                "TensorFlow ops, so Keras safe mode refuses it. If you trust "
                "the model, load with `keras.saving.load_model(path, "
                "safe_mode=False)` or call "
                "`keras.config.enable_unsafe_deserialization()` first."
            )
        return cls(**config)


def _load(handle: Any, load_options: tf.saved_model.LoadOptions | None):
    if not isinstance(handle, str):
        return handle
    path = resolve(handle)
    try:
        return tf.saved_model.load(path, options=load_options)
    except (tf.errors.OpError, ValueError, KeyError) as error:
        message = getattr(error, "message", str(error))
        raise HandleError(
            f"Could not load the SavedModel {handle!r} from {path!r}: {message}. "
            "Check that it is a TF2 SavedModel (TF1 hub.Module formats are not "
            "supported) and that the packages its ops need are installed "
            "(e.g. tensorflow-text)."
        ) from error


def _accepts_training(function: Callable, signature: str | None) -> bool:
    if signature is not None:
        return False
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
    return "training" in parameters


def _keras_variable_name(name: str) -> str:
    # Keras variable names cannot contain "/"; drop the ":0" suffix too.
    return name.split(":")[0].replace("/", "_")


def _describe_structure(structure) -> str:
    if isinstance(structure, dict):
        items = ", ".join(
            f"{key!r}: {_describe_structure(value)}"
            for key, value in sorted(structure.items())
        )
        return "{" + items + "}"
    if isinstance(structure, list | tuple):
        return "[" + ", ".join(_describe_structure(item) for item in structure) + "]"
    dtype = getattr(structure, "dtype", None)
    shape = getattr(structure, "shape", None)
    if dtype is not None and shape is not None:
        dtype_name = getattr(dtype, "name", str(dtype))
        return f"{dtype_name} tensor of shape {tuple(shape)}"
    return repr(structure)


def _output_shapes(output_shape: Any) -> Any:
    """`output_shape=` as a nest of `tf.TensorShape` (`None` if not given)."""
    if output_shape is None:
        return None
    try:
        return _to_shapes(output_shape)
    except (TypeError, ValueError) as error:
        raise ArgumentError(
            "Expected output_shape= to be a shape without the batch dimension "
            "(a list of ints or None, e.g. [1280]) or a nest (list, dict) of "
            f"them. Received: output_shape={output_shape!r}"
        ) from error


def _to_shapes(nest: Any) -> Any:
    if isinstance(nest, Mapping):
        return {key: _to_shapes(value) for key, value in nest.items()}
    if isinstance(nest, tf.TensorShape):
        if nest.rank is None:
            raise ValueError("a shape of unknown rank")
        return nest
    if _is_shape(nest):
        return tf.TensorShape(list(nest))
    if isinstance(nest, list | tuple) and nest:
        return [_to_shapes(item) for item in nest]
    raise TypeError(f"not a shape: {nest!r}")


def _is_shape(value: Any) -> bool:
    """Whether `value` is a shape tuple or list (ints >= 0 or None)."""
    if isinstance(value, tf.TensorShape):
        return True
    return isinstance(value, list | tuple) and all(
        dimension is None
        or (
            isinstance(dimension, numbers.Integral)
            and not isinstance(dimension, bool)
            and dimension >= 0
        )
        for dimension in value
    )


def _shapes_to_config(shapes: Any) -> Any:
    """A nest of `tf.TensorShape` as JSON-serializable lists (`None` stays)."""
    if shapes is None:
        return None
    if isinstance(shapes, tf.TensorShape):
        return shapes.as_list()
    if isinstance(shapes, Mapping):
        return {key: _shapes_to_config(value) for key, value in shapes.items()}
    return [_shapes_to_config(shape) for shape in shapes]


def _first_dimension(input_shape: Any) -> int | None:
    """The batch dimension of `input_shape`: that of its first input."""
    while not _is_shape(input_shape):
        if isinstance(input_shape, Mapping):
            input_shape = input_shape[sorted(input_shape)[0]]
        else:
            input_shape = input_shape[0]
    return next(iter(input_shape), None)


def _symbolic_inputs(spec: Any, input_shape: Any) -> Any:
    """Symbolic inputs of `input_shape` with `spec`'s dtypes, or `None`.

    `None` if `input_shape` does not have the structure of `spec` (a nest of
    `tf.TensorSpec`) or a shape that `spec` does not take.
    """
    if isinstance(spec, tf.TensorSpec):
        if not _is_shape(input_shape):
            return None
        shape = tf.TensorShape(list(input_shape))
        if not spec.shape.is_compatible_with(shape):
            return None
        return keras.KerasTensor(tuple(shape.as_list()), dtype=spec.dtype.name)
    if isinstance(spec, Mapping):
        if not isinstance(input_shape, Mapping) or set(input_shape) != set(spec):
            return None
        inputs = {key: _symbolic_inputs(spec[key], input_shape[key]) for key in spec}
        return None if any(x is None for x in inputs.values()) else inputs
    if isinstance(spec, list | tuple):
        if (
            _is_shape(input_shape)
            or not isinstance(input_shape, list | tuple)
            or len(input_shape) != len(spec)
        ):
            return None
        inputs = [
            _symbolic_inputs(s, shape)
            for s, shape in zip(spec, input_shape, strict=True)
        ]
        return None if any(x is None for x in inputs) else inputs
    return None
