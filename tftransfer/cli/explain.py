"""`tftransfer explain`: why a model predicts what it does on some files.

The model is a run folder (`runs/<name>`: its recipe is restored from the
checkpoints, and any method of `tftransfer.explain.explain()` works) or an
exported model (a version folder or its base folder). An export is
explained by its `explain` signature where it has one (integrated
gradients, `tftransfer.export(..., explain=True)`), else by occlusion
through its serving signatures, which needs only the forward pass; the
printed line says which. Each file's top words or image regions are
printed, and `explanations.html` (self-contained, with a heat map per
image) is written into the output folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from tftransfer.errors import ArgumentError, ConfigError, DataError

TEXT_SUFFIXES = (".txt",)
NO_EXPLAIN_SIGNATURE = (
    "the export has no explain signature (export it with explain=True for "
    "integrated gradients); explained by occlusion through its serving signatures"
)


def check_model(model: str) -> None:
    """Checks, before TensorFlow starts, that `model` is a run folder or an
    export.

    Raises:
        ConfigError: naming `model` and what it should be.
    """
    from tftransfer.cli import run, serving

    if not (Path(model) / run.RECIPE_FILE).is_file():
        try:
            serving.find_export(model)
        except ConfigError:
            raise  # An export of several tasks: its message says what to do.
        except Exception as error:
            raise ConfigError(
                f"{model} is neither a run folder (with {run.RECIPE_FILE}) nor an "
                f"exported model: {error}"
            ) from None


def explain_files(
    model: str,
    files: Sequence[str],
    *,
    method: str = "integrated_gradients",
    top_k: int = 5,
    output: str | os.PathLike = "explanations",
) -> Path:
    """Explains the model's prediction on each file; prints the top parts.

    Args:
        model: A run folder or an exported model (version or base folder).
        files: Image files, or text files (`.txt`) for a text model.
        method: One of `tftransfer.explain.METHODS`; an export without an
            `explain` signature is explained by occlusion, and Grad-CAM needs
            a run folder.
        top_k: How many words or regions to print per file.
        output: Folder for `explanations.html` and its pictures.

    Returns:
        The path of `explanations.html`.

    Raises:
        ArgumentError: if `method` is unknown, or Grad-CAM meets an export.
        DataError: if a file cannot be read.

    Example:

    >>> explain_files("runs/bbc-news-topics", ["piero.txt"])
    piero.txt: integrated_gradients for sports (0.998): try (+0.142), ...
    """
    from tftransfer.cli import run
    from tftransfer.explain import METHODS, render

    if method not in METHODS:
        raise ArgumentError(
            f"Expected --method to be one of {METHODS}. Received: {method!r}."
        )
    if (Path(model) / run.RECIPE_FILE).is_file():
        explanations = _explain_run(model, files, method)
    else:
        explanations = _explain_export(model, files, method)
    for name, explanation in zip(files, explanations, strict=True):
        print(f"{name}: {render.summary(explanation, top_k)}")
    names = [os.path.basename(name) for name in files]
    page = render.page(explanations, names, f"Explanations: {model}", output)
    print(f"Explanations: {page.resolve()}")
    return page


def _read(path: str, modality: str) -> str | bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise DataError(
            f"{path}: cannot be read ({error.strerror or error})."
        ) from None
    return data.decode("utf-8", "replace") if modality == "text" else data


def _explain_run(folder: str, files: Sequence[str], method: str) -> list:
    from tftransfer.cli import run
    from tftransfer.explain import explain

    with run.step(f"Restoring the model of {folder}"):
        recipe = run.restore(folder)
    modality = recipe.backbone.modality
    return explain(recipe, [_read(f, modality) for f in files], method)


def _explain_export(model: str, files: Sequence[str], method: str) -> list:
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers the TF Text ops of text models)

    from tftransfer.cli import serving

    if method == "grad_cam":
        raise ArgumentError(
            "method grad_cam needs the Keras model's feature maps, which an "
            "export does not expose. Pass the run folder (runs/<name>), or use "
            "--method integrated_gradients or occlusion."
        )
    path = serving.find_export(model)
    card = json.loads((path / "model_card.json").read_text())
    backbone = SimpleNamespace(**card["backbone"])
    names = serving.export_names(str(path))
    signatures = tf.saved_model.load(str(path)).signatures
    raw = [_read(f, backbone.modality) for f in files]
    if method == "integrated_gradients" and "explain" in signatures:
        return [_from_signature(signatures["explain"], backbone, item) for item in raw]
    note = NO_EXPLAIN_SIGNATURE if method == "integrated_gradients" else ""
    return [_occluded(signatures, backbone, names, item, note) for item in raw]


def _output(outputs: dict) -> np.ndarray:
    """A serving signature's outputs per class, label or target."""
    key = "probabilities" if "probabilities" in outputs else "predictions"
    return outputs[key].numpy()


def _prepared(data: bytes, backbone) -> np.ndarray:
    """Encoded image `data` prepared as the export prepares it."""
    from tftransfer.data import prepare_fn

    return prepare_fn(backbone)(data).numpy()


def _from_signature(signature, backbone, item):
    import tensorflow as tf

    from tftransfer.explain import Explanation, render, text

    name = "text" if backbone.modality == "text" else "image_bytes"
    outputs = {
        k: v.numpy()[0] for k, v in signature(**{name: tf.constant([item])}).items()
    }
    common = dict(
        method="integrated_gradients",
        target=int(outputs["target"]),
        target_name=outputs["target_name"].decode(),
        score=float(outputs["score"]),
        baseline_score=None,
    )
    if backbone.modality == "text":
        count = len(text.split_words(item))
        words = [w.decode() for w in outputs["words"][:count]]
        values = outputs["word_attributions"][:count].astype(np.float64)
        return Explanation(**common, attributions=values, words=words)
    return Explanation(
        **common,
        attributions=outputs["attributions"].astype(np.float64),
        image=render.display_pixels(_prepared(item, backbone), backbone.value_range),
    )


def _occluded(signatures, backbone, names, item, note):
    import tensorflow as tf

    from tftransfer.explain import Explanation, occlusion, render, text

    if backbone.modality == "text":
        serve = signatures["serving_default"]

        def predict(texts):
            return _output(serve(text=tf.constant(list(texts))))

        target = int(np.argmax(predict([item])[0]))
        words = text.split_words(item)
        values, score, empty = occlusion.words(predict, words, target)
        extra = {"words": words}
    else:
        serve = signatures["serving_prepared"]
        prepared = _prepared(item, backbone)
        low = backbone.value_range[0]

        def predict(images):
            return _output(serve(images=tf.constant(np.asarray(images, np.float32))))

        target = int(np.argmax(predict(prepared[None])[0]))
        values, score, empty = occlusion.patches(predict, prepared, low, target)
        extra = {"image": render.display_pixels(prepared, backbone.value_range)}
    return Explanation(
        method="occlusion",
        target=target,
        target_name=names[target] if target < len(names) else None,
        score=score,
        baseline_score=empty,
        attributions=values,
        note=note,
        **extra,
    )
