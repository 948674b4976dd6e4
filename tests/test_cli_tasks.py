"""`tftransfer predict` and `evaluate` on multi-label and regression exports:
each reads the outputs of the task the model card records."""

import pathlib

import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import signal_images, tiny_recipe
from PIL import Image

import tftransfer
from tftransfer import cli
from tftransfer.cli import serving
from tftransfer.data import LabeledData
from tftransfer.errors import DataError
from tftransfer.recipes import FeatureExtraction
from tftransfer.recipes.tasks import task_metrics

COUNT = 32
LABELS = ["bright", "dark", "all"]
TARGETS = ["up", "down"]


def _exported(root, labels, names, task):
    """A tiny recipe trained for `task` and exported to `root / "model"`;
    its images as PNG files in `root / "images"`."""
    pixels, _ = signal_images(COUNT)
    recipe = tiny_recipe(FeatureExtraction, root)
    train = tftransfer.data.from_arrays(pixels, labels, names, task=task)
    recipe.fit(train, train)
    tftransfer.export(recipe, root / "model")
    folder = root / "images"
    folder.mkdir()
    files = []
    for i, image in enumerate(pixels):
        files.append(str(folder / f"{i:02d}.png"))
        Image.fromarray(image).save(files[-1])
    outputs = recipe.model.predict(pixels.astype("float32") / 255, verbose=0)
    return root / "model", files, outputs


@pytest.fixture(scope="module")
def multi_label(tmp_path_factory):
    _, signal = signal_images(COUNT)
    labels = np.stack([signal > 0.5, signal < 0.5, signal >= 0], axis=1)
    root = tmp_path_factory.mktemp("multi_label")
    return (*_exported(root, labels.astype("float32"), LABELS, "multi_label"), labels)


@pytest.fixture(scope="module")
def regression(tmp_path_factory):
    _, signal = signal_images(COUNT)
    targets = np.stack([10 * signal, -signal], axis=1).astype("float32")
    root = tmp_path_factory.mktemp("regression")
    return (*_exported(root, targets, TARGETS, "regression"), targets)


def printed(out: str) -> dict:
    """`predict`'s lines as `{file: [(name, number), ...]}`."""
    rows = {}
    for line in out.splitlines():
        file, *pairs = line.split("  ")
        rows[file] = [(p.split(" ")[0], float(p.split(" ")[1])) for p in pairs]
    return rows


def image_files(files, labels, names, task) -> LabeledData:
    """Labelled image files, as a reader gives them for `task`."""
    return LabeledData(
        dataset=tf.data.Dataset.from_tensor_slices((files, labels)),
        class_names=names,
        num_examples=len(files),
        modality="image",
        source="the test images",
        input_format="file_path",
        task=task,
    )


def test_predict_prints_the_labels_that_apply_with_their_probabilities(
    multi_label, capsys
):
    base, files, probabilities, _ = multi_label
    assert cli.main(["predict", str(base), *files[:6]]) == 0
    rows = printed(capsys.readouterr().out)
    assert list(rows) == files[:6]
    for file, row in zip(files[:6], probabilities[:6], strict=True):
        order = [i for i in np.argsort(-row, kind="stable") if row[i] >= 0.5]
        assert [name for name, _ in rows[file]] == [LABELS[i] for i in order]
        np.testing.assert_allclose([p for _, p in rows[file]], row[order], atol=1e-3)


def test_predict_prints_each_target_with_its_predicted_value(regression, capsys):
    base, files, predictions, _ = regression
    results = serving.predict(str(base), files[:4])
    rows = printed(capsys.readouterr().out)
    for file, result, row in zip(files[:4], results, predictions[:4], strict=True):
        assert [name for name, _ in rows[file]] == TARGETS
        np.testing.assert_allclose([v for _, v in rows[file]], row, rtol=1e-3)
        assert list(result["predictions"]) == TARGETS
        np.testing.assert_allclose(list(result["predictions"].values()), row, atol=1e-4)


def test_evaluate_scores_a_multi_label_export_by_label_name(multi_label, capsys):
    base, files, probabilities, labels = multi_label
    # The data names the labels in another order, and lacks "all", which
    # no example of a test set need have.
    data = image_files(
        files, labels[:, [1, 0]].astype("float32"), ["dark", "bright"], "multi_label"
    )
    metrics = serving.evaluate(str(base), data)
    in_model_order = labels * [1, 1, 0]
    expected = task_metrics("multi_label", in_model_order, probabilities, LABELS)
    assert metrics["micro_f1"] == pytest.approx(expected["micro_f1"])
    assert metrics["per_label"]["all"]["support"] == 0
    out = capsys.readouterr().out
    assert out.startswith(f"micro F1: {expected['micro_f1']:.4f}")
    assert "  dark " in out


def test_evaluate_scores_a_regression_export_by_target_name(regression, capsys):
    base, files, predictions, targets = regression
    data = image_files(files, targets[:, ::-1].copy(), TARGETS[::-1], "regression")
    metrics = serving.evaluate(str(base), data)
    expected = task_metrics("regression", targets, predictions, TARGETS)
    assert metrics["mae"] == pytest.approx(expected["mae"], rel=1e-4)
    assert metrics["per_target"]["up"]["mae"] == pytest.approx(
        expected["per_target"]["up"]["mae"], rel=1e-4
    )
    assert capsys.readouterr().out.startswith("MAE: ")
    with pytest.raises(DataError, match=r"lacks the model's targets \['down'\]"):
        serving.evaluate(
            str(base), image_files(files, targets[:, :1], ["up"], "regression")
        )


def test_evaluate_refuses_data_read_for_another_task(regression, tmp_path, capsys):
    base, files, _, _ = regression
    for name, file in zip(TARGETS, files, strict=False):
        (tmp_path / name).mkdir()
        (tmp_path / name / "a.png").write_bytes(pathlib.Path(file).read_bytes())
    assert cli.main(["evaluate", str(base), str(tmp_path)]) == 1
    error = " ".join(capsys.readouterr().err.split())
    assert "was read for task='classification'" in error
    assert "serves task='regression'" in error
