"""`HubTextPreprocessor`: raw strings to encoder inputs with a TF Hub preprocessor."""

from __future__ import annotations

import tensorflow as tf

from tftransfer.errors import InputSpecError


class HubTextPreprocessor(tf.Module):
    """Raw strings to encoder inputs with a TF Hub BERT preprocessor.

    Calls the preprocessor's `tokenize` and then `bert_pack_inputs` with
    `seq_length`, so any length works (the preprocessor's default call is
    fixed at the length it was exported with). With `path=None` strings pass
    through unchanged, for encoders that take raw text.

    Args:
        path: Local directory of the preprocessor SavedModel, or `None`.
        seq_length: Tokens per example.

    Example:

    >>> preprocess = HubTextPreprocessor(path, seq_length=64)
    >>> preprocess(tf.constant(["hello world"]))["input_word_ids"].shape
    TensorShape([1, 64])
    """

    def __init__(self, path: str | None, seq_length: int):
        super().__init__()
        self.seq_length = int(seq_length)
        self._model = tf.saved_model.load(path) if path else None

    def __call__(self, strings: tf.Tensor) -> dict[str, tf.Tensor] | tf.Tensor:
        strings = tf.convert_to_tensor(strings, tf.string)
        if self._model is None:
            return strings
        tokens = self._model.tokenize(strings)
        try:
            packed = self._model.bert_pack_inputs([tokens], seq_length=self.seq_length)
        except (ValueError, TypeError) as error:
            raise InputSpecError(
                f"The TF Hub preprocessor cannot pack inputs to "
                f"seq_length={self.seq_length}: {error}. Use the sequence length "
                "it was exported with."
            ) from error
        return {key: tf.cast(value, tf.int32) for key, value in packed.items()}
