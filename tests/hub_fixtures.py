"""Tiny models saved in the TF Hub reusable SavedModel format, for tests.

Each builder writes a SavedModel the way TF Hub's TF2 models were written:
`tf.saved_model.save` of an object whose `__call__` was traced (for both
values of `training` where it takes one), with `variables`,
`trainable_variables` and `regularization_losses` attributes. Nothing here
downloads; everything is deterministic (seeded).
"""

import os

import numpy as np
import tensorflow as tf
import tensorflow_text as text

IMAGE_SIZE = 8
IMAGE_FEATURES = 4
BN_MOMENTUM = 0.9
REGULARIZATION = 1e-3

TEXT_SEQ_LENGTH = 16
ENCODER_WIDTH = 8
ENCODER_LAYERS = 2
WORDS = [
    "the",
    "a",
    "an",
    "and",
    "of",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "with",
    "as",
    "by",
    "at",
    "from",
    "it",
    "this",
    "that",
    "man",
    "woman",
    "person",
    "guitar",
    "plays",
    "playing",
    "play",
    "acoustic",
    "stock",
    "market",
    "fell",
    "sharply",
    "today",
    "news",
    "sport",
    "sports",
    "team",
    "game",
    "match",
    "win",
    "won",
    "goal",
    "business",
    "bank",
    "money",
    "economy",
    "growth",
    "film",
    "music",
    "star",
    "show",
    "politics",
    "election",
    "vote",
    "government",
    "minister",
    "tech",
    "computer",
    "phone",
    "software",
    "internet",
]


class ImageFeatureVector(tf.Module):
    """Conv -> BatchNorm -> ReLU -> global average pool, like a hub image model."""

    def __init__(self, image_size: int = IMAGE_SIZE, features: int = IMAGE_FEATURES):
        super().__init__()
        rng = np.random.default_rng(0)
        self.kernel = tf.Variable(
            rng.normal(0, 0.5, (3, 3, 3, features)).astype("float32"), name="kernel"
        )
        self.gamma = tf.Variable(np.ones(features, "float32"), name="gamma")
        self.beta = tf.Variable(np.zeros(features, "float32"), name="beta")
        self.moving_mean = tf.Variable(
            np.zeros(features, "float32"), trainable=False, name="moving_mean"
        )
        self.moving_variance = tf.Variable(
            np.ones(features, "float32"), trainable=False, name="moving_variance"
        )
        self.regularization_losses = [
            tf.function(lambda: REGULARIZATION * tf.reduce_sum(self.kernel**2))
        ]
        spec = tf.TensorSpec([None, image_size, image_size, 3], tf.float32)
        self.__call__.get_concrete_function(spec, True)
        self.__call__.get_concrete_function(spec, False)

    @tf.function
    def __call__(self, images, training=False):
        x = tf.nn.conv2d(images, self.kernel, strides=1, padding="SAME")
        if training:
            mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
            self.moving_mean.assign(
                BN_MOMENTUM * self.moving_mean + (1 - BN_MOMENTUM) * mean
            )
            self.moving_variance.assign(
                BN_MOMENTUM * self.moving_variance + (1 - BN_MOMENTUM) * variance
            )
        else:
            mean, variance = self.moving_mean, self.moving_variance
        x = tf.nn.batch_normalization(x, mean, variance, self.beta, self.gamma, 1e-3)
        return tf.reduce_mean(tf.nn.relu(x), axis=[1, 2])


class HashedTextEmbedding(tf.Module):
    """Strings -> mean of hashed token embeddings; its call takes no `training`."""

    def __init__(self, buckets: int = 64, dim: int = 6):
        super().__init__()
        rng = np.random.default_rng(1)
        self.buckets = buckets
        self.embeddings = tf.Variable(
            rng.normal(0, 1, (buckets, dim)).astype("float32"), name="embeddings"
        )
        self.regularization_losses = []
        self.__call__.get_concrete_function(tf.TensorSpec([None], tf.string))

    @tf.function
    def __call__(self, sentences):
        tokens = tf.strings.split(tf.strings.lower(sentences))
        ids = tf.strings.to_hash_bucket_fast(tokens, self.buckets)
        vectors = tf.ragged.map_flat_values(tf.gather, self.embeddings, ids)
        return tf.reduce_mean(vectors, axis=1)


def write_vocab(path: str) -> str:
    """Writes a WordPiece vocabulary with BERT's special tokens; returns it."""
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    tokens += ["##s", "##ing", "##ed", "."]
    with open(path, "w") as f:
        f.write("\n".join(tokens) + "\n")
    return path


class BertPreprocessor(tf.Module):
    """Raw strings -> BERT encoder inputs, with TF Serving-safe TF Text ops."""

    def __init__(self, vocab_file: str, seq_length: int = TEXT_SEQ_LENGTH):
        super().__init__()
        # A vocabulary given by file name becomes a SavedModel asset.
        self.tokenizer = text.BertTokenizer(vocab_file, lower_case=True)
        self.seq_length = seq_length
        tokens = _read_vocab(vocab_file)
        self.cls_id = tokens.index("[CLS]")
        self.sep_id = tokens.index("[SEP]")
        self.tokenize = tf.function(
            self._tokenize, input_signature=[tf.TensorSpec([None], tf.string)]
        )
        self.tokenize.get_concrete_function()
        words = tf.RaggedTensorSpec([None, None, None], tf.int32, ragged_rank=2)
        # Like published TF Hub preprocessors: any seq_length, as a tensor.
        length = tf.TensorSpec([], tf.int32)
        self.bert_pack_inputs = tf.function(self._pack)
        self.bert_pack_inputs.get_concrete_function([words], length)
        self.bert_pack_inputs.get_concrete_function([words, words], length)
        self.__call__ = tf.function(
            lambda sentences: self._pack(
                [self._tokenize(sentences)], tf.constant(seq_length)
            ),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )

    def _tokenize(self, sentences):
        return tf.cast(self.tokenizer.tokenize(sentences), tf.int32)

    def _pack(self, segments, seq_length):
        segments = [segment.merge_dims(-2, -1) for segment in segments]
        trimmed = text.WaterfallTrimmer(seq_length - 1 - len(segments)).trim(segments)
        ids, type_ids = text.combine_segments(trimmed, self.cls_id, self.sep_id)
        word_ids, mask = text.pad_model_inputs(ids, seq_length)
        type_ids, _ = text.pad_model_inputs(type_ids, seq_length)
        return {
            "input_word_ids": word_ids,
            "input_mask": mask,
            "input_type_ids": type_ids,
        }


class BertEncoder(tf.Module):
    """A two-layer BERT-shaped encoder over dict inputs, with dict outputs."""

    def __init__(self, vocab_size: int, width: int = ENCODER_WIDTH):
        super().__init__()
        rng = np.random.default_rng(2)

        def weight(shape, name):
            return tf.Variable(rng.normal(0, 0.5, shape).astype("float32"), name=name)

        self.word_embeddings = weight((vocab_size, width), "word_embeddings")
        self.type_embeddings = weight((2, width), "type_embeddings")
        self.layer_kernels = [
            weight((width, width), f"layer_{i}_kernel") for i in range(ENCODER_LAYERS)
        ]
        self.pooler_kernel = weight((width, width), "pooler_kernel")
        self.regularization_losses = []
        spec = {
            name: tf.TensorSpec([None, None], tf.int32, name=name)
            for name in ("input_word_ids", "input_mask", "input_type_ids")
        }
        self.__call__.get_concrete_function(spec, True)
        self.__call__.get_concrete_function(spec, False)

    @tf.function
    def __call__(self, inputs, training=False):
        x = tf.gather(self.word_embeddings, inputs["input_word_ids"])
        x += tf.gather(self.type_embeddings, inputs["input_type_ids"])
        mask = tf.cast(inputs["input_mask"], tf.float32)[..., None]
        encoder_outputs = []
        for kernel in self.layer_kernels:
            x = tf.tanh(tf.einsum("btw,wv->btv", x, kernel)) * mask
            if training:
                x = tf.nn.dropout(x, rate=0.1, seed=0)
            encoder_outputs.append(x)
        # Tokens do not mix in this tiny encoder, so pool over all of them
        # (a real BERT's [CLS] output sees the whole sentence).
        mean = tf.reduce_sum(x, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)
        pooled = tf.tanh(tf.matmul(mean, self.pooler_kernel))
        return {
            "pooled_output": pooled,
            "sequence_output": x,
            "encoder_outputs": encoder_outputs,
            "default": pooled,
        }


class SignatureOnlyModel(tf.Module):
    """Holds only variables; its computation is reachable as a signature."""

    def __init__(self):
        super().__init__()
        self.weights = tf.Variable([[1.0, -1.0], [2.0, 0.5], [0.0, 3.0]], name="w")


def _read_vocab(vocab_file: str) -> list[str]:
    with open(vocab_file) as f:
        return f.read().split()


def save_as_hub_model(module: tf.Module, path: str) -> str:
    """Saves `module` with the attributes of a TF Hub reusable SavedModel."""
    root = tf.__internal__.tracking.AutoTrackable()
    root.__call__ = module.__call__
    root.variables = list(module.variables)
    root.trainable_variables = list(module.trainable_variables)
    root.regularization_losses = list(getattr(module, "regularization_losses", []))
    for name in ("tokenize", "bert_pack_inputs"):
        if hasattr(module, name):
            setattr(root, name, getattr(module, name))
    root.module = module
    tf.saved_model.save(root, path)
    return path


def save_image_feature_vector(path: str, **kwargs) -> str:
    """Saves an `ImageFeatureVector` as a TF Hub SavedModel at `path`."""
    return save_as_hub_model(ImageFeatureVector(**kwargs), path)


def save_text_embedding(path: str) -> str:
    """Saves a `HashedTextEmbedding` (no `training` argument) at `path`."""
    return save_as_hub_model(HashedTextEmbedding(), path)


def save_bert_pair(directory: str) -> tuple[str, str]:
    """Saves a BERT-style preprocessor and encoder; returns their paths."""
    os.makedirs(directory, exist_ok=True)
    vocab_file = write_vocab(os.path.join(directory, "vocab.txt"))
    preprocessor_path = os.path.join(directory, "preprocessor")
    encoder_path = os.path.join(directory, "encoder")
    save_as_hub_model(BertPreprocessor(vocab_file), preprocessor_path)
    save_as_hub_model(BertEncoder(len(_read_vocab(vocab_file))), encoder_path)
    return preprocessor_path, encoder_path


def save_signature_only(path: str) -> str:
    """Saves a SavedModel whose only entry point is `serving_default`."""
    model = SignatureOnlyModel()

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32, name="x")])
    def serve(x):
        return {"y": tf.matmul(x, model.weights)}

    tf.saved_model.save(model, path, signatures={"serving_default": serve})
    return path


# Models of tensorflow_hub's own KerasLayer tests (keras_layer_test.py), for
# tests/test_hub_layer_contract.py. Each `save_*` that takes `from_keras`
# writes the model either by hand ("SavedRaw") or from a Keras 3 model the
# way `tftransfer.hubify` does ("SavedFromKeras").


def save_keras_model_as_hub(model, path: str, **attributes) -> str:
    """Saves a Keras 3 model as `tftransfer.hubify` does, plus `attributes`."""
    from tftransfer.backbones.reusable_saved_model import ReusableSavedModel

    spec = tf.TensorSpec(model.inputs[0].shape, model.inputs[0].dtype)
    module = ReusableSavedModel(model, spec)
    for name, value in attributes.items():
        setattr(module, name, value)
    tf.saved_model.save(module, path)
    return path


class HalfPlusOne(tf.Module):
    """y = w * x + 1 with trainable w = 0.5 (L2 0.01) and a frozen `+ 1`."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable([[0.5]], name="w")
        self.one_kernel = tf.Variable([[1.0]], trainable=False, name="one_kernel")
        self.one_bias = tf.Variable([1.0], trainable=False, name="one_bias")
        self.regularization_losses = [
            tf.function(lambda: 0.01 * tf.reduce_sum(self.w**2), input_signature=[])
        ]

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
    def __call__(self, x):
        return tf.matmul(tf.matmul(x, self.w), self.one_kernel) + self.one_bias


def save_half_plus_one(path: str, from_keras: bool = False) -> str:
    """Saves y = x/2 + 1: trainable kernel 0.5 (L2 0.01), frozen kernel and bias."""
    if not from_keras:
        return save_as_hub_model(HalfPlusOne(), path)
    import keras

    inputs = keras.Input((1,))
    times_w = keras.layers.Dense(
        1,
        use_bias=False,
        kernel_initializer=keras.initializers.Constant(0.5),
        kernel_regularizer=keras.regularizers.L2(0.01),
    )
    plus_one = keras.layers.Dense(
        1,
        kernel_initializer=keras.initializers.Constant(1.0),
        bias_initializer=keras.initializers.Constant(1.0),
        trainable=False,
    )
    return save_keras_model_as_hub(keras.Model(inputs, plus_one(times_w(inputs))), path)


class BatchNorm(tf.Module):
    """BatchNormalization of one feature, momentum 0.8, epsilon 1e-3."""

    def __init__(self):
        super().__init__()
        self.beta = tf.Variable([0.0], name="beta")
        self.gamma = tf.Variable([1.0], name="gamma")
        self.moving_mean = tf.Variable([0.0], trainable=False, name="moving_mean")
        self.moving_variance = tf.Variable(
            [1.0], trainable=False, name="moving_variance"
        )
        self.regularization_losses = []
        spec = tf.TensorSpec([None, 1], tf.float32)
        for training in (True, False):
            self.__call__.get_concrete_function(spec, training)

    @tf.function
    def __call__(self, x, training=False):
        if training:
            mean, variance = tf.nn.moments(x, axes=[0])
            self.moving_mean.assign(0.8 * self.moving_mean + 0.2 * mean)
            self.moving_variance.assign(0.8 * self.moving_variance + 0.2 * variance)
        else:
            mean, variance = self.moving_mean, self.moving_variance
        return tf.nn.batch_normalization(x, mean, variance, self.beta, self.gamma, 1e-3)


def save_batch_norm(path: str, from_keras: bool = False) -> str:
    """Saves a one-feature BatchNorm (beta, gamma trainable; statistics not)."""
    if not from_keras:
        return save_as_hub_model(BatchNorm(), path)
    import keras

    inputs = keras.Input((1,))
    outputs = keras.layers.BatchNormalization(momentum=0.8)(inputs)
    return save_keras_model_as_hub(keras.Model(inputs, outputs), path)


def save_with_hparams(path: str) -> str:
    """Saves y = a * x + b (hyperparameters a=1, b=0); it has no variables."""

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, 1], tf.float32),
            tf.TensorSpec([], tf.float32),
            tf.TensorSpec([], tf.float32),
        ]
    )
    def call(x, a=1.0, b=0.0):
        return a * x + b

    root = tf.__internal__.tracking.AutoTrackable()
    root.__call__ = call
    tf.saved_model.save(root, path)
    return path


def save_with_custom_attributes(
    path: str, scratch_dir: str, from_keras: bool = False
) -> str:
    """Saves a string -> int64 parser with attributes `sample_input`, `sample_output`.

    `sample_input` is an asset file holding "12345" (deleted from
    `scratch_dir` after saving) and `sample_output` a variable [[12345]]:
    the model called on the asset's text gives the variable's value.
    """
    os.makedirs(scratch_dir, exist_ok=True)
    source = os.path.join(scratch_dir, "number.txt")
    with open(source, "w") as f:
        f.write("12345\n")
    attributes = {
        "sample_input": tf.saved_model.Asset(source),
        "sample_output": tf.Variable([[12345]], dtype=tf.int64),
    }
    spec = tf.TensorSpec([None, 1], tf.string)
    if from_keras:
        import keras

        inputs = keras.Input((1,), dtype="string")
        parse = keras.layers.Lambda(
            lambda x: tf.strings.to_number(x, tf.int64), output_shape=(1,)
        )
        save_keras_model_as_hub(keras.Model(inputs, parse(inputs)), path, **attributes)
    else:
        root = tf.__internal__.tracking.AutoTrackable()
        root.__call__ = tf.function(
            lambda x: tf.strings.to_number(x, tf.int64), input_signature=[spec]
        )
        for name, value in attributes.items():
            setattr(root, name, value)
        tf.saved_model.save(root, path)
    os.remove(source)
    return path


def save_with_dict_input_output(path: str) -> str:
    """Saves {x, y} -> sigma = [x+y, x+2y], or {sigma, delta=x-y} if return_dict."""

    @tf.function
    def call(inputs, return_dict=False):
        x, y = inputs["x"], inputs["y"]
        sigma = tf.concat([x + y, x + 2 * y], axis=-1)
        return {"sigma": sigma, "delta": x - y} if return_dict else sigma

    spec = {key: tf.TensorSpec([None, 1], tf.float32) for key in ("x", "y")}
    for return_dict in (False, True):
        call.get_concrete_function(spec, return_dict=return_dict)
    root = tf.__internal__.tracking.AutoTrackable()
    root.__call__ = call
    tf.saved_model.save(root, path)
    return path


def save_with_obscurely_shaped_list_output(path: str) -> str:
    """Saves x -> [x, 2x, 3x] broadcast to [batch, 1], [batch, 2, 2], [batch, 3, 3, 3].

    The target shapes pass through random noise that rounds away, so the
    traced outputs have unknown dimensions: only their rank is known.
    """

    def broadcast_obscurely(x, shape):
        noise = 0.1 * tf.sin(tf.random.uniform((), -3.0, 3.0)) + 0.3
        return tf.broadcast_to(x, tf.cast(tf.cast(shape, tf.float32) + noise, tf.int32))

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
    def call(x):
        batch = tf.shape(x)[0:1]
        return [
            broadcast_obscurely(
                tf.reshape(i * x, tf.concat([batch, [1] * i], 0)),
                tf.concat([batch, [i] * i], 0),
            )
            for i in (1, 2, 3)
        ]

    root = tf.__internal__.tracking.AutoTrackable()
    root.__call__ = call
    tf.saved_model.save(root, path)
    return path


def save_plus_one(path: str) -> str:
    """Saves x -> x + 1 for float32 x of any shape; also its `serving_default`."""
    root = tf.__internal__.tracking.AutoTrackable()
    root.__call__ = tf.function(
        lambda x: x + 1, input_signature=[tf.TensorSpec(None, tf.float32)]
    )
    tf.saved_model.save(root, path)
    return path


def save_plus_one_with_keras_default_call(path: str) -> str:
    """Saves signature `plus_one` (x -> x + 1); `__call__(x, training)` differs.

    `__call__` returns x + 1 only with a true `training` tensor, so a layer
    that calls the signature is seen to call `plus_one`, not `__call__`.
    """
    root = tf.__internal__.tracking.AutoTrackable()
    root.plus_one = tf.function(
        lambda x: x + 1, input_signature=[tf.TensorSpec(None, tf.float32)]
    )

    @tf.function(
        input_signature=[tf.TensorSpec(None, tf.float32), tf.TensorSpec([], tf.bool)]
    )
    def keras_default(x, training=False):
        return x + 1 if training else x

    root.__call__ = keras_default
    tf.saved_model.save(root, path, signatures={"plus_one": root.plus_one})
    return path


class TextLengthEmbedding(tf.Module):
    """[batch, 1] strings -> length * w, w = [[0.1, 0.3]] trainable (L2 0.01)."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable([[0.1, 0.3]], name="w")
        self.regularization_losses = [
            tf.function(lambda: 0.01 * tf.reduce_sum(self.w**2), input_signature=[])
        ]

    @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.string)])
    def __call__(self, text):
        return tf.matmul(tf.cast(tf.strings.length(text), tf.float32), self.w)


def save_2d_text_embedding(path: str, from_keras: bool = False) -> str:
    """Saves [batch, 1] strings -> [batch, 2] float32 embeddings of their length."""
    if not from_keras:
        return save_as_hub_model(TextLengthEmbedding(), path)
    import keras

    inputs = keras.Input((1,), dtype="string")
    length = keras.layers.Lambda(
        lambda x: tf.cast(tf.strings.length(x), tf.float32), output_shape=(1,)
    )
    times_w = keras.layers.Dense(
        2,
        use_bias=False,
        kernel_initializer=keras.initializers.Constant([[0.1, 0.3]]),
        kernel_regularizer=keras.regularizers.L2(0.01),
    )
    return save_keras_model_as_hub(keras.Model(inputs, times_w(length(inputs))), path)


def save_with_two_output_signature(path: str) -> str:
    """Saves signature `serving_default`: x -> {"plus_one": x + 1, "minus_one": x - 1}."""
    root = tf.__internal__.tracking.AutoTrackable()
    root.serve = tf.function(
        lambda x: {"plus_one": x + 1, "minus_one": x - 1},
        input_signature=[tf.TensorSpec(None, tf.float32)],
    )
    tf.saved_model.save(root, path, signatures={"serving_default": root.serve})
    return path
