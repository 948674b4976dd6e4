"""The public API: what `import tftransfer` gives, and what it costs."""

import ast
import pathlib
import re
import subprocess
import sys

import pytest

import tftransfer


def test_every_public_name_resolves():
    for name in tftransfer.__all__:
        assert getattr(tftransfer, name) is not None, name
    assert callable(tftransfer.export)
    assert callable(tftransfer.export.verify)
    assert issubclass(tftransfer.HandleNotFoundError, FileNotFoundError)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        tftransfer.no_such_thing  # noqa: B018


def test_import_does_not_start_tensorflow():
    script = "import sys, tftransfer; print('tensorflow' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "False"


def _documented_dotted_names() -> list[str]:
    """Every `tftransfer.a.b` the README, docs/ and the docstrings and
    messages of the package name, in backticks."""
    root = pathlib.Path(__file__).resolve().parent.parent
    texts = [
        root / "README.md",
        *sorted((root / "docs").glob("*.md")),
        *sorted((root / "tftransfer").rglob("*.py")),
    ]
    names = set()
    for path in texts:
        for code in re.findall(r"`([^`\n]+)`", path.read_text(encoding="utf-8")):
            names.update(re.findall(r"\btftransfer(?:\.[A-Za-z_]\w*)+", code))
    return sorted(names)


def test_every_documented_name_resolves_by_attribute_after_import_tftransfer():
    names = _documented_dotted_names()
    assert (
        "tftransfer.config.RecipeConfig" in names and "tftransfer.hub.resolve" in names
    )
    # A fresh interpreter: what a user's `import tftransfer` gives, attribute
    # by attribute, with no module imported by an earlier test.
    # Each name's first part must be tftransfer's own (not a subpackage some
    # other name's lookup happened to import first).
    script = (
        "import sys, tftransfer\n"
        "missing = [n for n in sys.argv[1:] if n.split('.')[1] not in dir(tftransfer)]\n"
        "for name in sys.argv[1:]:\n"
        "    value = tftransfer\n"
        "    try:\n"
        "        for part in name.split('.')[1:]:\n"
        "            value = getattr(value, part)\n"
        "    except AttributeError:\n"
        "        missing.append(name)\n"
        "print(missing)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, *names],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_no_public_function_shadows_a_module_of_its_package():
    script = (
        "import importlib, pkgutil, types, tftransfer\n"
        "shadowed = []\n"
        "for info in pkgutil.walk_packages(tftransfer.__path__, 'tftransfer.'):\n"
        "    parent, _, leaf = info.name.rpartition('.')\n"
        "    package = importlib.import_module(parent)\n"
        "    value = getattr(package, leaf, None)\n"
        "    if value is not None and not isinstance(value, types.ModuleType):\n"
        "        shadowed.append(info.name)\n"
        "print(shadowed)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize(
    ("package", "above"),
    [
        ("hub", {"backbones", "data", "recipes", "export", "cli", "config"}),
        ("backbones", {"data", "recipes", "export", "cli", "config"}),
        ("data", {"backbones", "recipes", "export", "cli", "config"}),
        ("export", {"cli", "config"}),
        ("recipes", {"export", "cli", "config"}),
        ("selection", {"export", "explain", "deltas", "cli", "config"}),
        ("explain", {"selection", "deltas", "cli", "config"}),
        ("deltas", {"selection", "cli", "config"}),
    ],
)
def test_a_package_does_not_import_the_layers_above_it(package, above):
    # Arrows point down (DESIGN.md): what loading a package imports, in a
    # fresh interpreter.
    script = (
        "import importlib, sys\n"
        f"importlib.import_module('tftransfer.{package}')\n"
        "print(sorted({n.split('.')[1] for n in sys.modules"
        " if n.startswith('tftransfer.')}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    loaded = set(ast.literal_eval(result.stdout.strip().splitlines()[-1]))
    assert loaded & above == set()
