"""Recipe files: safe YAML loading, typed settings, overrides and messages."""

import inspect
import json
import pathlib
import re
import subprocess
import sys
import textwrap

import pytest
import yaml

from tftransfer import config
from tftransfer.errors import ConfigError
from tftransfer.messages import short_repr
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
    # The report explains its worst and typical predictions; exports add
    # the explain signature only when asked.
    assert run.evaluation.explain is True and run.export.explain is False
    assert run.rank.candidates == [] and run.rank.by == "logme"


def test_rank_candidates_are_checked_item_by_item(tmp_path):
    text = MINIMAL + (
        "rank:\n  candidates:\n    - {handle: minilm, options: {layers: [2]}}\n"
        "    - {handle: minilm, pooling: first, name: cls}\n"
    )
    run = config.loads(text)
    assert [c.name for c in run.rank.candidates] == [None, "cls"]
    assert run.rank.candidates[0].options == {"layers": [2]}
    with pytest.raises(ConfigError, match=r"rank.candidates\[1\].pool"):
        config.loads(text.replace("pooling: first", "pool: first"))
    with pytest.raises(ConfigError, match="must be a list of mappings"):
        config.loads(MINIMAL + "rank: {candidates: minilm}\n")


def test_integer_is_accepted_where_a_number_is_expected(tmp_path):
    run = config.loads(MINIMAL + "recipe: {learning_rate: 1}\n")
    assert run.recipe.learning_rate == 1.0
    assert isinstance(run.recipe.learning_rate, float)


def test_unknown_key_suggests_the_closest_known_key():
    with pytest.raises(ConfigError) as info:
        config.loads(MINIMAL + "recipe: {epoch: 3}\n", source="r.yaml")
    message = str(info.value)
    assert "unknown key 'recipe.epoch'" in message
    assert "Did you mean 'recipe.head_epochs'?" in message
    assert message.startswith("r.yaml:")


def test_key_in_the_wrong_section_points_to_its_section():
    with pytest.raises(ConfigError, match="Did you mean 'recipe.head_epochs'"):
        config.loads(MINIMAL + "head_epochs: 3\n")


def test_an_old_key_names_the_setting_it_was_renamed_to():
    with pytest.raises(ConfigError) as info:
        config.loads(MINIMAL + "recipe: {epochs: 3}\n")
    assert "Did you mean 'recipe.head_epochs'? (It was renamed.)" in str(info.value)
    with pytest.raises(ConfigError, match="Did you mean 'recipe.head_epochs'"):
        config.loads(MINIMAL, overrides=["recipe.epochs=3"])


def test_recipe_settings_have_the_names_of_the_python_arguments():
    import inspect

    from tftransfer.recipes import FeatureExtraction, FineTuning
    from tftransfer.recipes.base import Recipe

    arguments = {
        *inspect.signature(Recipe.__init__).parameters,
        *inspect.signature(FeatureExtraction.__init__).parameters,
        *inspect.signature(FineTuning.__init__).parameters,
    }
    recipe_keys = [
        key.removeprefix("recipe.")
        for key in config.known_keys()
        if key.startswith("recipe.")
    ]
    assert set(recipe_keys) - {"kind", "options"} <= arguments


def test_recipe_options_set_elsewhere_are_refused_when_the_file_is_read():
    cases = {
        "{head_epochs: 5}": "is set by 'recipe.head_epochs'. Set recipe.head_epochs",
        "{epochs: 5}": "(the old name of 'head_epochs') is set by 'recipe.head_epochs'",
        "{batch_size: 8}": "Set data.batch_size instead",
        "{strategy: mirrored}": "Set distribute.strategy instead",
        "{run_dir: /tmp/x}": "set runs_dir and name",
        "{verbose: 0}": "the tftransfer command gives the recipe verbose itself",
    }
    for options, message in cases.items():
        with pytest.raises(ConfigError, match=re.escape(message)):
            config.loads(MINIMAL + f"recipe: {{options: {options}}}\n")
    fine_tuning = "recipe: {kind: fine_tuning, options: {fine_tune_epochs: 3}}\n"
    with pytest.raises(ConfigError, match="Set recipe.fine_tune_epochs instead"):
        config.loads(MINIMAL + fine_tuning)
    with pytest.raises(ConfigError, match="Set recipe.dropout instead"):
        config.loads(MINIMAL, ["recipe.options.dropout=0.1"])


def _check_options(text):
    from tftransfer.recipes import FeatureExtraction

    arguments = {
        cls.kind: cls.argument_names() for cls in (FeatureExtraction, FineTuning)
    }
    config.check_recipe_options(config.loads(MINIMAL + text), arguments, "r.yaml")


def test_recipe_options_are_checked_against_the_recipe_class_of_the_kind():
    _check_options("recipe: {options: {hidden_units: [4], task: regression}}\n")
    _check_options("recipe: {kind: fine_tuning, options: {unfreeze: 0.3}}\n")
    with pytest.raises(ConfigError) as info:
        _check_options("recipe: {options: {hiden_units: [4]}}\n")
    assert str(info.value).startswith(
        "r.yaml: unknown key 'recipe.options.hiden_units'. Did you mean "
        "'recipe.options.hidden_units'?"
    )
    with pytest.raises(ConfigError, match="an option of kind 'fine_tuning'"):
        _check_options("recipe: {options: {unfreeze: 0.3}}\n")
    with pytest.raises(ConfigError, match="Did you mean 'recipe.patience'"):
        _check_options("recipe: {options: {patiense: 3}}\n")


def test_argument_names_gather_the_keyword_arguments_of_the_class_chain():
    from tftransfer.recipes import FeatureExtraction

    names = FineTuning.argument_names()
    assert {"unfreeze", "cache_dir", "task", "head", "head_epochs"} <= set(names)
    assert len(names) == len(set(names))
    assert "unfreeze" not in FeatureExtraction.argument_names()
    assert "backbone" not in names and "kwargs" not in names


def test_wrong_type_names_key_value_and_what_is_allowed():
    with pytest.raises(ConfigError) as info:
        config.loads(MINIMAL + "recipe: {head_epochs: five}\n")
    message = str(info.value)
    assert "'recipe.head_epochs' must be an integer" in message
    assert "recipe.head_epochs='five' (a string)" in message


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
            "recipe.head_epochs=3",
            "data.test=null",
            "backbone.options={image_size: [96, 96]}",
        ],
    )
    assert run.recipe.head_epochs == 3
    assert run.data.test is None
    assert run.backbone.options == {"image_size": [96, 96]}
    with pytest.raises(ConfigError, match="Did you mean 'recipe.head_epochs'"):
        config.loads(MINIMAL, overrides=["recipe.epocs=3"])


def test_override_without_equals_sign_is_explained():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        config.loads(MINIMAL, overrides=["recipe.head_epochs"])


def test_known_keys_are_dotted_leaves():
    keys = config.known_keys()
    assert "recipe.head_epochs" in keys
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


def billion_laughs(levels: int = 9) -> str:
    """A recipe of about 2.7 KB whose aliases stand for 10**levels strings."""
    lines = [MINIMAL.strip(), "recipe:", "  options:"]
    lines.append(
        "    billion_laughs_level_0: &billion_laughs_level_0 ["
        + ", ".join(['"lol"'] * 10)
        + "]"
    )
    for level in range(1, levels):
        refs = ", ".join([f"*billion_laughs_level_{level - 1}"] * 10)
        lines.append(
            f"    billion_laughs_level_{level}: &billion_laughs_level_{level} [{refs}]"
        )
    lines.append(f"  head_epochs: *billion_laughs_level_{levels - 1}")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_in_milliseconds_and_megabytes():
    # In a child process with 1 GiB of address space: before aliases were
    # bounded this took a minute and gigabytes, then died of MemoryError.
    text = billion_laughs()
    assert 2000 < len(text) < 3000
    script = textwrap.dedent(
        """
        import json, resource, sys, time, tracemalloc
        resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))
        from tftransfer import config
        tracemalloc.start()
        start = time.perf_counter()
        try:
            config.loads(sys.stdin.read(), source="bomb.yaml")
            message = None
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
        seconds = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
        print(json.dumps({"seconds": seconds, "peak": peak, "error": message}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    outcome = json.loads(result.stdout)
    assert outcome["error"].startswith("ConfigError: bomb.yaml is refused at line")
    assert "more than 100,000 values" in outcome["error"]
    assert "aliases" in outcome["error"]
    assert outcome["seconds"] < 0.5
    assert outcome["peak"] < 10 * 2**20


def test_an_alias_inside_the_value_it_names_is_refused():
    with pytest.raises(ConfigError, match=r"alias \*loop is inside the value it names"):
        config.loads(MINIMAL + "recipe: {options: {x: &loop [1, *loop]}}\n")


def test_values_nested_too_deeply_are_refused_not_a_recursion_error():
    text = MINIMAL + "recipe: {options: {x: " + "[" * 5000 + "]" * 5000 + "}}\n"
    with pytest.raises(ConfigError, match="nest more than 50 levels deep"):
        config.loads(text)


def test_a_recipe_file_larger_than_a_mebibyte_is_refused_unread(tmp_path):
    path = write(tmp_path, MINIMAL + "#" * 2**20 + "\n")
    with pytest.raises(ConfigError, match="is larger than 1 MiB"):
        config.load(path)


def test_an_integer_too_long_to_read_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot be read"):
        config.loads(MINIMAL + "recipe: {head_epochs: " + "9" * 5000 + "}\n")


def test_an_alias_bomb_in_an_override_is_refused():
    bomb = (
        "{a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol], "
        + ", ".join(
            f"{c}: &{c} [" + ", ".join([f"*{p}"] * 10) + "]"
            for p, c in zip("abcdefgh", "bcdefghi", strict=True)
        )
        + "}"
    )
    with pytest.raises(ConfigError, match=r"--set 'recipe.options' is refused"):
        config.loads(MINIMAL, [f"recipe.options={bomb}"])


@pytest.mark.parametrize(
    "value",
    [
        "x" * 100_000,
        list(range(50_000)),
        {f"k{i}": [i] * 10 for i in range(5_000)},
    ],
    ids=["string", "list", "mapping"],
)
def test_error_messages_show_at_most_a_short_repr_of_a_value(value):
    text = yaml.safe_dump(
        {
            "name": "demo",
            "backbone": {"handle": "h"},
            "data": {"format": "csv", "path": "a.csv"},
            "recipe": {"head_epochs": value},
        }
    )
    with pytest.raises(ConfigError) as info:
        config.loads(text)
    message = str(info.value)
    assert (
        "'recipe.head_epochs' must be an integer. Received: recipe.head_epochs="
        in message
    )
    assert len(message) < 300
    assert "..." in message


def test_unknown_keys_and_overrides_are_shown_shortened():
    with pytest.raises(ConfigError) as info:
        config.loads(MINIMAL + "x" * 10_000 + ": 1\n")
    assert len(str(info.value)) < 400
    with pytest.raises(ConfigError) as info:
        config.loads(MINIMAL, ["recipe" + ".x" * 10_000])
    assert len(str(info.value)) < 300


@pytest.mark.parametrize(
    "name",
    [
        "../escape",
        "../../etc",
        "/tmp/abs",
        "a/b",
        "a\\b",
        "..",
        ".",
        ".hidden",
        "x" * 101,
        "a b",
    ],
)
def test_names_that_leave_their_folder_are_refused(name):
    with pytest.raises(ConfigError) as info:
        config.loads(MINIMAL, [f"name={name}"])
    message = str(info.value)
    assert (
        "'name' must be one folder name: letters, digits, '_', '-' and '.'" in message
    )
    assert f"Received: name={short_repr(name)}" in message


@pytest.mark.parametrize(
    "name", ["bbc-news-topics", "flowers_v2", "run.2024-01-01", "A1"]
)
def test_ordinary_names_are_accepted(name):
    assert config.loads(MINIMAL, [f"name={name}"]).name == name


def test_rank_order_and_scores_name_known_estimators():
    with pytest.raises(ConfigError, match="Did you mean 'logme'"):
        config.loads(MINIMAL + "rank: {by: logmee}\n")
    with pytest.raises(ConfigError, match="each item one of"):
        config.loads(MINIMAL + "rank: {scores: [logme, magic]}\n")
    with pytest.raises(ConfigError, match="greater than 0"):
        config.loads(MINIMAL + "rank: {examples: 0}\n")
