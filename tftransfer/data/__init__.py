"""Reading labelled image and text data, and preparing it for a backbone.

Readers return a `LabeledData`; `split()` divides one and `sample()` takes
a stratified subset of one; `make_pipeline()` turns one into batches
prepared for a `tftransfer.Backbone`; `prepare_fn()` is the preparation that
training and serving share; `length_buckets` batches text by length for a
pass whose outputs keep the data's order.
"""

from tftransfer.data import length_buckets
from tftransfer.data.arrays import from_arrays
from tftransfer.data.augment import AUGMENTATIONS, augmenter
from tftransfer.data.images import from_image_folder
from tftransfer.data.labeled_data import LabeledData
from tftransfer.data.pipeline import make_pipeline
from tftransfer.data.prepare import RESIZE_MODES, prepare_fn
from tftransfer.data.skips import DecodingFallbackWarning, SkippedInputWarning
from tftransfer.data.splits import Splits, sample, split
from tftransfer.data.text import from_csv, from_jsonl, from_text_folder
from tftransfer.data.tfds import from_tfds
from tftransfer.data.tfrecord import from_tfrecord

__all__ = [
    "AUGMENTATIONS",
    "DecodingFallbackWarning",
    "LabeledData",
    "RESIZE_MODES",
    "SkippedInputWarning",
    "Splits",
    "augmenter",
    "from_arrays",
    "from_csv",
    "from_image_folder",
    "from_jsonl",
    "from_text_folder",
    "from_tfds",
    "from_tfrecord",
    "length_buckets",
    "make_pipeline",
    "prepare_fn",
    "sample",
    "split",
]
