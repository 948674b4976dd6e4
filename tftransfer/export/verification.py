"""`tftransfer.export.verify()`: load an export the way a server would, and check it."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow as tf

from tftransfer.errors import ExportError
from tftransfer.export import model_card, signatures

_CHILD = Path(__file__).with_name("_serving_check.py")


@dataclasses.dataclass
class VerifyReport:
    """What `verify()` found.

    Attributes:
        path: The version folder checked.
        input_name: The `serving_default` input (`image_bytes` or `text`).
        outputs: Each output's `{"dtype", "shape", "values"}`, as the fresh
            process computed them.
        max_abs_difference: Largest difference between the served and the
            in-memory probabilities (`None` without a model).
        imported: Which of `tftransfer`, `keras`, `tensorflow_text` the fresh
            process had imported.
        saved_model_cli: The output of `saved_model_cli show --all`.
    """

    path: Path
    input_name: str
    outputs: dict
    max_abs_difference: float | None
    imported: list
    saved_model_cli: str


def verify(
    path: str | os.PathLike,
    examples: Sequence[bytes | str],
    *,
    model: Any = None,
    backbone: Any = None,
    prepare: Callable | None = None,
    atol: float = 1e-5,
    print_signatures: bool = True,
    timeout: float = 600.0,
) -> VerifyReport:
    """Loads an exported version in a fresh TensorFlow-only process and checks it.

    The fresh Python process imports TensorFlow (and `tensorflow_text` only
    where the graph uses TF Text ops; the model card says so) and nothing of
    tftransfer or Keras, loads the SavedModel and runs `serving_default` on
    the raw examples. With `model`, the probabilities must match the
    in-memory model's on the same examples prepared in memory within `atol`.
    Top-1 classes must be the labels of the highest probabilities. The
    signatures are printed as `saved_model_cli show --all` prints them.

    Args:
        path: A version folder written by `tftransfer.export()`.
        examples: Raw inputs as a client sends them: encoded image bytes, or
            strings for a text model.
        model: The in-memory model to compare with: a recipe or a
            `keras.Model` (then also pass `backbone` or `prepare`).
        backbone: The model's `Backbone`, for the default preparation.
        prepare: The preparation function used in training (default:
            `tftransfer.data.prepare_fn(backbone)`).
        atol: Largest allowed absolute difference in probabilities.
        print_signatures: Print the `saved_model_cli show --all` output.
        timeout: Seconds to wait for the fresh process.

    Returns:
        A `VerifyReport`.

    Raises:
        ExportError: if the SavedModel does not load or run in the fresh
            process, the probabilities differ by more than `atol`, or the
            classes do not match the probabilities.

    Example:

    >>> report = tftransfer.export.verify(path, [jpeg_bytes], model=recipe)
    >>> report.max_abs_difference <= 1e-5
    True
    """
    path = Path(path)
    card_file = path / model_card.CARD_FILE
    if not card_file.is_file():
        raise ExportError(
            f"{str(path)!r} is not a version folder written by "
            f"tftransfer.export (no {model_card.CARD_FILE}). Pass "
            "'<base_path>/<version>'."
        )
    card = json.loads(card_file.read_text())
    result, cli_output = _run_fresh_process(
        path, examples, card["serving_ops"]["needs_tensorflow_text"], timeout
    )
    if print_signatures:
        print(cli_output)
    outputs = result["outputs"]
    served = np.asarray(outputs["probabilities"]["values"], dtype=np.float32)
    class_names = card["class_names"]
    best = [class_names[i] for i in served.argmax(-1)]
    if outputs["classes"]["values"] != best:
        raise ExportError(
            f"Served classes {outputs['classes']['values']} are not the labels "
            f"of the highest probabilities {best} for {str(path)!r}; labels.txt "
            "does not match the model's outputs. Export again."
        )
    difference = None
    if model is not None:
        expected = _in_memory_probabilities(model, backbone, prepare, examples)
        difference = float(np.abs(expected - served).max())
        if difference > atol:
            raise ExportError(
                f"Served probabilities of {str(path)!r} differ from the "
                f"in-memory model's by up to {difference:.3g} (> atol={atol}). "
                "The serving graph prepares inputs differently from the "
                "`prepare` given here; export with the training preparation."
            )
    return VerifyReport(
        path=path,
        input_name=result["input_name"],
        outputs=outputs,
        max_abs_difference=difference,
        imported=result["imported"],
        saved_model_cli=cli_output,
    )


def _run_fresh_process(
    path: Path, examples: Sequence[bytes | str], needs_tf_text: bool, timeout: float
) -> tuple[dict, str]:
    encoded = [
        base64.b64encode(e.encode("utf-8") if isinstance(e, str) else e).decode()
        for e in examples
    ]
    with tempfile.TemporaryDirectory() as scratch:
        request = Path(scratch) / "request.json"
        result_file = Path(scratch) / "result.json"
        request.write_text(
            json.dumps({"examples": encoded, "needs_tensorflow_text": needs_tf_text})
        )
        command = [sys.executable, "-I", str(_CHILD), str(path.resolve())]
        process = subprocess.run(
            [*command, str(request), str(result_file)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=scratch,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        if not result_file.is_file():
            raise ExportError(
                f"The SavedModel at {str(path)!r} failed to load or run in a "
                "fresh TensorFlow process:\n"
                f"{process.stderr.strip()[-3000:]}"
            )
        return json.loads(result_file.read_text()), process.stdout


def _in_memory_probabilities(model, backbone, prepare, examples) -> np.ndarray:
    keras_model = getattr(model, "model", model)
    backbone = backbone or getattr(model, "backbone", None)
    prepared = signatures.batched(signatures.preparation(backbone, prepare))(
        tf.constant(list(examples))
    )
    return np.asarray(keras_model(prepared, training=False), dtype=np.float32)
