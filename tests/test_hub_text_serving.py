"""TF Hub BERT preprocessors whose packing TF Serving cannot load still serve.

The preprocessors here are built the way TF Hub's BERT preprocessors are with
a current TF Text: `tokenize` (with `get_special_tokens_dict()`) and a
`bert_pack_inputs` of `RoundRobinTrimmer`, `combine_segments` and
`pad_model_inputs`, so their graphs hold `TFText>RoundRobinTrim`, an op newer
than the TF Text that TF Serving bundles.
"""

import json
import os
import warnings
from pathlib import Path

import hub_fixtures
import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_text as text

import tftransfer
from tftransfer.backbones.hub_text_preprocessor import (
    SAMPLE_TEXTS,
    HubTextPreprocessor,
)
from tftransfer.backbones.text_preprocessing import pack_segments
from tftransfer.errors import ExportError
from tftransfer.serving_ops import (
    graph_ops,
    saved_model_ops,
    unsupported_ops,
)

SEQ_LENGTH = 8
TOKENS = tf.RaggedTensorSpec([None, None, None], tf.int32, ragged_rank=2)
TEXTS = {
    "sport": [
        "the team won the match",
        "a late goal won the game",
        "the sports team plays a match today",
        "a win for the team in the game",
    ],
    "tech": [
        "the computer software and the internet",
        "a new phone with software",
        "the internet and the computer",
        "tech news on phone software",
    ],
}
CHECK_TEXTS = [
    "",
    "a late goal",
    "Café naïve résumé",
    "the team won the match and the game was a win for the sports team today",
]


class Tokenize(tf.Module):
    """WordPiece ids `[batch, (words), (pieces)]`, with TF Hub's special tokens."""

    def __init__(self, vocab_file: str, special_tokens_dict: bool):
        super().__init__()
        self.tokenizer = text.BertTokenizer(vocab_file, lower_case=True)
        vocabulary = Path(vocab_file).read_text().split()
        self.special_tokens = tf.constant(
            [vocabulary.index(t) for t in ("[CLS]", "[SEP]", "[PAD]")]
        )
        self.vocab_size = len(vocabulary)
        if special_tokens_dict:
            self.get_special_tokens_dict = tf.function(
                self._special_tokens_dict, input_signature=[]
            )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, sentences):
        return tf.cast(self.tokenizer.tokenize(sentences), tf.int32)

    def _special_tokens_dict(self):
        return {
            "vocab_size": tf.constant(self.vocab_size),
            "start_of_sequence_id": self.special_tokens[0],
            "end_of_segment_id": self.special_tokens[1],
            "padding_id": self.special_tokens[2],
        }


class HubBertPreprocessor(tf.Module):
    """A TF Hub-style BERT preprocessor packing with `trimmer`.

    `trimmer` is `text.RoundRobinTrimmer` (as TF Hub's, whose op TF Serving
    lacks) or `text.WaterfallTrimmer` (core TF ops).
    `keep="head"` keeps each segment's first tokens, as TF Hub's do;
    `keep="tail"` its last ones (trimming the reversed segments), a packing
    that the core-op rewrite does not reproduce. Without
    `special_tokens_dict`, the special ids are only in the vocabulary asset.
    """

    def __init__(
        self,
        vocab_file,
        trimmer=text.RoundRobinTrimmer,
        keep="head",
        special_tokens_dict=True,
    ):
        super().__init__()
        self.trimmer = trimmer
        self.keep = keep
        self.tokenize = Tokenize(vocab_file, special_tokens_dict)
        self.ids = [int(i) for i in self.tokenize.special_tokens.numpy()]
        length = tf.TensorSpec([], tf.int32)
        self.bert_pack_inputs = tf.function(self._pack)
        self.bert_pack_inputs.get_concrete_function([TOKENS], length)
        self.bert_pack_inputs.get_concrete_function([TOKENS, TOKENS], length)
        self.__call__ = tf.function(
            lambda s: self._pack([self.tokenize(s)], tf.constant(SEQ_LENGTH)),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )

    def _pack(self, segments, seq_length):
        segments = [s.merge_dims(-2, -1) for s in segments]
        trimmer = self.trimmer(seq_length - 1 - len(segments))
        if self.keep == "tail":
            reverse = [tf.reverse(s, axis=[1]) for s in segments]
            trimmed = [tf.reverse(s, axis=[1]) for s in trimmer.trim(reverse)]
        else:
            trimmed = trimmer.trim(segments)
        start, end, pad = self.ids
        ids, type_ids = text.combine_segments(trimmed, start, end)
        word_ids, mask = text.pad_model_inputs(ids, seq_length, pad_value=pad)
        type_ids, _ = text.pad_model_inputs(type_ids, seq_length)
        return {
            "input_word_ids": word_ids,
            "input_mask": mask,
            "input_type_ids": type_ids,
        }


def save_preprocessor(directory, **kwargs) -> str:
    """Saves a `HubBertPreprocessor` (vocabulary as an asset) in `directory`."""
    os.makedirs(directory, exist_ok=True)
    vocab_file = hub_fixtures.write_vocab(os.path.join(directory, "vocab.txt"))
    module = HubBertPreprocessor(vocab_file, **kwargs)
    return hub_fixtures.save_as_hub_model(module, os.path.join(directory, "saved"))


@pytest.fixture(scope="module")
def round_robin_path(tmp_path_factory):
    return save_preprocessor(tmp_path_factory.mktemp("round_robin"))


def original_preprocessing(path, seq_length):
    """The SavedModel's own `tokenize` + `bert_pack_inputs`, as a function."""
    loaded = tf.saved_model.load(path)

    def preprocess(strings):
        tokens = loaded.tokenize(tf.convert_to_tensor(strings, tf.string))
        packed = loaded.bert_pack_inputs([tokens], seq_length=seq_length)
        return {key: tf.cast(value, tf.int32) for key, value in packed.items()}

    return preprocess


def preprocessing_ops(preprocess) -> set:
    function = tf.function(preprocess)
    return graph_ops([function.get_concrete_function(tf.TensorSpec([None], tf.string))])


def test_pack_segments_equals_tf_text_round_robin_packing():
    rng = np.random.default_rng(0)
    for seq_length in (2, 3, 5, 8, 13):
        segments = [
            tf.ragged.constant(
                [list(rng.integers(5, 60, rng.integers(0, 12))) for _ in range(16)],
                tf.int32,
            )
            for _ in range(2)
        ]
        for count in (1, 2):
            parts = segments[:count]
            trimmed = text.RoundRobinTrimmer(seq_length - 1 - count).trim(parts)
            ids, types = text.combine_segments(trimmed, 2, 3)
            word_ids, mask = text.pad_model_inputs(ids, seq_length, pad_value=0)
            type_ids, _ = text.pad_model_inputs(types, seq_length)
            packed = pack_segments(parts, seq_length, start_id=2, end_id=3, pad_id=0)
            np.testing.assert_array_equal(packed["input_word_ids"], word_ids)
            np.testing.assert_array_equal(packed["input_mask"], mask)
            np.testing.assert_array_equal(packed["input_type_ids"], type_ids)


@pytest.mark.parametrize(
    "special_tokens_dict, seq_length", [(True, 4), (True, 24), (False, SEQ_LENGTH)]
)
def test_rewritten_packing_gives_the_preprocessors_outputs_without_its_ops(
    tmp_path, special_tokens_dict, seq_length
):
    path = save_preprocessor(tmp_path, special_tokens_dict=special_tokens_dict)
    original = original_preprocessing(path, seq_length)
    assert "TFText>RoundRobinTrim" in unsupported_ops(preprocessing_ops(original))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preprocess = HubTextPreprocessor(path, seq_length)
    assert unsupported_ops(preprocessing_ops(preprocess)) == {}
    long_text = " ".join(hub_fixtures.WORDS)
    texts = tf.constant([*SAMPLE_TEXTS, *CHECK_TEXTS, long_text, "Plays, playing!"])
    expected, received = original(texts), preprocess(texts)
    assert sorted(received) == sorted(expected)
    for key, value in expected.items():
        np.testing.assert_array_equal(received[key], value, err_msg=key)
    # Truncated: the long text fills every position.
    assert received["input_mask"].numpy()[-2].all()


def test_serving_safe_preprocessor_keeps_its_own_packing(tmp_path):
    preprocessor = save_preprocessor(tmp_path, trimmer=text.WaterfallTrimmer)
    original = original_preprocessing(preprocessor, SEQ_LENGTH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preprocess = HubTextPreprocessor(preprocessor, SEQ_LENGTH)
    assert preprocessing_ops(preprocess) == preprocessing_ops(original)
    texts = tf.constant(CHECK_TEXTS)
    for key, value in original(texts).items():
        np.testing.assert_array_equal(preprocess(texts)[key], value)


def train_classifier(backbone) -> keras.Model:
    """A frozen `backbone` + softmax head, trained a few steps on `TEXTS`."""
    inputs = {
        key: keras.Input((SEQ_LENGTH,), dtype="int32", name=key)
        for key in ("input_word_ids", "input_mask", "input_type_ids")
    }
    head = keras.layers.Dense(len(TEXTS), activation="softmax")
    model = keras.Model(inputs, head(backbone.build(trainable=False)(inputs)))
    model.compile("adam", "sparse_categorical_crossentropy")
    texts = [t for examples in TEXTS.values() for t in examples]
    labels = [i for i, examples in enumerate(TEXTS.values()) for _ in examples]
    prepare = tftransfer.data.prepare_fn(backbone)
    model.fit(dict(prepare(tf.constant(texts))), np.array(labels), epochs=3, verbose=0)
    return model


def test_classifier_exports_without_allow_ops_and_serves_raw_strings_alike(
    round_robin_path, bert_paths, tmp_path
):
    backbone = tftransfer.Backbone.from_hub_text(
        round_robin_path, bert_paths[1], seq_length=SEQ_LENGTH
    )
    model = train_classifier(backbone)
    path = tftransfer.export(
        model, tmp_path / "model", backbone=backbone, class_names=list(TEXTS)
    )
    assert unsupported_ops(saved_model_ops(str(path))) == {}
    card = json.loads((path / "model_card.json").read_text())
    assert card["serving_ops"]["allowed_by_override"] == []
    assert "TFText>RoundRobinTrim" not in card["serving_ops"]["ops"]
    # Served probabilities equal the model's on the preprocessor's own
    # (RoundRobinTrim) packing, in a process with only TensorFlow (+ TF Text).
    report = tftransfer.export.verify(
        path,
        CHECK_TEXTS,
        model=model,
        prepare=original_preprocessing(round_robin_path, SEQ_LENGTH),
        print_signatures=False,
    )
    assert report.max_abs_difference <= 1e-5
    assert "tftransfer" not in report.imported


def test_unmatched_packing_warns_and_export_keeps_refusing_with_allow_ops(
    bert_paths, tmp_path
):
    path = save_preprocessor(tmp_path / "tail", keep="tail")
    with pytest.warns(UserWarning, match=r"gives other input_word_ids .*allow_ops"):
        backbone = tftransfer.Backbone.from_hub_text(
            path, bert_paths[1], seq_length=SEQ_LENGTH
        )
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, when the backbone was built
        preprocess = backbone.text_preprocessor()
    # The original packing stays: the last tokens are kept.
    original = original_preprocessing(path, SEQ_LENGTH)
    texts = tf.constant(CHECK_TEXTS)
    np.testing.assert_array_equal(
        preprocess(texts)["input_word_ids"], original(texts)["input_word_ids"]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = train_classifier(backbone)
        kwargs = dict(backbone=backbone, class_names=list(TEXTS))
        with pytest.raises(ExportError, match=r"allow_ops=\['TFText>RoundRobinTrim'\]"):
            tftransfer.export(model, tmp_path / "model", **kwargs)
        assert not list((tmp_path / "model").glob("[0-9]*"))
        path = tftransfer.export(
            model, tmp_path / "model", allow_ops=["TFText>RoundRobinTrim"], **kwargs
        )
    assert (path / "saved_model.pb").exists()
