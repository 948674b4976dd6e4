"""`HubTextPreprocessor`: raw strings to encoder inputs with a TF Hub preprocessor."""

from __future__ import annotations

import warnings

import tensorflow as tf

from tftransfer.backbones.text_preprocessing import pack_segments
from tftransfer.errors import InputSpecError
from tftransfer.serving_ops import graph_ops, unsupported_ops

# Texts on which a rebuilt packing step must give the preprocessor's own
# outputs: empty, blank, short, punctuation, case, accents, other scripts,
# control characters; `_sample` adds texts around and beyond `seq_length`.
SAMPLE_TEXTS = (
    "",
    " ",
    "a",
    "Hello, world!",
    "The stock market fell sharply today.",
    "UPPER lower MiXeD 12345 3.14 can't",
    "Café naïve résumé Ångström über",
    "日本語のテキスト 中文 한국어 العربية",
    "emoji 🙂 and\ttabs\nand newlines",
)
_SPECIAL_TOKENS = {"start_id": "[CLS]", "end_id": "[SEP]", "pad_id": "[PAD]"}
_SPECIAL_TOKEN_KEYS = {
    "start_id": "start_of_sequence_id",
    "end_id": "end_of_segment_id",
    "pad_id": "padding_id",
}


class HubTextPreprocessor(tf.Module):
    """Raw strings to encoder inputs with a TF Hub BERT preprocessor.

    Calls the preprocessor's `tokenize` and then packs the tokens to
    `seq_length`, so any length works (the preprocessor's default call is
    fixed at the length it was exported with). With `path=None` strings pass
    through unchanged, for encoders that take raw text.

    Packing is the preprocessor's own `bert_pack_inputs`, unless that uses
    ops stock TF Serving cannot load (`TFText>RoundRobinTrim` of TF Text
    releases newer than the one TF Serving bundles). Then the tokens are
    packed with `pack_segments` (core TensorFlow ops) instead, with the
    special token ids the SavedModel holds: those of
    `tokenize.get_special_tokens_dict()` where it has one, else of `[CLS]`,
    `[SEP]` and `[PAD]` in its vocabulary asset. The replacement is kept
    only if it gives the preprocessor's own outputs on `SAMPLE_TEXTS` and
    texts around and beyond `seq_length`; otherwise a warning says why and
    the original stays (export then refuses it and names `allow_ops`). It
    is chosen here, once, so training and serving prepare text alike.

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
        self._special_ids = None
        if self._model is not None:
            self._special_ids = self._serving_safe_packing(path)

    def __call__(self, strings: tf.Tensor) -> dict[str, tf.Tensor] | tf.Tensor:
        strings = tf.convert_to_tensor(strings, tf.string)
        if self._model is None:
            return strings
        return self._pack(self._model.tokenize(strings), self._special_ids)

    def _pack(
        self, tokens: tf.RaggedTensor, special_ids: dict[str, int] | None
    ) -> dict[str, tf.Tensor]:
        """Packs with `pack_segments` given special ids, else the SavedModel's."""
        if special_ids is not None:
            return pack_segments([tokens], self.seq_length, **special_ids)
        try:
            packed = self._model.bert_pack_inputs([tokens], seq_length=self.seq_length)
        except (ValueError, TypeError) as error:
            raise InputSpecError(
                f"The TF Hub preprocessor cannot pack inputs to "
                f"seq_length={self.seq_length}: {error}. Use the sequence length "
                "it was exported with."
            ) from error
        return {key: tf.cast(value, tf.int32) for key, value in packed.items()}

    def _serving_safe_packing(self, path: str) -> dict[str, int] | None:
        """The special ids to pack with core ops, or `None` for the original.

        `None` where the original serves as it is, and, with a warning
        saying why, where the core-op packing does not serve or differs.
        """
        unsupported = unsupported_ops(self._ops(None))
        if not unsupported:
            return None
        special_ids = _special_token_ids(self._model, path)
        if special_ids is None:
            reason = (
                "it has neither `tokenize.get_special_tokens_dict()` nor a "
                "vocabulary asset with [CLS], [SEP] and [PAD]"
            )
        elif left := unsupported_ops(self._ops(special_ids)):
            reason = f"its tokenizer itself uses {sorted(left)}"
        else:
            reason = self._mismatch(special_ids)
        if reason is None:
            return special_ids
        warnings.warn(
            f"The TF Hub preprocessor {path!r} uses ops that TF Serving cannot "
            f"load ({sorted(unsupported)}), and tftransfer cannot replace its "
            f"packing step with core TensorFlow ops: {reason}. "
            "Training works; `tftransfer.export` will refuse the model "
            f"unless given `allow_ops={sorted(unsupported)!r}`, for a server "
            "built with these ops.",
            stacklevel=3,
        )
        return None

    def _ops(self, special_ids: dict[str, int] | None) -> set:
        """The op types of preprocessing a `[batch]` string tensor."""
        function = tf.function(
            lambda strings: self._pack(self._model.tokenize(strings), special_ids)
        )
        return graph_ops(
            [function.get_concrete_function(tf.TensorSpec([None], tf.string))]
        )

    def _mismatch(self, special_ids: dict[str, int]) -> str | None:
        """Where packing with `special_ids` differs from the SavedModel's."""
        texts = _sample(self.seq_length)
        tokens = self._model.tokenize(tf.constant(texts))
        original = self._pack(tokens, None)
        rebuilt = self._pack(tokens, special_ids)
        if sorted(original) != sorted(rebuilt):
            return f"its `bert_pack_inputs` returns {sorted(original)}"
        for key, value in original.items():
            differs = tf.reduce_any(value != rebuilt[key], axis=-1).numpy()
            if differs.any():
                text = texts[int(differs.argmax())]
                return f"its `bert_pack_inputs` gives other {key} for {text[:60]!r}"
        return None


def _sample(seq_length: int) -> list[str]:
    """`SAMPLE_TEXTS`, word runs around `seq_length` and a long mixed text."""
    runs = [
        " ".join(["a"] * count)
        for count in range(max(seq_length - 3, 1), seq_length + 2)
    ]
    return [*SAMPLE_TEXTS, *runs, " ".join(SAMPLE_TEXTS * seq_length)]


def _special_token_ids(model, path: str) -> dict[str, int] | None:
    """The `[CLS]`, `[SEP]` and `[PAD]` ids a TF Hub preprocessor packs with.

    From `tokenize.get_special_tokens_dict()` (TF Hub's BERT preprocessors
    have it), else from the first vocabulary asset holding all three tokens.
    """
    special = getattr(model.tokenize, "get_special_tokens_dict", None)
    if special is not None:
        values = special()
        return {key: int(values[name]) for key, name in _SPECIAL_TOKEN_KEYS.items()}
    assets = tf.io.gfile.join(path, "assets")
    names = sorted(tf.io.gfile.listdir(assets)) if tf.io.gfile.isdir(assets) else []
    for name in names:
        with tf.io.gfile.GFile(tf.io.gfile.join(assets, name), "rb") as file:
            try:
                lines = file.read().decode("utf-8").split("\n")
            except UnicodeDecodeError:
                continue
        tokens = [line.rstrip("\r") for line in lines]
        if all(token in tokens for token in _SPECIAL_TOKENS.values()):
            return {key: tokens.index(token) for key, token in _SPECIAL_TOKENS.items()}
    return None
