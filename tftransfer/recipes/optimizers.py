"""AdamW with a lower learning rate for the backbone than for the head."""

from __future__ import annotations

import re

import keras

from tftransfer.errors import ConfigError

NO_DECAY_PATTERNS = (
    "bias",
    "beta",
    "gamma",
    "norm",
    "moving_",
    "LayerNorm",
    "batch_norm",
)


@keras.saving.register_keras_serializable(package="tftransfer")
class DiscriminativeAdamW(keras.optimizers.Adam):
    """AdamW whose learning rate is scaled down for the backbone's variables.

    Each update of a backbone variable uses `learning_rate *
    backbone_lr_scale`; head variables use `learning_rate`. Weight decay is
    decoupled (as in AdamW) and scaled by the same effective learning rate;
    biases and normalization parameters (names matching `no_decay`) are not
    decayed.

    Args:
        learning_rate: the head's learning rate: a float or a
            `keras.optimizers.schedules.LearningRateSchedule`.
        backbone_variables: the backbone's trainable variables.
        backbone_lr_scale: backbone learning rate / head learning rate.
        weight_decay: decoupled weight decay coefficient.
        no_decay: substrings of variable paths excluded from weight decay.
        **kwargs: passed to `keras.optimizers.Adam` (for example
            `global_clipnorm`).

    Example:

    >>> optimizer = DiscriminativeAdamW(
    ...     1e-3, backbone_variables=backbone.trainable_variables,
    ...     backbone_lr_scale=0.1, weight_decay=1e-2, global_clipnorm=1.0)
    """

    def __init__(
        self,
        learning_rate=1e-3,
        *,
        backbone_variables=(),
        backbone_lr_scale: float = 0.1,
        weight_decay: float = 1e-2,
        no_decay: tuple[str, ...] = NO_DECAY_PATTERNS,
        name: str = "discriminative_adamw",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if backbone_lr_scale < 0.0:
            raise ConfigError(
                "Expected backbone_lr_scale >= 0. "
                f"Received: backbone_lr_scale={backbone_lr_scale}"
            )
        self.backbone_lr_scale = backbone_lr_scale
        self.decoupled_weight_decay = weight_decay
        self.no_decay = tuple(no_decay)
        self._backbone_variables = list(backbone_variables)
        self._backbone_keys: set = set()
        self._decay_keys: set = set()

    def build(self, variables):
        super().build(variables)
        self._backbone_keys = {self._var_key(v) for v in self._backbone_variables}
        pattern = (
            re.compile("|".join(map(re.escape, self.no_decay)))
            if self.no_decay
            else None
        )
        self._decay_keys = {
            self._var_key(v)
            for v in variables
            if pattern is None or not pattern.search(getattr(v, "path", v.name))
        }

    def update_step(self, gradient, variable, learning_rate):
        key = self._var_key(variable)
        if key in self._backbone_keys:
            learning_rate = learning_rate * self.backbone_lr_scale
        if self.decoupled_weight_decay and key in self._decay_keys:
            decay = keras.ops.cast(
                learning_rate * self.decoupled_weight_decay, variable.dtype
            )
            self.assign_sub(variable, variable * decay)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {
            **super().get_config(),
            "backbone_lr_scale": self.backbone_lr_scale,
            "weight_decay": self.decoupled_weight_decay,
            "no_decay": list(self.no_decay),
        }
