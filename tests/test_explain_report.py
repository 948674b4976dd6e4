"""The run report's attributions: heat maps and shaded words in its most
confidently wrong and typical correct sections."""

import functools
import json

import explain_fixtures
import numpy as np
import pytest
from data_fixtures import signal_images, tiny_recipe

from tftransfer import data, evaluation
from tftransfer.explain import explain
from tftransfer.recipes import FeatureExtraction
from tftransfer.recipes.tasks import task_metrics


def test_typical_correct_takes_each_classs_median_confidence():
    labels = np.array([0, 0, 0, 1, 1, 2])
    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],
            [0.5, 0.3, 0.2],
            [0.7, 0.2, 0.1],
            [0.1, 0.8, 0.1],
            [0.6, 0.3, 0.1],  # wrong: not a candidate
            [0.1, 0.1, 0.8],
        ]
    )
    assert evaluation.typical_correct(labels, probabilities, 5) == [2, 3, 5]
    assert evaluation.typical_correct(labels, probabilities, 1) == [2]


def test_image_report_shows_heat_maps_of_worst_and_typical_predictions(tmp_path):
    pixels, signal = signal_images(48)
    labeled = data.from_arrays(pixels, np.where(signal > 0.5, "bright", "dark"))
    parts = data.split(labeled, validation=0.25, seed=0)
    recipe = tiny_recipe(FeatureExtraction, tmp_path, head_epochs=2)
    recipe.fit(parts.train, parts.validation)
    inputs = [x for x, _ in labeled.dataset.as_numpy_iterator()]
    labels = np.array([y for _, y in labeled.dataset.as_numpy_iterator()])
    probabilities = recipe.predict(labeled)
    metrics = task_metrics("classification", labels, probabilities, recipe.class_names)
    page = evaluation.write_report(
        tmp_path / "report",
        metrics=metrics,
        history=recipe.history.history,
        labels=labels,
        probabilities=probabilities,
        inputs=inputs,
        input_format="pixels",
        title="signal",
        confidently_wrong_count=2,
        explainer=functools.partial(explain, recipe),
    )
    folder = tmp_path / "report"
    worst = json.loads((folder / "confidently_wrong.json").read_text())
    typical = json.loads((folder / "typical_correct.json").read_text())
    assert len(typical) == 2 and {row["predicted"] for row in typical} == {
        "bright",
        "dark",
    }
    for row in [*worst, *typical]:
        assert row["explanation"]["method"] == "integrated_gradients"
        assert row["explanation"]["completeness_gap"] < 0.01
        assert len(row["explanation"]["top"]) == evaluation.TOP_PARTS
        assert (folder / row["attributions_image"]).stat().st_size > 0
    text = page.read_text()
    assert "Typical correct predictions" in text and "Most confidently wrong" in text
    # Thumbnail and heat map, both embedded, for every explained example.
    shown = len(worst) + len(typical)
    assert text.count('src="data:image/png;base64,') == 2 + 2 * shown
    assert 'src="typical_correct/' not in text


@pytest.fixture(scope="module")
def text_model():
    return explain_fixtures.text_model()


def test_text_report_shades_the_words_that_carried_the_prediction(text_model, tmp_path):
    model, backbone = text_model
    texts, labels = explain_fixtures.keyword_texts(24, seed=3)
    prepared = backbone.text_preprocessor()(np.array(texts))
    probabilities = np.asarray(model(prepared))
    names = ["other", "sport"]
    metrics = task_metrics("classification", labels, probabilities, names)
    page = evaluation.write_report(
        tmp_path,
        metrics=metrics,
        history={"loss": [1.0, 0.5]},
        labels=labels,
        probabilities=probabilities,
        inputs=[t.encode() for t in texts],
        input_format="text",
        title="keyword",
        explainer=functools.partial(
            explain, model, backbone=backbone, class_names=names
        ),
    )
    typical = json.loads((tmp_path / "typical_correct.json").read_text())
    (sport,) = [row for row in typical if row["predicted"] == "sport"]
    assert sport["explanation"]["top"][0][0] == explain_fixtures.KEYWORD
    text = page.read_text()
    assert text.count('<span class="shaded">') == len(typical) + len(
        json.loads((tmp_path / "confidently_wrong.json").read_text())
    )
    assert f">{explain_fixtures.KEYWORD}</span>" in text
    assert "integrated_gradients for sport" in text


def test_regression_reports_leave_attributions_out(tmp_path):
    targets = np.array([[0.1], [0.5], [0.9]])
    outputs = np.array([[0.2], [0.4], [0.1]])
    metrics = task_metrics("regression", targets, outputs, ["price"])

    def refuse(inputs):
        raise AssertionError("a regression report explains nothing")

    page = evaluation.write_report(
        tmp_path,
        metrics=metrics,
        history={"loss": [1.0]},
        labels=targets,
        probabilities=outputs,
        inputs=["a", "b", "c"],
        input_format="text",
        title="prices",
        explainer=refuse,
    )
    assert "Typical correct" not in page.read_text()
    assert not (tmp_path / "typical_correct.json").exists()
