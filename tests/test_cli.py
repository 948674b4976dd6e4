"""The `tftransfer` command: exit codes, error paragraphs, subcommands."""

import pathlib
import subprocess
import sys

import pytest
import tensorflow as tf

from tftransfer import cli
from tftransfer.cli import sources
from tftransfer.config import DataConfig
from tftransfer.errors import ConfigError, DataNotFoundError

GOOD = """
name: demo
backbone: {handle: all-minilm-l6-v2}
data: {format: csv, path: reviews.csv}
"""


def stderr(capsys):
    """What the command wrote to stderr, with line wrapping undone."""
    return " ".join(capsys.readouterr().err.split())


def recipe(tmp_path, text=GOOD):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_check_validates_a_recipe_with_exit_code_0(tmp_path, capsys):
    assert cli.main(["run", recipe(tmp_path), "--check"]) == 0
    assert "valid" in capsys.readouterr().out


def test_bad_recipe_exits_2_with_one_paragraph(tmp_path, capsys):
    path = recipe(tmp_path, GOOD + "recipe: {epochs: many}\n")
    assert cli.main(["run", path]) == 2
    err = stderr(capsys)
    assert err.startswith("error: ")
    assert "'recipe.epochs' must be an integer" in err
    assert "Traceback" not in err


def test_bad_override_exits_2_and_suggests_the_key(tmp_path, capsys):
    assert cli.main(["run", recipe(tmp_path), "--set", "data.batchsize=8"]) == 2
    err = stderr(capsys)
    assert "Did you mean 'data.batch_size'?" in err


def test_missing_recipe_file_exits_2(tmp_path, capsys):
    assert cli.main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in stderr(capsys)


def test_bad_usage_exits_2(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert "--help" in stderr(capsys)


def test_debug_reraises_with_the_traceback(tmp_path):
    with pytest.raises(ConfigError):
        cli.main(["--debug", "run", str(tmp_path / "missing.yaml")])


def test_failure_exits_1_with_a_hint_about_debug(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path), "x.txt"]) == 1
    err = stderr(capsys)
    assert "holds no exported model" in err
    assert "--debug" in err


def test_unknown_reader_option_suggests_the_closest(tmp_path):
    with pytest.raises(ConfigError, match="Did you mean 'data.options.text_column'"):
        sources.read(
            DataConfig(format="csv", path="a.csv", options={"text_colum": "x"})
        )


def test_package_paths_resolve_inside_installed_packages():
    folder = sources.resolve_path("package://yaml/nested")
    assert folder.endswith("yaml/nested")
    with pytest.raises(DataNotFoundError, match="pip install --no-deps nope_pkg"):
        sources.resolve_path("package://nope_pkg/data")


class _Classifier(tf.Module):
    """A stand-in for an exported text model: the `serving_default` outputs."""

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(self, text):
        sport = tf.strings.regex_full_match(text, ".*goal.*")
        probabilities = tf.where(sport[:, None], [[0.9, 0.1]], [[0.2, 0.8]])
        order = tf.argsort(probabilities, direction="DESCENDING")
        names = tf.gather(tf.constant(["sport", "tech"]), order)
        return {
            "probabilities": probabilities,
            "classes": names[:, 0],
            "top_k_scores": tf.sort(probabilities, direction="DESCENDING"),
            "top_k_classes": names,
        }


@pytest.fixture
def exported(tmp_path):
    module = _Classifier()
    version = tmp_path / "model" / "1"
    tf.saved_model.save(
        module, str(version), signatures={"serving_default": module.serve}
    )
    (version / "assets").mkdir(exist_ok=True)
    (version / "assets" / "labels.txt").write_text("sport\ntech\n")
    return tmp_path / "model"


def test_predict_prints_top_classes_of_each_file(exported, tmp_path, capsys):
    article = tmp_path / "a.txt"
    article.write_text("a late goal")
    assert cli.main(["predict", str(exported), str(article), "--top-k", "1"]) == 0
    assert capsys.readouterr().out.strip() == f"{article}  sport 0.900"


def test_evaluate_reports_accuracy_on_a_text_folder(exported, tmp_path, capsys):
    data = tmp_path / "data"
    for name, texts in {"sport": ["goal!", "a quiet draw"], "tech": ["chips"]}.items():
        (data / name).mkdir(parents=True)
        for i, text in enumerate(texts):
            (data / name / f"{i}.txt").write_text(text)
    assert cli.main(["evaluate", str(exported), str(data)]) == 0
    assert "accuracy: 0.6667" in capsys.readouterr().out


def test_inspect_describes_signatures_and_parameters(exported, capsys):
    assert cli.main(["inspect", str(exported / "1")]) == 0
    out = capsys.readouterr().out
    assert "signature 'serving_default'" in out
    assert "input  text: string [-1]" in out
    assert "output top_k_classes: string [-1, 2]" in out
    assert "parameters: 0" in out


def test_backbones_marks_offline_ones(capsys):
    assert cli.main(["backbones"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.startswith("mobilenet-v2 "))
    assert line.rstrip().endswith("-")
    assert "all-minilm-l6-v2" in out


def test_python_dash_m_runs_the_command():
    result = subprocess.run(
        [sys.executable, "-m", "tftransfer", "run", "missing.yaml"],
        capture_output=True,
        text=True,
        env={"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"},
        cwd=pathlib.Path(__file__).parent.parent,
        check=False,
    )
    assert result.returncode == 2
    assert "error: Recipe file missing.yaml does not exist" in result.stderr
