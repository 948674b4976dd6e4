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
