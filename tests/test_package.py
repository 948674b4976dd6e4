"""The public API: what `import tftransfer` gives, and what it costs."""

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
