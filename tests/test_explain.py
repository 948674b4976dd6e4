"""tftransfer.explain: integrated gradients, Grad-CAM and occlusion on tiny
image and text models, their completeness and sanity checks, rendering."""

import explain_fixtures
import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import signal_images, tiny_recipe

from tftransfer import data
from tftransfer.backbones import Backbone
from tftransfer.backbones.text_preprocessing import BertTextPreprocessor
from tftransfer.errors import ArgumentError
from tftransfer.explain import explain, render, text
from tftransfer.recipes import FeatureExtraction


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two flat arrays (no ties expected)."""
    ranks_a = np.argsort(np.argsort(a.ravel()))
    ranks_b = np.argsort(np.argsort(b.ravel()))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def randomised(model: keras.Model, seed: int = 1) -> keras.Model:
    """A copy of `model` with every weight redrawn (Adebayo et al.'s
    cascading randomisation, all layers), each at its own scale."""
    clone = keras.models.clone_model(model)
    rng = np.random.default_rng(seed)
    for weight in clone.weights:
        value = np.asarray(weight.numpy())
        scale = float(value.std()) or 0.1
        weight.assign(rng.normal(0.0, scale, value.shape).astype(value.dtype))
    return clone


@pytest.fixture(scope="module")
def image_model():
    return explain_fixtures.image_model()


@pytest.fixture(scope="module")
def text_model():
    return explain_fixtures.text_model()


def test_integrated_gradients_add_up_to_the_change_of_an_image_models_output(
    image_model,
):
    model, backbone, pixels = image_model
    explanations = explain(model, list(pixels[:8]), backbone=backbone)
    for explanation in explanations:
        change = explanation.score - explanation.baseline_score
        assert abs(change) > 0.05
        assert explanation.completeness_gap < 0.01
        assert explanation.attributions.shape == (8, 8)
        assert explanation.image.dtype == np.uint8


def test_integrated_gradients_add_up_on_token_embeddings_and_keyword_comes_first(
    text_model,
):
    model, backbone = text_model
    texts, labels = explain_fixtures.keyword_texts(40, seed=1)
    with_keyword = [t for t, label in zip(texts, labels, strict=True) if label]
    explanations = explain(model, with_keyword, backbone=backbone)
    assert [e.target for e in explanations] == [1] * len(with_keyword)
    gaps = [e.completeness_gap for e in explanations]
    assert max(gaps) < 0.01, gaps
    first = [e.top(1)[0][0] == explain_fixtures.KEYWORD for e in explanations]
    assert np.mean(first) >= 0.9


def test_attributions_of_trained_and_randomised_weights_differ(image_model, text_model):
    """Adebayo et al.'s model randomisation test: each input's attributions
    to the trained model's predicted class, by the trained model and by the
    randomised one, have a mean Spearman rank correlation below 0.5."""

    def correlations(model, backbone, inputs):
        random = randomised(model)
        values = []
        for raw in inputs:
            trained = explain(model, [raw], backbone=backbone)[0]
            other = explain(random, [raw], backbone=backbone, target=trained.target)
            values.append(rank_correlation(trained.attributions, other[0].attributions))
        return values

    model, backbone, pixels = image_model
    image = correlations(model, backbone, list(pixels[:6]))
    model, backbone = text_model
    texts, _ = explain_fixtures.keyword_texts(10, seed=2)
    text = correlations(model, backbone, texts)
    assert np.mean(image) < 0.5, image
    assert np.mean(text) < 0.5, text


def test_grad_cam_and_integrated_gradients_on_a_keras_application():
    backbone = Backbone.from_keras_application(
        "MobileNetV2", weights=None, image_size=(64, 64)
    )
    model = keras.Sequential(
        [
            keras.Input((64, 64, 3)),
            backbone.build(),
            keras.layers.Dense(3, activation="softmax"),
        ]
    )
    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3)).astype("uint8")
    cam = explain(model, [image], method="grad_cam", backbone=backbone)[0]
    assert cam.attributions.shape == (64, 64)
    assert cam.attributions.min() >= 0 and cam.attributions.max() > 0
    assert cam.baseline_score is None and cam.completeness_gap is None
    integrated = explain(model, [image], backbone=backbone, target=2)[0]
    assert integrated.target == 2 and integrated.attributions.shape == (64, 64)


def test_grad_cam_refuses_a_hub_layer_that_hides_its_feature_maps(image_model_path):
    backbone = Backbone.from_hub(image_model_path, image_size=(8, 8))
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), backbone.build(), keras.layers.Dense(2)]
    )
    image = np.zeros((8, 8, 3), "uint8")
    with pytest.raises(ArgumentError, match="grad_cam.*TF Hub SavedModel hides"):
        explain(model, [image], method="grad_cam", backbone=backbone)
    # Pixels stay reachable through the SavedModel: integrated gradients work.
    integrated = explain(model, [image + 200], backbone=backbone)[0]
    assert integrated.method == "integrated_gradients"
    assert integrated.attributions.shape == (8, 8)
    assert abs(integrated.score - integrated.baseline_score) > 0.05
    assert integrated.completeness_gap < 0.01


def test_a_hub_text_encoder_is_explained_by_occlusion_and_says_so(bert_paths):
    backbone = Backbone.from_hub_text(*bert_paths, seq_length=16)
    inputs = {
        key: keras.Input((16,), dtype="int32", name=key)
        for key in ("input_word_ids", "input_mask", "input_type_ids")
    }
    keras.utils.set_random_seed(0)
    model = keras.Model(
        inputs, keras.layers.Dense(2, activation="softmax")(backbone.build()(inputs))
    )
    sentence = "the quick brown fox"
    with pytest.warns(UserWarning, match="hides.*leave-one-word-out occlusion"):
        explanation = explain(model, [sentence], backbone=backbone)[0]
    assert explanation.method == "occlusion"
    assert "TF Hub SavedModel" in explanation.note
    assert explanation.words == sentence.split()
    prepare = data.prepare_fn(backbone)
    without_fox = model(prepare(tf.constant(["the quick brown"])))[0]
    expected = explanation.score - float(without_fox[explanation.target])
    np.testing.assert_allclose(explanation.attributions[3], expected, rtol=1e-5)


def test_patch_occlusion_spreads_each_patchs_drop_over_its_pixels(image_model):
    model, backbone, pixels = image_model
    explanation = explain(model, [pixels[0]], method="occlusion", backbone=backbone)[0]
    image = pixels[0] / 255.0
    hidden = image.copy()
    hidden[0:1, 0:1] = 0.0  # 8 patches per side of 8 pixels: one pixel each.
    drop = explanation.score - float(model(hidden[None])[0, explanation.target])
    assert explanation.attributions[0, 0] == pytest.approx(drop, abs=1e-6)
    empty = float(model(np.zeros((1, 8, 8, 3)))[0, explanation.target])
    assert explanation.baseline_score == pytest.approx(empty, abs=1e-6)


def test_word_pieces_map_to_their_words_and_words_past_the_cut_get_none():
    preprocessor = BertTextPreprocessor(
        explain_fixtures.VOCABULARY, lowercase=True, seq_length=6
    )
    words = text.split_words("Rugby, games the news")
    ids = preprocessor(tf.constant([" ".join(words)]))["input_word_ids"][0].numpy()
    positions = text.word_positions(preprocessor, words, ids)
    # [CLS] rugby , game ##s [SEP]: "Rugby," and "games" are two pieces each.
    assert positions.tolist() == [-1, 0, 0, 1, 1, -1]
    sums = text.word_sums(np.array([9.0, 1, 2, 3, 4, 9]), positions, len(words))
    assert sums[:2].tolist() == [3.0, 7.0]
    assert np.isnan(sums[2:]).all()


def test_explain_takes_a_fitted_recipe_and_names_the_class(tmp_path):
    pixels, signal = signal_images(48)
    labeled = data.from_arrays(pixels, np.where(signal > 0.5, "bright", "dark"))
    recipe = tiny_recipe(FeatureExtraction, tmp_path, head_epochs=2)
    with pytest.raises(ArgumentError, match="not fitted"):
        explain(recipe, [pixels[0]])
    parts = data.split(labeled, validation=0.25, seed=0)
    recipe.fit(parts.train, parts.validation)
    explanation = explain(recipe, [pixels[0]], method="occlusion")[0]
    assert explanation.target_name == recipe.class_names[explanation.target]
    with pytest.raises(ArgumentError, match="method=.*saliency"):
        explain(recipe, [pixels[0]], method="saliency")
    with pytest.raises(ArgumentError, match="target=7"):
        explain(recipe, [pixels[0]], target=7)
    with pytest.raises(ArgumentError, match="steps=0"):
        explain(recipe, [pixels[0]], steps=0)


def test_grad_cam_refuses_text(text_model):
    model, backbone = text_model
    with pytest.raises(ArgumentError, match="grad_cam.*text"):
        explain(model, ["the rugby game"], method="grad_cam", backbone=backbone)


def test_renders_heat_maps_and_shaded_words(image_model, text_model, tmp_path):
    model, backbone, pixels = image_model
    image = explain(model, [pixels[0]], backbone=backbone)[0]
    overlay = render.overlay(image)
    assert overlay.shape == (8, 8, 3) and overlay.dtype == np.uint8
    strongest = np.unravel_index(np.abs(image.attributions).argmax(), (8, 8))
    assert not np.array_equal(overlay[strongest], image.image[strongest])
    model, backbone = text_model
    words = explain(model, ["the <b>rugby</b> game"], backbone=backbone)[0]
    shaded = render.shaded_text(words)
    assert "&lt;b&gt;rugby&lt;/b&gt;" in shaded and shaded.count("<span") == 4
    page = render.page([image, words], ["red.png", "text.txt"], "why", tmp_path)
    content = page.read_text()
    assert "data:image/png;base64," in content and "rugby" in content
    assert "integrated_gradients for output 1" in render.summary(words)


def test_heat_map_shows_regions_despite_an_extreme_pixel_and_speckle():
    from tftransfer.explain.explanation import Explanation

    rng = np.random.default_rng(0)
    # Speckled signs everywhere, stronger in the top-left quarter, and one
    # extreme pixel in the bottom-right corner.
    attributions = rng.choice([-1.0, 1.0], size=(64, 64)) * 0.05
    attributions[:32, :32] *= 20
    attributions[63, 63] = 1e4
    picture = Explanation(
        method="integrated_gradients",
        target=0,
        target_name=None,
        score=1.0,
        baseline_score=0.0,
        attributions=attributions,
        words=None,
        image=np.full((64, 64, 3), 128, np.uint8),
        note="",
    )
    tint = render.overlay(picture)[..., 0].astype(int) - 128  # red added
    # The strong quarter is clearly tinted, the weak rest barely, although
    # one pixel holds almost all the magnitude and the signs alternate.
    assert tint[4:28, 4:28].mean() > 40
    assert tint[36:60, 4:28].mean() < 0.2 * tint[4:28, 4:28].mean()
