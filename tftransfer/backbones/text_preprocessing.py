"""A BERT text preprocessor built only from ops that TF Serving ships.

`BertTextPreprocessor` follows TF Hub's BERT preprocessor interface: calling
it on a batch of strings gives the encoder inputs; `tokenize` and
`bert_pack_inputs` expose the two steps for other sequence lengths and for
sentence pairs. Tokenisation is TF Text's `BertTokenizer` (the
`RegexSplitWithOffsets`, `CaseFoldUTF8`, `NormalizeUTF8` and
`WordpieceTokenizeWithOffsets` ops); trimming and packing are core TensorFlow
ops. None of the ops TF Serving lacks (`FastWordpiece*`, `RoundRobinTrim*`,
`FastBertNormalize`) appears in its graph. `pack_segments` is its packing
step alone, which `HubTextPreprocessor` puts in place of a TF Hub
preprocessor's own `bert_pack_inputs` where that uses `RoundRobinTrim`.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
import tensorflow_text as tf_text

from tftransfer.errors import InputSpecError

MAX_SEGMENTS = 2
_TOKENS_SPEC = tf.RaggedTensorSpec([None, None, None], tf.int32, ragged_rank=2)


class BertTextPreprocessor(tf.Module):
    """Raw strings to BERT encoder inputs, TF Hub style and TF Serving-safe.

    Args:
        vocabulary: The WordPiece vocabulary, one token per id.
        lowercase: Whether text is case-folded and stripped of accents
            (uncased models).
        seq_length: Tokens per example of the default call.
        cls_token, sep_token, pad_token, unk_token: The special tokens.

    Call arguments:
        strings: `tf.string` tensor `[batch]`.

    Returns:
        A dict of int32 `[batch, seq_length]` tensors: `input_word_ids`,
        `input_mask` and `input_type_ids`.

    Example:

    >>> preprocess = BertTextPreprocessor(vocabulary, lowercase=True,
    ...                                   seq_length=16)
    >>> preprocess(tf.constant(["a man is playing"]))["input_word_ids"]
    <tf.Tensor: shape=(1, 16), dtype=int32, numpy=array([[ 101, 1037, ...]])>
    """

    def __init__(
        self,
        vocabulary: Sequence[str],
        *,
        lowercase: bool,
        seq_length: int,
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        unk_token: str = "[UNK]",
    ):
        super().__init__()
        vocabulary = list(vocabulary)
        for token in (cls_token, sep_token, pad_token, unk_token):
            if token not in vocabulary:
                raise InputSpecError(
                    f"The vocabulary lacks the special token {token!r}; pass "
                    "the vocabulary of a BERT-family model."
                )
        self.seq_length = int(seq_length)
        self.lowercase = bool(lowercase)
        self.vocabulary_size = len(vocabulary)
        self._cls_id = vocabulary.index(cls_token)
        self._sep_id = vocabulary.index(sep_token)
        self._pad_id = vocabulary.index(pad_token)
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(vocabulary),
                tf.range(len(vocabulary), dtype=tf.int64),
            ),
            default_value=vocabulary.index(unk_token),
        )
        self._tokenizer = tf_text.BertTokenizer(
            table,
            token_out_type=tf.int32,
            unknown_token=unk_token,
            lower_case=self.lowercase,
        )
        for num_segments in range(1, MAX_SEGMENTS + 1):
            self.bert_pack_inputs.get_concrete_function(
                [_TOKENS_SPEC] * num_segments, tf.TensorSpec([], tf.int32)
            )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, strings: tf.Tensor) -> dict[str, tf.Tensor]:
        return self.bert_pack_inputs(
            [self.tokenize(strings)], tf.constant(self.seq_length, tf.int32)
        )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(self, strings: tf.Tensor) -> tf.RaggedTensor:
        """Strings `[batch]` to word-piece ids `[batch, (words), (pieces)]`."""
        return self._tokenizer.tokenize(strings)

    @tf.function
    def bert_pack_inputs(
        self, segments: list[tf.RaggedTensor], seq_length: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """Packs 1 or 2 tokenized segments as `[CLS] a [SEP] (b [SEP])`.

        Segments are trimmed round-robin to fit `seq_length`, then padded.
        """
        if not 1 <= len(segments) <= MAX_SEGMENTS:
            raise InputSpecError(
                f"Expected 1 to {MAX_SEGMENTS} segments. Received: "
                f"{len(segments)} segments."
            )
        return pack_segments(
            segments,
            seq_length,
            start_id=self._cls_id,
            end_id=self._sep_id,
            pad_id=self._pad_id,
        )


def pack_segments(
    segments: Sequence[tf.RaggedTensor],
    seq_length: int | tf.Tensor,
    *,
    start_id: int,
    end_id: int,
    pad_id: int,
) -> dict[str, tf.Tensor]:
    """Packs tokenized segments as `[CLS] a [SEP] (b [SEP] ...)`, core TF only.

    What TF Hub BERT preprocessors' `bert_pack_inputs` does (TF Text's
    `RoundRobinTrimmer`, `combine_segments` and `pad_model_inputs`), without
    the `RoundRobinTrim` op that TF Serving lacks: segments are trimmed
    round-robin from their ends to fit `seq_length`, then padded.

    Args:
        segments: Token ids `[batch, (tokens)]` or `[batch, (words),
            (pieces)]`, one `RaggedTensor` per segment.
        seq_length: Tokens per example, special tokens included.
        start_id: Id of the token starting each example (`[CLS]`).
        end_id: Id of the token ending each segment (`[SEP]`).
        pad_id: Id that fills `input_word_ids` past the end.

    Returns:
        A dict of int32 `[batch, seq_length]` tensors: `input_word_ids`,
        `input_mask` and `input_type_ids`.

    Example:

    >>> tokens = tf.ragged.constant([[7, 8, 9, 10], [7]])
    >>> pack_segments([tokens], 4, start_id=2, end_id=3, pad_id=0)
    {'input_word_ids': <tf.Tensor: ... [[2, 7, 8, 3], [2, 7, 3, 0]]>, ...}
    """
    tokens = [s.merge_dims(-2, -1) if s.ragged_rank == 2 else s for s in segments]
    budget = seq_length - len(tokens) - 1
    keep = _round_robin_lengths(
        tf.stack([t.row_lengths() for t in tokens], axis=1), budget
    )
    batch = tokens[0].nrows()
    pieces, types = [], []
    start = tf.fill([batch, 1], start_id)
    end = tf.fill([batch, 1], end_id)
    for index, segment in enumerate(tokens):
        trimmed = tf.ragged.range(keep[:, index])
        segment = tf.gather(segment, trimmed, batch_dims=1)
        segment = tf.cast(segment, tf.int32)
        part = tf.concat([start, segment, end] if index == 0 else [segment, end], 1)
        pieces.append(part)
        types.append(tf.ones_like(part) * index)
    ids = tf.concat(pieces, axis=1)
    type_ids = tf.concat(types, axis=1)
    shape = tf.stack([batch, tf.cast(seq_length, tf.int64)])
    return {
        "input_word_ids": ids.to_tensor(pad_id, shape=shape),
        "input_mask": tf.ones_like(ids).to_tensor(0, shape=shape),
        "input_type_ids": type_ids.to_tensor(0, shape=shape),
    }


def _round_robin_lengths(lengths: tf.Tensor, budget: tf.Tensor) -> tf.Tensor:
    """How many tokens of each segment to keep, taking one from each in turn.

    Args:
        lengths: int64 `[batch, segments]` segment lengths.
        budget: Scalar: tokens available for all segments together.

    Returns:
        int64 `[batch, segments]`: the kept lengths, as TF Text's round-robin
        trimmer gives them.
    """
    budget = tf.cast(tf.maximum(budget, 0), tf.int64)
    levels = tf.range(budget + 1)
    filled = tf.reduce_sum(
        tf.minimum(lengths[:, None, :], levels[None, :, None]), axis=-1
    )
    level = tf.reduce_sum(tf.cast(filled <= budget, tf.int64), axis=1) - 1
    base = tf.minimum(lengths, level[:, None])
    left = budget - tf.reduce_sum(base, axis=1, keepdims=True)
    eligible = tf.cast(lengths > level[:, None], tf.int64)
    extra = eligible * tf.cast(tf.cumsum(eligible, axis=1) <= left, tf.int64)
    return base + extra
