"""`LabeledData`: what every reader returns."""

from __future__ import annotations

import dataclasses

import tensorflow as tf

from tftransfer.errors import DataError
from tftransfer.vocabulary import MODALITIES, TASKS

INPUT_FORMATS = ("file_path", "encoded_image", "pixels", "text")


@dataclasses.dataclass(frozen=True)
class LabeledData:
    """A labelled dataset, as read from its source and before preparation.

    Every reader in `tftransfer.data` returns one. `make_pipeline()` turns it
    into batches prepared for a backbone; `split()` divides it.

    Args:
        dataset: Unbatched `tf.data.Dataset` of `(input, label)`. For
            classification `label` is an int64 scalar indexing
            `class_names`; for `"multi_label"` a float32 multi-hot vector
            `[len(class_names)]` (1.0 where the label applies); for
            `"regression"` a float32 vector of targets `[len(class_names)]`.
            `input` is described by `input_format`.
        class_names: Name of each class; label `i` is `class_names[i]`. For
            `"multi_label"` the label names, for `"regression"` the target
            names, in vector order.
        num_examples: Number of examples, or `None` when the source does not
            say (for example a TFRecord pattern read lazily).
        modality: `"image"` or `"text"`.
        source: Where the data came from, for logs and model cards.
        input_format: How each input is stored: `"file_path"` (a string path
            to an encoded image), `"encoded_image"` (JPEG, PNG, BMP or GIF
            bytes), `"pixels"` (a `[height, width, channels]` tensor with
            values in `[0, 255]`) or `"text"` (a raw UTF-8 string).
        skipped: One `"<file or line>: <reason>"` entry per input that the
            reader left out (corrupt images, empty text, ...).
        fallbacks: One `"<file>: <how it was read>"` entry per input that
            the reader kept by a fallback (a text file that is not valid in
            the reader's `encoding`, decoded with its `fallback_encoding`).
        task: What the labels are for, one of `tftransfer.vocabulary.TASKS`:
            `"classification"` (one class per example), `"multi_label"` or
            `"regression"`. Recipes train this task unless told otherwise.

    Example:

    >>> data = tftransfer.data.from_image_folder("flowers/")
    >>> data.class_names, data.num_examples, data.modality
    (['daisy', 'roses', 'tulips'], 300, 'image')
    """

    dataset: tf.data.Dataset
    class_names: list[str]
    num_examples: int | None
    modality: str
    source: str
    input_format: str
    skipped: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
    task: str = "classification"

    def __post_init__(self):
        if self.task not in TASKS:
            raise DataError(
                f"Expected `task` to be one of {TASKS}. Received: task={self.task!r}."
            )
        if self.modality not in MODALITIES:
            raise DataError(
                f"Expected `modality` to be one of {MODALITIES}. "
                f"Received: modality={self.modality!r}."
            )
        if self.input_format not in INPUT_FORMATS:
            raise DataError(
                f"Expected `input_format` to be one of {INPUT_FORMATS}. "
                f"Received: input_format={self.input_format!r}."
            )
        if (self.modality == "text") != (self.input_format == "text"):
            raise DataError(
                f"`modality={self.modality!r}` does not match "
                f"`input_format={self.input_format!r}`: text data has "
                "`input_format='text'` and image data one of the others."
            )
        if self.task != "classification" and not self.class_names:
            raise DataError(
                f"{self.source} has no {self.task} label or target names; "
                "give one name per column of the label vectors."
            )
        if self.task == "classification" and len(self.class_names) < 2:
            raise DataError(
                f"{self.source} has {len(self.class_names)} class(es) "
                f"({self.class_names}); a classifier needs at least 2. "
                "Add examples of at least one more class."
            )

    @property
    def num_classes(self) -> int:
        """Number of classes (labels, targets): the model's outputs."""
        return len(self.class_names)
