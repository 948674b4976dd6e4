"""`tftransfer.export.verify()`: load an export the way a server would, and check it."""

from __future__ import annotations

import base64
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
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
        outputs: Each `serving_default` output's `{"dtype", "shape",
            "values"}`, as the fresh process computed them.
        signatures: The names of the signatures the fresh process loaded.
        signature_outputs: The outputs (as `outputs`) of each other
            signature run: those of `signature_inputs`, and with a model
            `serving_prepared`.
        max_abs_difference: Largest difference between the served and the
            in-memory probabilities, over `serving_default` and
            `serving_prepared` (`None` without a model).
        imported: Which of `tftransfer`, `keras`, `tensorflow_text` the fresh
            process had imported.
        saved_model_cli: The output of `saved_model_cli show --all`.
    """

    path: Path
    input_name: str
    outputs: dict
    signatures: list
    signature_outputs: dict
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
    signature_inputs: Mapping[str, Mapping[str, Any]] | None = None,
    atol: float = 1e-5,
    print_signatures: bool = True,
    timeout: float = 600.0,
) -> VerifyReport:
    """Loads an exported version in a fresh TensorFlow-only process and checks it.

    The fresh Python process imports TensorFlow (and `tensorflow_text` only
    where the graph uses TF Text ops; the model card says so) and nothing of
    tftransfer or Keras, loads the SavedModel and runs `serving_default` on
    the raw examples. Every signature the model card lists must load. With
    `model`, `serving_prepared` also runs on the examples prepared in
    memory, and the probabilities of both must match the in-memory model's
    within `atol`. Other signatures run on `signature_inputs`. Wherever a
    signature returns `probabilities` and `classes`, the classes must be
    the labels of the highest probabilities. The signatures are printed as
    `saved_model_cli show --all` prints them.

    Args:
        path: A version folder written by `tftransfer.export()`.
        examples: Raw inputs as a client sends them: encoded image bytes, or
            strings for a text model.
        model: The in-memory model to compare with: a recipe or a
            `keras.Model` (then also pass `backbone` or `prepare`).
        backbone: The model's `Backbone`, for the default preparation.
        prepare: The preparation function used in training (default:
            `tftransfer.data.prepare_fn(backbone)`).
        signature_inputs: `{signature name: {input name: values}}`: other
            signatures (those added with `ServingArchive.add_signature()`)
            to run, and on what; their outputs are in
            `report.signature_outputs`.
        atol: Largest allowed absolute difference in probabilities.
        print_signatures: Print the `saved_model_cli show --all` output.
        timeout: Seconds to wait for the fresh process.

    Returns:
        A `VerifyReport`.

    Raises:
        ExportError: if the SavedModel does not load or run in the fresh
            process, a signature of the model card is missing or
            `signature_inputs` names one that is not there, the
            probabilities differ by more than `atol`, or the classes do not
            match the probabilities.

    Example:

    >>> report = tftransfer.export.verify(path, [jpeg_bytes], model=recipe)
    >>> report.max_abs_difference <= 1e-5
    True

    A signature added with `ServingArchive.add_signature()`:

    >>> report = tftransfer.export.verify(
    ...     path, [jpeg_bytes],
    ...     signature_inputs={"serving_uint8": {"images": uint8_images}})
    >>> report.signature_outputs["serving_uint8"]["classes"]["values"]
    ['roses']
    """
    path = Path(path)
    card = _read_card(path)
    if card["task"] == model_card.MULTI_TASK:
        raise ExportError(
            f"{str(path)!r} serves several tasks: check it with "
            "tftransfer.export.verify_tasks(path, examples, tasks)."
        )
    described = card["signatures"]
    to_run = dict(signature_inputs or {})
    unknown = sorted(set(to_run) - set(described))
    if unknown:
        raise ExportError(
            f"`signature_inputs` names signatures {unknown} that {str(path)!r} "
            f"does not have; it has {sorted(described)}."
        )
    expected, compared = None, [signatures.DEFAULT_SIGNATURE]
    if model is not None:
        prepared = _prepared(model, backbone, prepare, examples)
        expected = np.asarray(
            getattr(model, "model", model)(prepared, training=False), np.float32
        )
        if signatures.PREPARED_SIGNATURE not in to_run:
            compared.append(signatures.PREPARED_SIGNATURE)
            to_run[signatures.PREPARED_SIGNATURE] = _feed(
                prepared, described[signatures.PREPARED_SIGNATURE]["inputs"]
            )
    result, cli_output = _run_fresh_process(
        path,
        examples,
        card["serving_ops"]["needs_tensorflow_text"],
        to_run,
        timeout,
    )
    if print_signatures:
        print(cli_output)
    _check_loaded(path, described, result)
    ran = {signatures.DEFAULT_SIGNATURE: result["outputs"]}
    ran.update(result["signature_outputs"])
    for name, outputs in ran.items():
        if {"probabilities", "classes"} <= set(outputs):
            _check_classes(path, name, outputs, card["class_names"])
    difference = None
    if expected is not None:
        difference = max(
            float(np.abs(expected - _model_outputs(ran[name])).max())
            for name in compared
        )
        if difference > atol:
            raise ExportError(
                f"Served outputs of {str(path)!r} differ from the "
                f"in-memory model's by up to {difference:.3g} (> atol={atol}). "
                "The serving graph prepares inputs differently from the "
                "`prepare` given here; export with the training preparation."
            )
    return _report(path, result, difference, cli_output)


def verify_tasks(
    path: str | os.PathLike,
    examples: Sequence[bytes | str],
    tasks: Mapping[str, Any],
    *,
    atol: float = 1e-5,
    print_signatures: bool = True,
    timeout: float = 600.0,
) -> VerifyReport:
    """Checks a multi-task export (`export_tasks()`) in a fresh
    TensorFlow-only process, as `verify()` checks a single one.

    Runs `serving_default` (every task) and each task's own signature on
    the raw examples; for each task, both must return what its recipe's
    model computes on the examples prepared in memory (probabilities, or a
    regression's predictions) within `atol`, with the classes of the
    highest probabilities.

    Args:
        path: A version folder written by `export_tasks()`.
        examples: Raw inputs as a client sends them.
        tasks: Task name to the recipe exported under that name (every
            task of the export).
        atol: Largest allowed absolute difference.
        print_signatures: Print the `saved_model_cli show --all` output.
        timeout: Seconds to wait for the fresh process.

    Returns:
        A `VerifyReport`: `outputs` are `serving_default`'s, each task's
        signature's are in `signature_outputs`.

    Raises:
        ExportError: if `path` is not a multi-task export, `tasks` are not
            its tasks, the SavedModel does not load or run, or a task's
            outputs differ from its recipe's by more than `atol`.

    Example:

    >>> report = tftransfer.export.verify_tasks(
    ...     path, ["A late goal won the cup."],
    ...     {"topic": topic_recipe, "sentiment": lora_recipe})
    >>> report.max_abs_difference <= 1e-5
    True
    """
    path = Path(path)
    card = _read_card(path)
    if card["task"] != model_card.MULTI_TASK or set(tasks) != set(card["tasks"]):
        raise ExportError(
            f"Expected {str(path)!r} to be an export of the tasks "
            f"{sorted(tasks)}. It serves "
            f"{sorted(card.get('tasks') or []) or 'one model'}; pass one "
            "recipe per task it serves (verify() checks a single export)."
        )
    input_name = signatures.RAW_INPUT_NAMES[card["modality"]]
    result, cli_output = _run_fresh_process(
        path,
        examples,
        card["serving_ops"]["needs_tensorflow_text"],
        {name: {input_name: list(examples)} for name in tasks},
        timeout,
    )
    if print_signatures:
        print(cli_output)
    _check_loaded(path, card["signatures"], result)
    difference = 0.0
    for name, recipe in tasks.items():
        expected = np.asarray(
            recipe.model(_prepared(recipe, None, None, examples), training=False),
            np.float32,
        )
        prefix = f"{name}/"
        combined = {
            key.removeprefix(prefix): value
            for key, value in result["outputs"].items()
            if key.startswith(prefix)
        }
        for outputs in (result["signature_outputs"][name], combined):
            if {"probabilities", "classes"} <= set(outputs):
                _check_classes(path, name, outputs, card["tasks"][name]["class_names"])
            difference = max(
                difference, float(np.abs(expected - _model_outputs(outputs)).max())
            )
    if difference > atol:
        raise ExportError(
            f"Served outputs of {str(path)!r} differ from the in-memory "
            f"recipes' by up to {difference:.3g} (> atol={atol})."
        )
    return _report(path, result, difference, cli_output)


def _report(path: Path, result: dict, difference, cli_output: str) -> VerifyReport:
    """The report of what the fresh process `result` found."""
    return VerifyReport(
        path=path,
        input_name=result["input_name"],
        outputs=result["outputs"],
        signatures=result["signatures"],
        signature_outputs=result["signature_outputs"],
        max_abs_difference=difference,
        imported=result["imported"],
        saved_model_cli=cli_output,
    )


def _read_card(path: Path) -> dict:
    card_file = path / model_card.CARD_FILE
    if not card_file.is_file():
        raise ExportError(
            f"{str(path)!r} is not a version folder written by "
            f"tftransfer.export (no {model_card.CARD_FILE}). Pass "
            "'<base_path>/<version>'."
        )
    return json.loads(card_file.read_text())


def _check_loaded(path: Path, described: Mapping, result: dict) -> None:
    """Refuses an export whose SavedModel lacks a signature of its card."""
    missing = sorted(set(described) - set(result["signatures"]))
    if missing:
        raise ExportError(
            f"Signatures {missing} of the model card of {str(path)!r} are not "
            f"in its SavedModel (it has {result['signatures']}). Export again."
        )


def _run_fresh_process(
    path: Path,
    examples: Sequence[bytes | str],
    needs_tf_text: bool,
    signature_inputs: Mapping[str, Mapping[str, Any]],
    timeout: float,
) -> tuple[dict, str]:
    encoded = [
        base64.b64encode(e.encode("utf-8") if isinstance(e, str) else e).decode()
        for e in examples
    ]
    arrays, feeds = [], {}
    for name, feed in signature_inputs.items():
        feeds[name] = {}
        for key, value in feed.items():
            feeds[name][key] = f"arr_{len(arrays)}"
            arrays.append(_array(value))
    with tempfile.TemporaryDirectory() as scratch:
        request = Path(scratch) / "request.json"
        result_file = Path(scratch) / "result.json"
        request.write_text(
            json.dumps(
                {
                    "examples": encoded,
                    "needs_tensorflow_text": needs_tf_text,
                    "signature_inputs": feeds,
                }
            )
        )
        if arrays:
            np.savez(Path(scratch) / "inputs.npz", *arrays)
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


def _array(value: Any) -> np.ndarray:
    """`value` as an array; strings as Python `bytes`/`str` objects, which
    keep trailing NUL bytes that a fixed-width `S` array would drop."""
    array = np.asarray(value)
    if array.dtype.kind in "SU":
        array = np.asarray(value, dtype=object)
    return array


def _prepared(model, backbone, prepare, examples):
    """The examples prepared in memory as in training."""
    backbone = backbone or getattr(model, "backbone", None)
    return signatures.batched(signatures.preparation(backbone, prepare))(
        tf.constant(list(examples))
    )


def _feed(prepared, input_names) -> dict:
    """Prepared inputs keyed by the `serving_prepared` input names."""
    if isinstance(prepared, Mapping):
        return {key: np.asarray(value) for key, value in prepared.items()}
    (name,) = input_names
    return {name: np.asarray(prepared)}


def _model_outputs(outputs: Mapping) -> np.ndarray:
    """What the model itself computes in a signature's outputs: the
    probabilities, or a regression's predictions."""
    key = "probabilities" if "probabilities" in outputs else "predictions"
    return np.asarray(outputs[key]["values"], dtype=np.float32)


def _check_classes(path: Path, name: str, outputs: Mapping, class_names: list) -> None:
    """Refuses top-1 classes that are not the labels of the highest
    probabilities."""
    best = [class_names[i] for i in _model_outputs(outputs).argmax(-1)]
    if outputs["classes"]["values"] != best:
        raise ExportError(
            f"Served classes {outputs['classes']['values']} of signature "
            f"{name!r} are not the labels of the highest probabilities {best} "
            f"for {str(path)!r}; labels.txt does not match the model's "
            "outputs. Export again."
        )
