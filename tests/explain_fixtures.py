"""Tiny trained models for the tftransfer.explain tests: an image classifier
of red brightness and a one-layer KerasHub BERT that finds a planted keyword,
each trained once per test process."""

import functools

import keras
import keras_hub
import numpy as np
import tensorflow as tf
from data_fixtures import seeded_image_backbone, signal_images

from tftransfer.backbones import Backbone
from tftransfer.backbones.keras_hub_source import bert_feature_model
from tftransfer.backbones.text_preprocessing import BertTextPreprocessor

SEQ_LENGTH = 16
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
FILLER = [
    "piano",
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "on",
    "with",
    "for",
    "by",
    "at",
    "from",
    "news",
    "game",
    "team",
    "play",
    "music",
    "show",
]
VOCABULARY = [*SPECIAL, "rugby", *FILLER, ",", "##s"]
KEYWORD = "rugby"


@functools.cache
def image_model():
    """A conv + softmax classifier of 8x8 images by their red brightness."""
    backbone = seeded_image_backbone("tiny", conv_filters=4)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            backbone.build(),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    pixels, signal = signal_images(96)
    model.compile(keras.optimizers.Adam(0.05), "sparse_categorical_crossentropy")
    model.fit(pixels / 255.0, (signal > 0.5).astype(int), epochs=30, verbose=0)
    return model, backbone, pixels


def keyword_texts(count: int, seed: int) -> tuple[list[str], np.ndarray]:
    """4 to 8 filler words; every second text has one replaced by KEYWORD
    (label 1), so length says nothing of the label."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for index in range(count):
        words = list(rng.choice(FILLER, rng.integers(4, 9)))
        if index % 2:
            words[rng.integers(len(words))] = KEYWORD
        texts.append(" ".join(words))
        labels.append(index % 2)
    return texts, np.array(labels)


@functools.cache
def text_model():
    """A one-layer KerasHub BERT with a softmax head, trained to find KEYWORD."""
    preprocessor = BertTextPreprocessor(
        VOCABULARY, lowercase=True, seq_length=SEQ_LENGTH
    )
    keras.utils.set_random_seed(0)
    bert = keras_hub.models.BertBackbone(
        vocabulary_size=len(VOCABULARY),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=SEQ_LENGTH,
    )
    layer = bert_feature_model(bert, "mean", "tiny_bert")
    backbone = Backbone(
        name="tiny_bert",
        handle="test://tiny_bert",
        modality="text",
        feature_dim=16,
        builder=lambda trainable: layer,
        seq_length=SEQ_LENGTH,
        preprocessor_factory=lambda: preprocessor,
    )
    inputs = {
        key: keras.Input((SEQ_LENGTH,), dtype="int32", name=key)
        for key in ("input_word_ids", "input_mask", "input_type_ids")
    }
    head = keras.layers.Dense(2, activation="softmax")
    model = keras.Model(inputs, head(layer(inputs)))
    texts, labels = keyword_texts(240, seed=0)
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(dict(preprocessor(tf.constant(texts))), labels, epochs=12, verbose=0)
    return model, backbone
