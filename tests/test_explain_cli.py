"""`tftransfer explain`: exports with and without the explain signature,
and run folders."""

import json
import re

import explain_fixtures
import keras
import numpy as np
import pytest
import tensorflow as tf
import yaml
from data_fixtures import image_folder

import tftransfer
from tftransfer import cli, serving_ops
from tftransfer.errors import ExportError
from tftransfer.explain import explain
from tftransfer.export.explain_signature import EXPLAIN_SIGNATURE


def lines(capsys) -> str:
    return " ".join(capsys.readouterr().out.split())


@pytest.fixture(scope="module")
def text_export(tmp_path_factory):
    """The keyword model exported with the explain signature."""
    model, backbone = explain_fixtures.text_model()
    base = tmp_path_factory.mktemp("exports") / "keyword"
    return tftransfer.export(
        model,
        base,
        backbone=backbone,
        class_names=["other", "sport"],
        explain=True,
    )


def test_the_explain_signature_serves_word_attributions_and_passes_the_op_check(
    text_export,
):
    card = json.loads((text_export / "model_card.json").read_text())
    assert set(card["signatures"]) == {
        "serving_default",
        "serving_prepared",
        EXPLAIN_SIGNATURE,
    }
    assert card["serving_ops"]["allowed_by_override"] == []
    signature = tf.saved_model.load(str(text_export)).signatures[EXPLAIN_SIGNATURE]
    ops = serving_ops.graph_ops([signature])
    serving_ops.check_serving_ops(ops)
    outputs = signature(text=tf.constant(["the rugby game", "a show"]))
    assert outputs["target_name"].numpy().tolist() == [b"sport", b"other"]
    words = outputs["words"].numpy()
    assert words[0].tolist() == [b"the", b"rugby", b"game"]
    assert words[1].tolist() == [b"a", b"show", b""]
    attributions = outputs["word_attributions"].numpy()
    assert attributions[0].argmax() == 1
    # Integrated gradients in the graph agree with the eager ones.
    model, backbone = explain_fixtures.text_model()
    eager = explain(model, ["the rugby game"], backbone=backbone)[0]
    np.testing.assert_allclose(attributions[0], eager.attributions, atol=0.02)


def test_exports_without_explain_keep_their_two_signatures(tmp_path):
    model, backbone, _ = explain_fixtures.image_model()
    path = tftransfer.export(
        model, tmp_path / "plain", backbone=backbone, class_names=["dark", "bright"]
    )
    card = json.loads((path / "model_card.json").read_text())
    assert set(card["signatures"]) == {"serving_default", "serving_prepared"}


def test_explain_prints_the_top_words_through_the_explain_signature(
    text_export, tmp_path, capsys
):
    article = tmp_path / "article.txt"
    article.write_text("the news , rugby team show")
    output = tmp_path / "why"
    code = cli.main(
        ["explain", str(text_export), str(article), "--output", str(output)]
    )
    assert code == 0
    out = lines(capsys)
    assert f"{article}: integrated_gradients for sport" in out
    assert out.split("sport (")[1].split(": ")[1].startswith("rugby (+")
    page = (output / "explanations.html").read_text()
    assert '<span class="shaded">' in page and ">rugby</span>" in page


def test_explain_falls_back_to_occlusion_without_an_explain_signature(tmp_path, capsys):
    model, backbone, pixels = explain_fixtures.image_model()
    path = tftransfer.export(
        model, tmp_path / "plain", backbone=backbone, class_names=["dark", "bright"]
    )
    picture = tmp_path / "bright.png"
    bright = pixels[0].copy()
    bright[..., 0] = 250
    picture.write_bytes(tf.io.encode_png(bright).numpy())
    output = tmp_path / "why"
    code = cli.main(["explain", str(path), str(picture), "--output", str(output)])
    assert code == 0
    out = lines(capsys)
    assert "occlusion for bright" in out and "no explain signature" in out
    assert (output / "000.png").stat().st_size > 0
    assert "data:image/png;base64," in (output / "explanations.html").read_text()


def test_explain_refuses_grad_cam_on_an_export_and_a_folder_that_is_no_model(
    text_export, tmp_path, capsys
):
    article = tmp_path / "a.txt"
    article.write_text("rugby")
    code = cli.main(["explain", str(text_export), str(article), "--method", "grad_cam"])
    assert code == 1
    assert "grad_cam needs the Keras model" in capsys.readouterr().err
    assert cli.main(["explain", str(tmp_path), str(article)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "is neither a run folder" in err


def test_explain_signature_refuses_a_hub_text_encoder(bert_paths, tmp_path):
    backbone = tftransfer.Backbone.from_hub_text(*bert_paths, seq_length=16)
    inputs = {
        key: keras.Input((16,), dtype="int32", name=key)
        for key in ("input_word_ids", "input_mask", "input_type_ids")
    }
    model = keras.Model(inputs, keras.layers.Dense(2)(backbone.build()(inputs)))
    with pytest.raises(ExportError, match="embedding lookup is hidden"):
        tftransfer.export(
            model,
            tmp_path / "hub",
            backbone=backbone,
            class_names=["a", "b"],
            explain=True,
        )


@pytest.mark.slow
def test_explain_restores_a_run_folder_for_grad_cam(tmp_path, capsys):
    data = image_folder(tmp_path / "images", {"cats": 6, "dogs": 6}, size=(32, 32))
    settings = {
        "name": "pets",
        "backbone": {
            "handle": "keras.applications.MobileNetV2",
            "options": {"weights": None, "image_size": [32, 32]},
        },
        "data": {"format": "image_folder", "path": data, "batch_size": 4},
        "recipe": {"head_epochs": 1, "patience": None},
        "distribute": {"strategy": "default"},
        "export": {"enabled": False},
        "runs_dir": str(tmp_path / "runs"),
        "cache_dir": str(tmp_path / "cache"),
    }
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(settings))
    assert cli.main(["run", str(recipe)]) == 0
    report = (tmp_path / "runs" / "pets" / "report.html").read_text()
    assert "Typical correct predictions" in report or "Most confidently wrong" in report
    capsys.readouterr()
    picture = f"{data}/cats/0.png"
    output = tmp_path / "why"
    code = cli.main(
        [
            "explain",
            str(tmp_path / "runs" / "pets"),
            picture,
            "--method",
            "grad_cam",
            "--output",
            str(output),
        ]
    )
    assert code == 0
    out = lines(capsys)
    assert re.search(rf"{picture}: grad_cam for \w+ .*rows \d+-\d+, columns", out)
    heat_map = tf.io.decode_png(tf.io.read_file(str(output / "000.png"))).numpy()
    assert heat_map.shape == (32, 32, 3)
