"""The optional `explain` signature: raw inputs to the predicted output and
its attributions, so that a served model can say why.

Integrated gradients run inside the serving graph (`tftransfer.explain.graph`):
on pixels for images, on the token embeddings for text, summed per
whitespace word. Every op is core TensorFlow or the TF Text tokenizer the
model's own preparation uses, so the signature passes the TF Serving op
check like the default ones.
"""

from __future__ import annotations

import tensorflow as tf

from tftransfer.errors import ExportError
from tftransfer.explain import graph, layers
from tftransfer.export.signatures import RAW_INPUT_NAMES

EXPLAIN_SIGNATURE = "explain"


def add_explain_signature(archive, steps: int = graph.SERVING_STEPS) -> None:
    """Adds the `explain` signature through `archive.add_signature()`.

    It takes the raw inputs of `serving_default` (`image_bytes` or `text`)
    and returns, per input, the model's largest output: `target` (int32,
    its index), `target_name` (its class, label or target name) and
    `score` (float32, its value), with the integrated gradients of it.
    Images: `attributions` float32 `[batch, height, width]` over the
    prepared image, from a black baseline. Text: `words` string
    `[batch, words]` (split on whitespace, `""` past a text's end) and
    `word_attributions` float32 `[batch, words]` (0 past the model's
    sequence length), from the `[PAD]` embedding baseline. Both use
    `steps` equally spaced midpoints of the path (see
    `tftransfer.explain.graph`).

    Args:
        archive: A `tftransfer.export.ServingArchive`.
        steps: Points of the path per input.

    Raises:
        ExportError: for a text model whose token embedding lookup Keras
            cannot see (a TF Hub encoder hides it), or whose preprocessor
            has no BERT-style `tokenize()` or fixed sequence length.
    """
    model = archive.model
    labels = archive.labels_table

    def predicted(outputs):
        outputs = tf.cast(outputs, tf.float32)
        targets = tf.argmax(outputs, axis=-1, output_type=tf.int32)
        return targets, {
            "target": targets,
            "target_name": labels.lookup(tf.cast(targets, tf.int64)),
            "score": tf.gather(outputs, targets, batch_dims=1),
        }

    if archive.modality == "image":
        low = float(archive.backbone.value_range[0])

        def explain_images(raw):
            images = archive.prepare(raw)
            targets, result = predicted(model(images, training=False))
            attributions = graph.image_attributions(model, images, targets, low, steps)
            return {**result, "attributions": attributions}

        function = explain_images
    else:
        function = _text_function(archive, predicted, steps)
    raw_spec = tf.TensorSpec([None], tf.string, name=RAW_INPUT_NAMES[archive.modality])
    archive.add_signature(EXPLAIN_SIGNATURE, function, raw_spec)


def _text_function(archive, predicted, steps):
    model = archive.model
    embedding = layers.token_embedding(model)
    preprocessor = archive.backbone.text_preprocessor()
    spec = archive.prepared_input_spec
    seq_length = spec["input_word_ids"].shape[-1] if isinstance(spec, dict) else None
    if embedding is None or not hasattr(preprocessor, "tokenize") or not seq_length:
        raise ExportError(
            f"The explain signature needs integrated gradients on the token "
            f"embeddings of model {model.name!r}, but its embedding lookup is "
            "hidden (a TF Hub SavedModel hides it) or its preprocessor has no "
            "BERT-style tokenize() with a fixed sequence length. Export it "
            "without explain=True; `tftransfer explain` explains such a served "
            "model by leave-one-word-out occlusion through serving_default."
        )
    padding_id = int(archive.prepare(tf.constant([""]))["input_word_ids"][0, -1])

    def explain_text(raw):
        prepared = archive.prepare(raw)
        targets, result = predicted(model(prepared, training=False))
        words, positions = graph.word_layout(preprocessor, raw, seq_length)
        tokens = graph.token_attributions(
            model,
            embedding,
            prepared,
            tf.cast(positions >= 0, tf.float32),
            padding_id,
            targets,
            steps,
        )
        return {
            **result,
            "words": words.to_tensor(""),
            "word_attributions": graph.word_sums(words, positions, tokens),
        }

    return explain_text
