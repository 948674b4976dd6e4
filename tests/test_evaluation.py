"""The run report: files, plots, confident mistakes and the HTML page."""

import base64
import json
import re

import numpy as np
import pytest
import tensorflow as tf

from tftransfer import evaluation
from tftransfer.recipes.metrics import classification_metrics

HISTORY = {
    "loss": [1.0, 0.5],
    "accuracy": [0.6, 0.8],
    "val_loss": [0.9, 0.6],
    "val_accuracy": [0.7, 0.75],
}


def test_confidently_wrong_orders_mistakes_by_confidence():
    labels = np.array([0, 1, 0, 1])
    probabilities = np.array([[0.4, 0.6], [0.1, 0.9], [0.05, 0.95], [0.8, 0.2]])
    assert evaluation.confidently_wrong(labels, probabilities, 5) == [2, 3, 0]
    assert evaluation.confidently_wrong(labels, probabilities, 1) == [2]


def test_text_report_writes_every_file_and_shows_snippets(tmp_path):
    labels = np.array([0, 1, 1])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    metrics = classification_metrics(labels, probabilities, ["sport", "tech <b>"])
    page = evaluation.write_report(
        tmp_path,
        metrics=metrics,
        history=HISTORY,
        labels=labels,
        probabilities=probabilities,
        inputs=["a goal", "a chip", "the <script> league   table"],
        input_format="text",
        title="news",
        settings={"recipe": "feature_extraction"},
    )
    for name in (
        "metrics.json",
        "per_class.csv",
        "training_curves.png",
        "confusion_matrix.png",
        "confidently_wrong.json",
        "report.html",
    ):
        assert (tmp_path / name).is_file(), name
    assert (tmp_path / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((tmp_path / "metrics.json").read_text())[
        "accuracy"
    ] == pytest.approx(2 / 3)
    assert "tech <b>,1.0000,0.5000,0.6667,2" in (tmp_path / "per_class.csv").read_text()
    mistakes = json.loads((tmp_path / "confidently_wrong.json").read_text())
    assert mistakes == [
        {
            "index": 2,
            "true": "tech <b>",
            "predicted": "sport",
            "confidence": pytest.approx(0.7),
            "text": "the <script> league table",
        }
    ]
    text = page.read_text()
    assert "the &lt;script&gt; league table" in text
    assert "<script>" not in text
    assert "data:image/png;base64," in text
    assert "0.667" in text


def test_image_report_writes_thumbnails_of_mistakes(tmp_path):
    image = tmp_path / "cat.png"
    tf.io.write_file(str(image), tf.io.encode_png(tf.zeros([300, 200, 3], tf.uint8)))
    labels = np.array([0, 1])
    probabilities = np.array([[0.2, 0.8], [0.1, 0.9]])
    metrics = classification_metrics(labels, probabilities, ["cat", "dog"])
    page = evaluation.write_report(
        tmp_path / "run",
        metrics=metrics,
        history={"loss": [1.0]},
        labels=labels,
        probabilities=probabilities,
        inputs=[str(image).encode(), str(image).encode()],
        input_format="file_path",
        title="pets",
    )
    thumbnail = tmp_path / "run" / "confidently_wrong" / "00.png"
    shape = tf.io.decode_png(tf.io.read_file(str(thumbnail))).shape
    assert max(shape[:2]) == evaluation.THUMBNAIL_SIZE
    # Self-contained: the thumbnails are embedded like the plots.
    text = page.read_text()
    assert 'src="confidently_wrong/' not in text
    embedded = base64.b64encode(thumbnail.read_bytes()).decode()
    assert f'src="data:image/png;base64,{embedded}"' in text
    assert re.findall(r'<img[^>]* src="(?!data:)', text) == []


def test_report_counts_and_names_skipped_and_fallback_inputs(tmp_path):
    labels = np.array([0, 1])
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]])
    metrics = {
        **classification_metrics(labels, probabilities, ["a", "b"]),
        "chosen": "frozen",
    }
    skipped = [f"img/{i}.jpg: could not be decoded" for i in range(25)]
    page = evaluation.write_report(
        tmp_path,
        metrics=metrics,
        history=HISTORY,
        labels=labels,
        probabilities=probabilities,
        inputs=["x", "y"],
        input_format="text",
        title="t",
        skipped=skipped,
        fallbacks=["sports/199.txt: read as cp1252"],
    ).read_text()
    assert "<b>25 inputs skipped</b>" in page
    assert "img/19.jpg: could not be decoded" in page
    assert "img/20.jpg" not in page and "and 5 more" in page
    assert "<b>1 inputs read by a fallback</b>" in page
    assert "sports/199.txt: read as cp1252" in page
    assert "model kept<b>frozen</b>" in page


def test_multi_label_metrics_count_pairs_labels_and_whole_examples():
    from tftransfer.recipes.metrics import multi_label_metrics

    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0]])
    probabilities = np.array([[0.9, 0.2, 0.6], [0.1, 0.4, 0.0], [0.7, 0.8, 0.9]])
    metrics = multi_label_metrics(labels, probabilities, ["a", "b", "c"])
    # Predicted at 0.5: [1,0,1], [0,0,0], [1,1,1]: 4 of 5 true labels found,
    # 4 of 5 predictions right; only the first example is entirely right.
    assert metrics["micro_f1"] == pytest.approx(0.8)
    assert metrics["subset_accuracy"] == pytest.approx(1 / 3)
    assert metrics["hamming_loss"] == pytest.approx(2 / 9)
    assert metrics["per_label"]["b"] == {
        "precision": 1.0,
        "recall": 0.5,
        "f1": pytest.approx(2 / 3),
        "support": 2,
    }
    assert metrics["per_label"]["c"]["precision"] == pytest.approx(0.5)
    assert metrics["macro_f1"] == pytest.approx((1.0 + 2 / 3 + 2 / 3) / 3)


def test_regression_metrics_are_mae_rmse_and_r2_per_target():
    from tftransfer.recipes.metrics import regression_metrics

    targets = np.array([[1.0, 10.0], [2.0, 10.0], [3.0, 10.0]])
    predictions = np.array([[1.0, 11.0], [2.0, 9.0], [4.0, 10.0]])
    metrics = regression_metrics(targets, predictions, ["x", "flat"])
    assert metrics["per_target"]["x"] == {
        "mae": pytest.approx(1 / 3),
        "rmse": pytest.approx(np.sqrt(1 / 3)),
        "r2": pytest.approx(0.5),
    }
    # A target that does not vary has no variance to explain: R² is 0.
    assert metrics["per_target"]["flat"]["r2"] == 0.0
    assert metrics["mae"] == pytest.approx((1 / 3 + 2 / 3) / 2)
    with pytest.raises(Exception, match="target names"):
        regression_metrics(targets, predictions, ["only one"])


def test_multi_label_report_shows_f1_bars_and_the_labels_missed(tmp_path):
    from tftransfer.recipes.tasks import task_metrics

    labels = np.array([[1.0, 0.0], [0.0, 1.0]])
    probabilities = np.array([[0.9, 0.8], [0.2, 0.7]])
    metrics = task_metrics("multi_label", labels, probabilities, ["sport", "tech"])
    page = evaluation.write_report(
        tmp_path,
        metrics=metrics,
        history={"loss": [1.0, 0.5], "binary_accuracy": [0.5, 0.7]},
        labels=labels,
        probabilities=probabilities,
        inputs=["a goal and a chip", "a chip"],
        input_format="text",
        title="tags",
    ).read_text()
    assert (tmp_path / "per_label_f1.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "confusion_matrix.png").exists()
    assert (
        "label,precision,recall,f1,support" in (tmp_path / "per_label.csv").read_text()
    )
    (mistake,) = json.loads((tmp_path / "confidently_wrong.json").read_text())
    assert mistake["true"] == "sport"
    assert mistake["predicted"] == "sport, tech"
    assert "micro F1" in page and "F1 per label" in page


def test_regression_report_shows_predicted_against_true_and_largest_errors(tmp_path):
    from tftransfer.recipes.tasks import task_metrics

    targets = np.array([[1.0], [2.0], [3.0]])
    predictions = np.array([[1.1], [2.5], [2.0]])
    metrics = task_metrics("regression", targets, predictions, ["price"])
    page = evaluation.write_report(
        tmp_path,
        metrics=metrics,
        history={"loss": [1.0], "mae": [0.8], "val_mae": [0.9]},
        labels=targets,
        probabilities=predictions,
        inputs=["small", "medium", "large"],
        input_format="text",
        title="prices",
        confidently_wrong_count=2,
    ).read_text()
    assert (tmp_path / "predicted_vs_true.png").read_bytes()[:4] == b"\x89PNG"
    assert "target,mae,rmse,r2" in (tmp_path / "per_target.csv").read_text()
    worst = json.loads((tmp_path / "confidently_wrong.json").read_text())
    assert [row["index"] for row in worst] == [2, 1]
    assert worst[0]["true"] == "price=3" and worst[0]["error"] == pytest.approx(1.0)
    assert "Largest errors" in page and "Predicted vs true" in page
    assert "R²" in page
