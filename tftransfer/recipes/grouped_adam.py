"""`GroupedAdam`: Adam with its own learning rate for each group of variables."""

from __future__ import annotations

import keras

from tftransfer.errors import ConfigError


class GroupedAdam(keras.optimizers.Adam):
    """Adam with its own learning rate for each group of variables.

    It trains several independent heads in one model (the candidates of the
    head search), each at its own rate: each variable's update uses its
    group's rate, exactly as a separate Adam at that rate would.

    Args:
        groups: `(variables, learning_rate)` pairs; each variable the
            optimizer updates must be in exactly one group.
        **kwargs: passed to `keras.optimizers.Adam` (not `learning_rate`).

    Raises:
        ConfigError: when built, if a variable is in no group or in two.

    Example:

    >>> optimizer = GroupedAdam([(head_a.trainable_variables, 1e-3),
    ...                          (head_b.trainable_variables, 1e-2)])
    """

    def __init__(self, groups, *, name: str = "grouped_adam", **kwargs):
        super().__init__(learning_rate=1.0, name=name, **kwargs)
        self._groups = [(list(variables), float(rate)) for variables, rate in groups]
        self._rates: dict = {}

    def build(self, variables):
        super().build(variables)
        self._rates = {}
        for group, rate in self._groups:
            for variable in group:
                key = self._var_key(variable)
                if key in self._rates:
                    raise ConfigError(
                        f"GroupedAdam: variable {variable.path!r} is in two "
                        "groups; give each variable one learning rate."
                    )
                self._rates[key] = rate
        missing = [v.path for v in variables if self._var_key(v) not in self._rates]
        if missing:
            raise ConfigError(
                f"GroupedAdam: variables {missing} are in no group; add them "
                "to one (with its learning rate)."
            )

    def update_step(self, gradient, variable, learning_rate):
        rate = self._rates[self._var_key(variable)]
        super().update_step(gradient, variable, learning_rate * rate)
