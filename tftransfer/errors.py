"""The errors that tftransfer raises.

Every error is a `TFTransferError`, so `except tftransfer.TFTransferError`
catches them all. Each one is also the built-in exception that describes it
(`ValueError`, `FileNotFoundError`, ...), so code written against the
built-ins keeps working. Messages name the offending handle, file, field or
value and say how to fix it.
"""


class TFTransferError(Exception):
    """Base class of every error raised by tftransfer."""


class HandleError(TFTransferError, ValueError):
    """A model handle cannot be resolved or does not hold a usable model."""


class HandleNotFoundError(HandleError, FileNotFoundError):
    """A model handle points to a path that does not exist."""


class InputSpecError(TFTransferError, ValueError):
    """A layer or model was called with inputs it does not accept."""


class ArgumentError(TFTransferError, ValueError):
    """Arguments conflict with each other or with the model they are used with."""


class DataError(TFTransferError, ValueError):
    """A dataset is missing, malformed or unsuitable for the requested split."""


class ConfigError(TFTransferError, ValueError):
    """A recipe file or setting is invalid."""


class TrainingError(TFTransferError, RuntimeError):
    """Training cannot continue (for example, the loss became NaN)."""


class ExportError(TFTransferError, RuntimeError):
    """A model cannot be exported or verified."""


class DataNotFoundError(DataError, FileNotFoundError):
    """A dataset file, folder or prepared TFDS dataset does not exist."""
