"""Tokens back to words: which word each position of a BERT input holds."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def split_words(text: str | bytes) -> list[str]:
    """The words of `text` as attributions name them: split on whitespace,
    punctuation kept with its word ("rugby," is one word)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return str(text).split()


def word_positions(
    preprocessor, words: list[str], input_word_ids: np.ndarray
) -> np.ndarray | None:
    """The word index of each token position of one packed BERT input.

    A BERT input is `[CLS]`, the word pieces of the words in order (cut to
    fit), `[SEP]`, then padding; tokenizing each word alone gives its
    pieces, since BERT tokenizers split on whitespace first.

    Args:
        preprocessor: The backbone's text preprocessor, with `tokenize()`
            (strings `[n]` to word-piece ids `[n, (words), (pieces)]`).
        words: The text's words (`split_words()`).
        input_word_ids: The packed ids of the text `[seq_length]`.

    Returns:
        int `[seq_length]`: the index into `words` of each position, -1 for
        special tokens and padding; `None` if `preprocessor` has no
        `tokenize()` or its pieces are not laid out that way.
    """
    if not hasattr(preprocessor, "tokenize"):
        return None
    positions = np.full(len(input_word_ids), -1)
    if not words:
        return positions
    pieces = preprocessor.tokenize(tf.constant(words)).merge_dims(1, 2)
    lengths = pieces.row_lengths().numpy()
    ids = pieces.flat_values.numpy()
    kept = min(len(ids), len(input_word_ids) - 2)
    if not np.array_equal(ids[:kept], input_word_ids[1 : 1 + kept]):
        return None
    positions[1 : 1 + kept] = np.repeat(np.arange(len(words)), lengths)[:kept]
    return positions


def word_sums(token_values: np.ndarray, positions: np.ndarray, count: int):
    """Sums per-token values per word; `nan` for words past the cut.

    Args:
        token_values: float `[seq_length]`.
        positions: `word_positions()`.
        count: The number of words.

    Returns:
        float `[count]`.
    """
    sums = np.zeros(count)
    np.add.at(sums, positions[positions >= 0], token_values[positions >= 0])
    last_seen = positions.max(initial=-1)
    sums[last_seen + 1 :] = np.nan
    return sums
