"""Recipe files: safe YAML loading, typed settings, overrides and messages."""

import inspect
import pathlib

import pytest

from tftransfer import config
from tftransfer.errors import ConfigError
from tftransfer.recipes import FineTuning

MINIMAL = """
name: demo
backbone: {handle: all-minilm-l6-v2}
data: {format: csv, path: reviews.csv}
"""


def write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_minimal_recipe_fills_defaults(tmp_path):
    run = config.load(write(tmp_path, MINIMAL))
    assert run.name == "demo"
    assert run.backbone.handle == "all-minilm-l6-v2"
    assert run.recipe.kind == "feature_extraction"
    assert run.export.enabled is True
    assert run.data.test == 0.2


def test_integer_is_accepted_where_a_number_is_expected(tmp_path):
    run = config.loads(MINIMAL + "recipe: {learning_rate: 1}\n")
    assert run.recipe.learning_rate == 1.0
    assert isinstance(run.recipe.learning_rate, float)


def test_unknown_key_suggests_the_closest_known_key():
    with pytest.raises(ConfigError) as info:
        config.loads(MINIMAL + "recipe: {epoch: 3}\n", source="r.yaml")
    message = str(info.value)
    assert "unknown key 'recipe.epoch'" in message
    assert "Did you mean 'recipe.epochs'?" in message
    assert message.startswith("r.yaml:")


def test_key_in_the_wrong_section_points_to_its_section():
    with pytest.raises(ConfigError, match="Did you mean 'recipe.epochs'"):
        config.loads(MINIMAL + "epochs: 3\n")


def test_wrong_type_names_key_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as info:
        config.loads(MINIMAL + "recipe: {epochs: five}\n")
    message = str(info.value)
    assert "'recipe.epochs' must be an integer" in message
    assert "recipe.epochs='five' (a string)" in message


def test_value_outside_choices_lists_the_choices():
    with pytest.raises(ConfigError) as info:
        config.loads(MINIMAL + "recipe: {kind: finetuning}\n")
    assert "one of 'feature_extraction', 'fine_tuning'" in str(info.value)
    assert "Did you mean 'fine_tuning'?" in str(info.value)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "recipe.fine_tune_epochs=0",
            "'recipe.fine_tune_epochs' must be greater than 0",
        ),
        ("data.validation=0", r"'data.validation' must be a fraction in \(0, 1\)\."),
        ("data.test=0", r"'data.test' must be a fraction in \(0, 1\) or null"),
    ],
)
def test_empty_phase_or_split_is_rejected_at_load_time(override, message):
    with pytest.raises(ConfigError, match=message):
        config.loads(MINIMAL, [override])


def test_fine_tune_learning_rate_default_is_the_recipe_api_default():
    default = inspect.signature(FineTuning).parameters["fine_tune_learning_rate"]
    assert config.loads(MINIMAL).recipe.fine_tune_learning_rate == default.default
    assert "head" in config.RecipeConfig.__doc__.split("fine_tune_learning_rate:")[1]


def test_out_of_range_fraction_is_rejected():
    with pytest.raises(ConfigError, match=r"'data.validation' must be a fraction"):
        config.loads(MINIMAL.replace("reviews.csv}", "reviews.csv, validation: 1.5}"))


def test_missing_required_key_is_named_with_its_meaning():
    with pytest.raises(ConfigError) as info:
        config.loads("name: demo\ndata: {format: csv, path: a.csv}\n")
    assert "missing required key 'backbone'" in str(info.value)


def test_invalid_yaml_reports_the_line():
    with pytest.raises(ConfigError, match="not valid YAML at line 2, column 17"):
        config.loads("name: demo\nbackbone: handle: x\n")


def test_unsafe_yaml_tags_are_refused():
    text = MINIMAL + "runs_dir: !!python/object/apply:os.getcwd []\n"
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.loads(text)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        config.load(tmp_path / "nope.yaml")


def test_overrides_are_parsed_as_yaml_and_validated():
    run = config.loads(
        MINIMAL,
        overrides=[
            "recipe.epochs=3",
            "data.test=null",
            "backbone.options={image_size: [96, 96]}",
        ],
    )
    assert run.recipe.epochs == 3
    assert run.data.test is None
    assert run.backbone.options == {"image_size": [96, 96]}
    with pytest.raises(ConfigError, match="Did you mean 'recipe.epochs'"):
        config.loads(MINIMAL, overrides=["recipe.epocs=3"])


def test_override_without_equals_sign_is_explained():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config.loads(MINIMAL, overrides=["recipe.epochs"])


def test_known_keys_are_dotted_leaves():
    keys = config.known_keys()
    assert "recipe.epochs" in keys
    assert "backbone" not in keys


RECIPES = sorted((pathlib.Path(__file__).parent.parent / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    assert config.load(path).name


def test_colab_notebook_cells_are_valid_python():
    import ast
    import json

    notebook = pathlib.Path(__file__).parent.parent / "recipes" / "colab_tpu.ipynb"
    cells = json.loads(notebook.read_text())["cells"]
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert code
    for source in code:
        ast.parse(source)
    text = "\n".join(code)
    assert 'TPUClusterResolver(tpu="local")' in text
    assert "tensorflow-tpu" in text
    assignments = [
        node
        for source in code
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Assign) and ast.unparse(node.targets[0]) == "RECIPE"
    ]
    recipe = ast.literal_eval(assignments[0].value)
    assert config.loads(recipe).distribute.strategy == "tpu"
