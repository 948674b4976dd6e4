"""Exported signatures: layout, model card, REST request bodies, verify, TFLite."""

import base64
import json
import types

import hub_fixtures
import keras
import numpy as np
import pytest
import tensorflow as tf
from export_fixtures import fitted_recipe

import tftransfer
from tftransfer.backbones.description import Backbone
from tftransfer.cli.inspection import inspect_savedmodel
from tftransfer.errors import ExportError
from tftransfer.export.tflite import interpreter_class
from tftransfer.recipes import FeatureExtraction

IMAGE_CLASSES = ["cat", "dog", "fox"]
TEXT_CLASSES = ["business", "music"]
SENTENCES = ["the man plays guitar", "stock market fell sharply today"]
# Longer than HUB_SEQ_LENGTH tokens, and with words outside the vocabulary.
LONG_SENTENCE = " ".join(["the band played a new song for the fans"] * 3)
HUB_SEQ_LENGTH = 12


def encoded_images(count=2, seed=0):
    rng = np.random.default_rng(seed)
    shapes = [(10, 12), (7, 9), (16, 16)]
    return [
        tf.io.encode_png(
            rng.integers(0, 255, (*shapes[i % 3], 3), dtype=np.uint8)
        ).numpy()
        for i in range(count)
    ]


def trained(model, inputs, labels):
    model.compile("sgd", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(inputs, np.asarray(labels), epochs=1, verbose=0)
    return model


@pytest.fixture(scope="module")
def image_backbone(image_model_path):
    return Backbone.from_hub(image_model_path, image_size=(8, 8))


def image_classifier(backbone):
    inputs = keras.Input((8, 8, 3))
    features = backbone.build(trainable=False)(inputs)
    outputs = keras.layers.Dense(3, activation="softmax")(features)
    return keras.Model(inputs, outputs, name="pets")


@pytest.fixture(scope="module")
def image_model(image_backbone):
    model = image_classifier(image_backbone)
    rng = np.random.default_rng(1)
    return trained(model, rng.random((6, 8, 8, 3), "float32"), [0, 1, 2, 0, 1, 2])


@pytest.fixture(scope="module")
def image_recipe(image_model, image_backbone):
    return fitted_recipe(
        image_model, image_backbone, IMAGE_CLASSES, "image_folder:/data/pets"
    )


@pytest.fixture(scope="module")
def image_export(image_recipe, tmp_path_factory):
    base = tmp_path_factory.mktemp("exports") / "pets"
    return tftransfer.export(image_recipe, base, top_k=2)


@pytest.fixture(scope="module")
def text_backbone(tmp_path_factory):
    vocab = hub_fixtures.write_vocab(str(tmp_path_factory.mktemp("vocab") / "v.txt"))
    preprocessor = hub_fixtures.BertPreprocessor(vocab)
    return types.SimpleNamespace(
        name="tiny_bert",
        handle="test://tiny_bert",
        source="hub_text",
        modality="text",
        seq_length=hub_fixtures.TEXT_SEQ_LENGTH,
        text_preprocessor=lambda: preprocessor.__call__,
    )


@pytest.fixture(scope="module")
def text_model(text_backbone):
    prepare = text_backbone.text_preprocessor()
    names = ("input_word_ids", "input_mask", "input_type_ids")
    inputs = {
        name: keras.Input((hub_fixtures.TEXT_SEQ_LENGTH,), dtype="int32", name=name)
        for name in names
    }
    embedded = keras.layers.Embedding(100, 4)(inputs["input_word_ids"])
    outputs = keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling1D()(embedded)
    )
    model = keras.Model(inputs, outputs, name="topics")
    return trained(model, prepare(tf.constant(SENTENCES)), [1, 0])


@pytest.fixture(scope="module")
def text_export(text_model, text_backbone, tmp_path_factory):
    base = tmp_path_factory.mktemp("exports") / "topics"
    return tftransfer.export(
        text_model,
        base,
        backbone=text_backbone,
        class_names=TEXT_CLASSES,
        prepare=text_backbone.text_preprocessor(),
    )


@pytest.fixture(scope="module")
def hub_text_backbone(bert_paths):
    preprocessor, encoder = bert_paths
    # Not the preprocessor's own length (16): packed via `bert_pack_inputs`.
    return Backbone.from_hub_text(preprocessor, encoder, seq_length=HUB_SEQ_LENGTH)


@pytest.fixture(scope="module")
def hub_text_model(hub_text_backbone):
    inputs = {
        name: keras.Input((HUB_SEQ_LENGTH,), dtype="int32", name=name)
        for name in ("input_word_ids", "input_mask", "input_type_ids")
    }
    features = hub_text_backbone.build(trainable=False)(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(features)
    model = keras.Model(inputs, outputs, name="news")
    tokens = hub_text_backbone.text_preprocessor()(tf.constant(SENTENCES))
    return trained(model, tokens, [1, 0])


@pytest.fixture(scope="module")
def hub_text_export(hub_text_model, hub_text_backbone, tmp_path_factory):
    """`hub_text_model` exported once; tests only read it."""
    return tftransfer.export(
        hub_text_model,
        tmp_path_factory.mktemp("exports") / "news",
        backbone=hub_text_backbone,
        class_names=TEXT_CLASSES,
    )


def load(path):
    return tf.saved_model.load(str(path))


def saved_values(path) -> int:
    """How many numbers the version's `variables/` checkpoint stores."""
    entries = tf.train.list_variables(str(path / "variables" / "variables"))
    return sum(
        int(np.prod(shape))
        for name, shape in entries
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    )


def rest_predict(signature, body: str) -> dict:
    """Answers a TF Serving REST `:predict` body the way the server encodes it."""
    request = json.loads(body)
    specs = signature.structured_input_signature[1]

    def decode(value):
        if isinstance(value, list):
            return [decode(v) for v in value]
        if isinstance(value, dict) and set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        return value

    def named(row):
        return isinstance(row, dict) and set(row) == set(specs)

    if "instances" in request:
        rows = request["instances"]
        columns = (
            {name: [row[name] for row in rows] for name in specs}
            if named(rows[0])
            else {next(iter(specs)): rows}
        )
    else:
        inputs = request["inputs"]
        columns = inputs if named(inputs) else {next(iter(specs)): inputs}
    feed = {
        name: tf.constant(decode(values), dtype=specs[name].dtype)
        for name, values in columns.items()
    }
    outputs = {
        name: as_json(value.numpy()) for name, value in signature(**feed).items()
    }
    if "instances" in request:
        count = len(next(iter(outputs.values())))
        return {
            "predictions": [{k: v[i] for k, v in outputs.items()} for i in range(count)]
        }
    return {"outputs": outputs}


def as_json(value):
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, list):
        return [as_json(v) for v in value]
    return value.decode("utf-8") if isinstance(value, bytes) else value


def b64(data: bytes) -> dict:
    return {"b64": base64.b64encode(data).decode("ascii")}


def test_image_export_writes_serving_layout_and_model_card(image_export):
    assert image_export.name == "1"
    assert (image_export / "saved_model.pb").is_file()
    assert (image_export / "variables" / "variables.index").is_file()
    labels = (image_export / "assets" / "labels.txt").read_text()
    assert labels.splitlines() == IMAGE_CLASSES
    card = json.loads((image_export / "model_card.json").read_text())
    assert card["version"] == 1 and card["name"] == "pets"
    assert card["class_names"] == IMAGE_CLASSES
    assert card["backbone"]["source"] == "hub"
    assert card["backbone"]["image_size"] == [8, 8]
    assert card["data_source"] == "image_folder:/data/pets"
    assert card["metrics"] == {"accuracy": 0.5}
    assert card["recipe_settings"]["epochs"] == 1
    assert card["library_versions"]["tensorflow"] == tf.__version__
    assert card["created"].endswith("+00:00")
    assert card["serving_ops"]["tf_text_version"] == "2.12.1"
    assert card["serving_ops"]["needs_tensorflow_text"] is False
    assert "DecodeImage" in card["serving_ops"]["ops"]
    default = card["signatures"]["serving_default"]
    assert default["inputs"] == {"image_bytes": {"dtype": "string", "shape": [-1]}}
    assert default["outputs"]["top_k_classes"] == {"dtype": "string", "shape": [-1, 2]}


def test_image_signatures_take_bytes_and_prepared_images(image_export):
    signatures = load(image_export).signatures
    assert sorted(signatures) == ["serving_default", "serving_prepared"]
    raw = signatures["serving_default"].structured_input_signature[1]
    assert raw["image_bytes"].dtype == tf.string and raw["image_bytes"].shape == [None]
    prepared = signatures["serving_prepared"].structured_input_signature[1]
    assert prepared["images"].shape.as_list() == [None, 8, 8, 3]
    outputs = signatures["serving_default"](image_bytes=tf.constant(encoded_images(3)))
    assert outputs["probabilities"].shape == (3, 3)
    np.testing.assert_allclose(outputs["probabilities"].numpy().sum(-1), 1, atol=1e-5)
    assert outputs["classes"].shape == (3,)
    assert outputs["top_k_scores"].shape == (3, 2)
    assert outputs["top_k_classes"].shape == (3, 2)
    best = outputs["probabilities"].numpy().argmax(-1)
    assert [c.decode() for c in outputs["classes"].numpy()] == [
        IMAGE_CLASSES[i] for i in best
    ]


def test_serving_default_matches_in_memory_model(image_export, image_recipe):
    images = encoded_images(3)
    served = load(image_export).signatures["serving_default"](
        image_bytes=tf.constant(images)
    )["probabilities"]
    prepare = tftransfer.data.prepare.prepare_fn(image_recipe.backbone)
    expected = image_recipe.model(prepare(tf.constant(images)))
    assert np.abs(served.numpy() - np.asarray(expected)).max() <= 1e-5


def test_rest_bodies_row_and_columnar_with_b64_images(image_export):
    signature = load(image_export).signatures["serving_default"]
    images = encoded_images(2)
    bodies = {
        "row": {"instances": [b64(image) for image in images]},
        "row_named": {"instances": [{"image_bytes": b64(image)} for image in images]},
        "columnar": {"inputs": {"image_bytes": [b64(image) for image in images]}},
        "columnar_bare": {"inputs": [b64(image) for image in images]},
    }
    answers = {k: rest_predict(signature, json.dumps(v)) for k, v in bodies.items()}
    for kind in ("row", "row_named"):
        predictions = answers[kind]["predictions"]
        assert len(predictions) == 2
        for prediction in predictions:
            assert len(prediction["probabilities"]) == 3
            assert prediction["classes"] in IMAGE_CLASSES
            assert len(prediction["top_k_classes"]) == 2
            assert prediction["top_k_classes"][0] == prediction["classes"]
    for kind in ("columnar", "columnar_bare"):
        outputs = answers[kind]["outputs"]
        assert np.asarray(outputs["probabilities"]).shape == (2, 3)
        assert outputs["classes"] == [
            p["classes"] for p in answers["row"]["predictions"]
        ]


def test_rest_bodies_with_raw_strings_for_text_model(text_export):
    signature = load(text_export).signatures["serving_default"]
    row = rest_predict(signature, json.dumps({"instances": SENTENCES}))
    columnar = rest_predict(signature, json.dumps({"inputs": {"text": SENTENCES}}))
    assert len(row["predictions"]) == 2
    assert all(p["classes"] in TEXT_CLASSES for p in row["predictions"])
    assert np.asarray(columnar["outputs"]["probabilities"]).shape == (2, 2)
    assert columnar["outputs"]["classes"] == [p["classes"] for p in row["predictions"]]


def test_text_prepared_signature_takes_the_token_dict(text_export, text_backbone):
    signatures = load(text_export).signatures
    specs = signatures["serving_prepared"].structured_input_signature[1]
    assert sorted(specs) == ["input_mask", "input_type_ids", "input_word_ids"]
    assert all(spec.dtype == tf.int32 for spec in specs.values())
    tokens = text_backbone.text_preprocessor()(tf.constant(SENTENCES))
    prepared = signatures["serving_prepared"](**tokens)["probabilities"]
    raw = signatures["serving_default"](text=tf.constant(SENTENCES))["probabilities"]
    np.testing.assert_allclose(prepared.numpy(), raw.numpy(), atol=1e-6)


def test_each_weight_is_stored_once_and_tables_still_serve(
    text_export, text_model, image_export, image_model
):
    # Stored: the weights (once, not again for the Keras variable or the hub
    # layer's SavedModel, and no optimizer state) and the vocabulary table
    # that the preprocessor holds in a closure, which serving needs.
    assert saved_values(text_export) == text_model.count_params()
    assert saved_values(image_export) == image_model.count_params()
    outputs = load(text_export).signatures["serving_default"](
        text=tf.constant(SENTENCES)
    )
    assert outputs["probabilities"].shape == (2, 2)


def test_inspect_counts_the_values_the_savedmodel_stores(
    hub_text_model, hub_text_export
):
    info = inspect_savedmodel(str(hub_text_export))
    assert info["parameters"] == saved_values(hub_text_export)
    assert info["parameters"] == hub_text_model.count_params()


def test_raw_text_encoder_prepared_signature_takes_text(text_embedding_path, tmp_path):
    # An encoder that takes raw strings (like the Universal Sentence Encoder):
    # its preparation passes the strings through.
    backbone = Backbone.from_hub_text(None, text_embedding_path)
    inputs = keras.Input((), dtype="string")
    outputs = keras.layers.Dense(2, activation="softmax")(backbone.build()(inputs))
    model = keras.Model(inputs, outputs, name="sentences")
    path = tftransfer.export(
        model, tmp_path / "m", backbone=backbone, class_names=TEXT_CLASSES
    )
    prepared = load(path).signatures["serving_prepared"]
    (name,) = prepared.structured_input_signature[1]
    assert name == "text"
    served = prepared(text=tf.constant(SENTENCES))["probabilities"]
    expected = model(tf.constant(SENTENCES))
    np.testing.assert_allclose(served.numpy(), np.asarray(expected), atol=1e-6)


def test_bytes_that_are_no_image_raise_invalid_argument(image_export):
    signature = load(image_export).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="image"):
        signature(image_bytes=tf.constant([encoded_images(1)[0], b"not an image"]))


def test_verify_loads_image_model_without_tftransfer(
    image_export, image_recipe, capsys
):
    report = tftransfer.export.verify(
        image_export, encoded_images(2), model=image_recipe
    )
    assert report.max_abs_difference <= 1e-5
    assert report.input_name == "image_bytes"
    assert "tftransfer" not in report.imported
    assert "tensorflow_text" not in report.imported
    assert report.outputs["probabilities"]["shape"] == [2, 3]
    printed = capsys.readouterr().out
    assert "signature_def['serving_default']" in printed
    assert "inputs['image_bytes'] tensor_info" in printed
    assert "signature_def['serving_prepared']" in printed


def test_verify_text_model_imports_tensorflow_text(
    text_export, text_model, text_backbone
):
    report = tftransfer.export.verify(
        text_export,
        SENTENCES,
        model=text_model,
        prepare=text_backbone.text_preprocessor(),
        print_signatures=False,
    )
    assert report.max_abs_difference <= 1e-5
    assert report.imported == ["keras", "tensorflow_text"]
    assert report.outputs["classes"]["shape"] == [2]
    assert "inputs['text'] tensor_info" in report.saved_model_cli


def test_export_and_verify_print_nothing_without_print_signatures(
    image_recipe, tmp_path, capfd
):
    capfd.readouterr()
    path = tftransfer.export(image_recipe, tmp_path / "pets")
    report = tftransfer.export.verify(
        path, encoded_images(1), model=image_recipe, print_signatures=False
    )
    out, err = capfd.readouterr()
    assert "signature_def" not in out + err
    assert out == ""
    assert "signature_def['serving_default']" in report.saved_model_cli


def test_verify_reports_a_different_preparation(image_export, image_recipe):
    def other_prepare(raw):
        return tftransfer.data.prepare.prepare_fn(image_recipe.backbone)(raw) * 0.5

    with pytest.raises(ExportError, match="differ from the in-memory model"):
        tftransfer.export.verify(
            image_export,
            encoded_images(2),
            model=image_recipe.model,
            prepare=other_prepare,
            print_signatures=False,
        )


def test_next_export_writes_next_version_and_keeps_earlier(image_recipe, tmp_path):
    first = tftransfer.export(image_recipe, tmp_path / "pets")
    before = (first / "saved_model.pb").read_bytes()
    second = tftransfer.export(image_recipe, tmp_path / "pets")
    assert (first.name, second.name) == ("1", "2")
    assert (first / "saved_model.pb").read_bytes() == before
    with pytest.raises(ExportError, match="Version 2 already exists"):
        tftransfer.export(image_recipe, tmp_path / "pets", version=2)


def test_default_base_path_is_saved_models_in_current_folder(
    image_recipe, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    path = tftransfer.export(image_recipe, name="pets")
    assert path == tftransfer.export.exporter.Path("saved_models/pets/1")
    assert (tmp_path / "saved_models" / "pets" / "1" / "saved_model.pb").is_file()


def test_unbuilt_model_is_refused(image_backbone, tmp_path):
    model = keras.Sequential([keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(ExportError, match="is not built"):
        tftransfer.export(
            model, tmp_path / "m", backbone=image_backbone, class_names=IMAGE_CLASSES
        )
    assert not (tmp_path / "m").exists()


def test_fitted_feature_extraction_recipe_is_exported(image_backbone, tmp_path):
    rng = np.random.default_rng(4)
    train = tf.data.Dataset.from_tensor_slices(
        (rng.random((12, 8, 8, 3), "float32"), rng.integers(0, 3, 12))
    ).batch(4)
    recipe = FeatureExtraction(
        image_backbone,
        head_epochs=1,
        cache_dir=tmp_path / "cache",
        run_dir=tmp_path / "run",
        strategy="default",
        verbose=0,
    )
    recipe.fit(train, class_names=IMAGE_CLASSES)
    # The head trained on cached features; the joined model has no optimizer.
    assert getattr(recipe.model, "optimizer", None) is None
    path = tftransfer.export(recipe, tmp_path / "pets")
    images = encoded_images(3)
    served = load(path).signatures["serving_default"](image_bytes=tf.constant(images))
    prepare = tftransfer.data.prepare.prepare_fn(image_backbone)
    expected = np.asarray(recipe.model(prepare(tf.constant(images))))
    assert np.abs(served["probabilities"].numpy() - expected).max() <= 1e-5
    card = json.loads((path / "model_card.json").read_text())
    assert card["recipe_settings"]["recipe"] == "feature_extraction"


def test_unfitted_recipe_is_refused(image_backbone, tmp_path):
    recipe = FeatureExtraction(image_backbone, run_dir=tmp_path / "run", verbose=0)
    with pytest.raises(ExportError, match="FeatureExtraction recipe is not fitted"):
        tftransfer.export(recipe, tmp_path / "m", class_names=IMAGE_CLASSES)
    assert not (tmp_path / "m").exists()


def test_model_with_loaded_weights_is_exported(
    image_model, image_backbone, image_export, tmp_path
):
    weights = tmp_path / "pets.weights.h5"
    image_model.save_weights(weights)
    restored = image_classifier(image_backbone)
    restored.load_weights(weights)
    assert getattr(restored, "optimizer", None) is None
    path = tftransfer.export(
        restored, tmp_path / "m", backbone=image_backbone, class_names=IMAGE_CLASSES
    )
    images = tf.constant(encoded_images(2))
    served, served_trained = (
        load(p).signatures["serving_default"](image_bytes=images)["probabilities"]
        for p in (path, image_export)
    )
    np.testing.assert_allclose(served.numpy(), served_trained.numpy(), atol=1e-6)


def test_class_names_must_match_outputs(image_model, image_backbone, tmp_path):
    with pytest.raises(ExportError, match="has 3 outputs per example but 2"):
        tftransfer.export(
            image_model, tmp_path / "m", backbone=image_backbone, class_names=["a", "b"]
        )


@pytest.mark.parametrize("quantization", ["dynamic_range", "float16"])
def test_tflite_export_records_accuracy_change(image_recipe, tmp_path, quantization):
    rng = np.random.default_rng(3)
    images = rng.random((8, 8, 8, 3), "float32")
    validation = tf.data.Dataset.from_tensor_slices(
        (images, rng.integers(0, 3, 8))
    ).batch(4)
    path = tftransfer.export(
        image_recipe,
        tmp_path / "pets",
        tflite=tftransfer.export.TFLiteOptions(validation, quantization),
    )
    assert (path / "model.tflite").is_file() and (path / "saved_model.pb").is_file()
    facts = json.loads((path / "model_card.json").read_text())["tflite"]
    assert facts["quantization"] == quantization
    assert facts["validation_examples"] == 8
    assert facts["accuracy_change"] == pytest.approx(
        facts["accuracy_tflite"] - facts["accuracy_keras"]
    )
    assert facts["max_abs_output_difference"] < 0.05


def test_hub_text_export_serves_raw_strings_like_in_memory_model(
    hub_text_model, hub_text_backbone, hub_text_export
):
    path = hub_text_export
    card = json.loads((path / "model_card.json").read_text())
    assert card["serving_ops"]["needs_tensorflow_text"] is True
    assert card["serving_ops"]["allowed_by_override"] == []
    assert "WordpieceTokenizeWithOffsets" in card["serving_ops"]["ops"]
    assert card["backbone"]["seq_length"] == HUB_SEQ_LENGTH
    prepared = card["signatures"]["serving_prepared"]["inputs"]
    assert prepared["input_word_ids"] == {
        "dtype": "int32",
        "shape": [-1, HUB_SEQ_LENGTH],
    }
    strings = [*SENTENCES, LONG_SENTENCE]
    tokens = hub_text_backbone.text_preprocessor()(tf.constant(strings))
    assert tokens["input_mask"].numpy()[-1].all()  # trimmed to HUB_SEQ_LENGTH
    expected = np.asarray(hub_text_model(tokens, training=False))
    served = load(path).signatures["serving_default"](text=tf.constant(strings))
    assert np.abs(served["probabilities"].numpy() - expected).max() <= 1e-5
    report = tftransfer.export.verify(
        path,
        strings,
        model=hub_text_model,
        backbone=hub_text_backbone,
        print_signatures=False,
    )
    assert report.max_abs_difference <= 1e-5
    assert "tftransfer" not in report.imported


def test_hub_text_tflite_takes_the_token_tensors(
    hub_text_model, hub_text_backbone, tmp_path
):
    strings = [*SENTENCES, LONG_SENTENCE, "a song"]
    tokens = hub_text_backbone.text_preprocessor()(tf.constant(strings))
    validation = tf.data.Dataset.from_tensor_slices((tokens, [1, 0, 1, 1])).batch(2)
    path = tftransfer.export(
        hub_text_model,
        tmp_path / "news",
        backbone=hub_text_backbone,
        class_names=TEXT_CLASSES,
        tflite=tftransfer.export.TFLiteOptions(validation, quantization="none"),
    )
    interpreter = interpreter_class()(model_path=str(path / "model.tflite"))
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    assert sorted(inputs) == ["input_mask", "input_type_ids", "input_word_ids"]
    for detail in inputs.values():
        assert detail["dtype"] == np.int32
        assert detail["shape_signature"].tolist() == [-1, HUB_SEQ_LENGTH]
    facts = json.loads((path / "model_card.json").read_text())["tflite"]
    assert facts["validation_examples"] == 4
    assert facts["max_abs_output_difference"] <= 1e-5
    assert facts["accuracy_change"] == 0.0
