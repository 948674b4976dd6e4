"""`HubLayer`: a TF2 reusable SavedModel (TF Hub, Kaggle) as a Keras 3 layer."""

import inspect
from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf
import tensorflow_text  # noqa: F401  (registers the TF Text ops that hub models use)
from keras.src.saving import serialization_lib

from tftransfer.errors import HandleError, InputSpecError
from tftransfer.hub.resolve import resolve


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
    legacy Keras 2: the arguments have the same names, so migrating is a
    rename. The SavedModel's own variables become the layer's weights (no
    copies): those listed in the object's `trainable_variables` are trainable
    while the layer is, all others (BatchNorm moving statistics, lookup state)
    never are. A frozen layer always runs the model in inference mode, so
    BatchNorm statistics never move; a trainable one passes `training` as a
    Python bool to models whose call takes it, and adds the model's
    `regularization_losses` to the losses of the Keras model it is in
    whenever it is trainable (also when called with `training=False`, as
    fine-tuning with frozen BatchNorm statistics does).

    Args:
        handle: a folder, `file://`, `gs://` or TF Hub / Kaggle URL of the
            SavedModel (see `tftransfer.hub.resolve`), or an object already
            loaded with `tf.saved_model.load`.
        trainable: whether the model's trainable variables are trained.
        arguments: extra keyword arguments for every call of the model.
        signature: the name of a signature to call instead of `__call__`
            (for signature-only SavedModels). Signatures take keyword
            inputs: pass a dict, or a single tensor for a one-input signature.
        output_key: the key of the output to return when the model returns a
            dict (for example `"pooled_output"` of a BERT encoder). Without it,
            dict outputs are returned whole for `__call__`, and a signature's
            `"default"` (or only) output is returned.
        signature_outputs_as_dict: return a signature's outputs as a dict.
        load_options: `tf.saved_model.LoadOptions`, e.g.
            `experimental_io_device="/job:localhost"` on TPUs.
        **kwargs: base layer arguments (`name`, `dtype`).

    Call arguments:
        inputs: a tensor, a dict of tensors (BERT encoder inputs) or a string
            tensor, as the SavedModel takes them.
        training: Python bool; used only while the layer is trainable.

    Returns:
        The model's output: a tensor, or a dict of them.

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
        load_options: tf.saved_model.LoadOptions | None = None,
        **kwargs,
    ):
        super().__init__(trainable=trainable, autocast=False, **kwargs)
        self.handle = handle
        self.arguments = dict(arguments or {})
        self.signature = signature
        self.output_key = output_key
        self.signature_outputs_as_dict = signature_outputs_as_dict
        self._loaded = _load(handle, load_options)
        self._function = self._find_function()
        self._accepts_training = _accepts_training(self._function, signature)
        self._track_saved_model_variables()
        self.built = True

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
            variables = self._function.variables
            trainable_ids = {id(v) for v in self._function.trainable_variables}
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
        return self._select_output(outputs)

    def _call_named_signature(self, inputs):
        if isinstance(inputs, dict):
            return self._function(**inputs, **self.arguments)
        names = list(self._function.structured_input_signature[1])
        if len(names) != 1:
            raise TypeError(f"signature takes {len(names)} inputs")
        return self._function(**{names[0]: inputs}, **self.arguments)

    def _select_output(self, outputs):
        if not isinstance(outputs, dict):
            return outputs
        if self.output_key is not None:
            if self.output_key not in outputs:
                raise InputSpecError(
                    f"The SavedModel {self._describe_handle()} has no output "
                    f"{self.output_key!r}. Its outputs are: {sorted(outputs)}. "
                    "Pass one of them as output_key."
                )
            return outputs[self.output_key]
        if self.signature is None or self.signature_outputs_as_dict:
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

    def _expected_inputs(self) -> str:
        if self.signature is not None:
            specs = [self._function.structured_input_signature]
        else:
            specs = [
                function.structured_input_signature
                for function in self._function.concrete_functions
            ]
        described = {_describe_structure(args[0] if args else kw) for args, kw in specs}
        return " or ".join(sorted(described))

    def _describe_handle(self) -> str:
        return repr(self.handle) if isinstance(self.handle, str) else "given"

    def compute_output_spec(self, inputs, training=None):
        # Keras traces `call` on symbolic tensors; signatures are traced too.
        return super().compute_output_spec(inputs, training=False)

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
