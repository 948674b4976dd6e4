"""Three tasks on one MiniLM as one SavedModel, against one task's SavedModel.

Three tasks on the same BBC News articles (`--train-examples` training and
`--validation-examples` validation articles drawn with seed 0; latency
batches from the rest): `topic` (the 5 topics), `sports` (sports or not) and
`politics` (business or politics, or not). Each is trained twice on
all-MiniLM-L6-v2 (seq_length `--seq-length`): `FeatureExtraction` (a head
on the frozen backbone) and `FineTuning(method="lora")` (rank 8, query and
value; one head epoch, then `--epochs` epochs at a fixed peak learning rate
of 1e-3).

- size: bytes of each version folder (saved_model.pb, variables, assets):
  `export_tasks` of the three LoRA tasks and of the three frozen tasks,
  over `tftransfer.export` of the LoRA `topic` task alone (LoRA merged);
  the graph (`saved_model.pb`: one trace per signature) and the weights
  (`variables/`) of each also apart;
- latency: median seconds per call on `--batch` raw articles; every model
  loaded with `tf.saved_model.load` in this process, called twice before
  timing, then timed interleaved (`--rounds` rounds of `--calls` calls of
  each): the single export's `serving_default` (one task, the baseline) vs
  the all-tasks `serving_default` of the frozen-trunk export (one backbone
  pass) and of the LoRA export (one pass per task), and the LoRA export's
  `topic` signature (LoRA applied on the fly);
- `verify_tasks` of the LoRA export in a fresh TensorFlow-only process, and
  its `saved_model_cli show --all` written to `--cli-output`.

Prints `name: value` lines. Goals (issue 14): lora_multi_task_size_ratio
<= 1.1; frozen_all_tasks_latency_ratio <= 1.2.

    PYTHONPATH=benchmarks:. TF_CPP_MIN_LOG_LEVEL=3 python \\
        benchmarks/multi_task_export.py [--train-examples 200 --epochs 1]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from transfer_quality import bbc_articles

import tftransfer
from tftransfer.recipes import FeatureExtraction, FineTuning

# Task name -> the topics that are its positive class (None: all topics).
TASKS = {"topic": None, "sports": ("sports",), "politics": ("business", "politics")}


def task_data(texts, topics, topic_names, positive):
    """`LabeledData` of one task: the topics, or positive vs the rest."""
    if positive is None:
        return tftransfer.data.from_arrays(texts, topics, topic_names)
    wanted = [topic_names.index(name) for name in positive]
    labels = np.isin(topics, wanted).astype(int)
    return tftransfer.data.from_arrays(texts, labels, ["other", "+".join(positive)])


def fit(kind, backbone, train, validation, work, epochs):
    common = dict(
        head_epochs=1,
        learning_rate=1e-2,
        head_weight_decay=0.0,
        batch_size=32,
        cache_dir=f"{work}/cache",
        run_dir=f"{work}/{kind}",
        strategy="default",
        verbose=0,
    )
    if kind.startswith("frozen"):
        recipe = FeatureExtraction(backbone, **common)
    else:
        recipe = FineTuning(
            backbone,
            method="lora",
            fine_tune_epochs=epochs,
            fine_tune_learning_rate=1e-3,
            **common,
        )
    recipe.fit(train, validation)
    return recipe


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def timed(functions: dict, batch, rounds: int, calls: int) -> dict:
    """Median seconds per call of each function, interleaved in rounds."""
    for function in functions.values():
        function(batch)
        function(batch)
    times = {name: [] for name in functions}
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            for _ in range(calls):
                function(batch)
            times[name].append((time.perf_counter() - start) / calls)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train-examples", type=int, default=200)
    parser.add_argument("--validation-examples", type=int, default=100)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--cli-output", default="multi_task_saved_model_cli.txt")
    args = parser.parse_args()
    print(
        f"configuration: all-minilm-l6-v2, seq_length {args.seq_length}; "
        f"{args.train_examples} training / {args.validation_examples} validation "
        f"articles (seed 0); LoRA rank 8 query/value, {args.epochs} epoch(s) at "
        f"1e-3; batch {args.batch}, {args.rounds} rounds x {args.calls} calls"
    )
    texts, topics, topic_names = bbc_articles()
    order = np.random.default_rng(0).permutation(len(texts))
    train_at = order[: args.train_examples]
    validation_at = order[args.train_examples :][: args.validation_examples]
    batch = tf.constant(list(texts[order[-args.batch :]]))
    backbone = tftransfer.backbone("all-minilm-l6-v2", seq_length=args.seq_length)
    with tempfile.TemporaryDirectory() as work:
        recipes = {"frozen": {}, "lora": {}}
        for name, positive in TASKS.items():
            train, validation = (
                task_data(texts[at], topics[at], topic_names, positive)
                for at in (train_at, validation_at)
            )
            for kind in recipes:
                start = time.perf_counter()
                recipe = fit(
                    kind, backbone, train, validation, f"{work}/{name}", args.epochs
                )
                recipes[kind][name] = recipe
                print(
                    f"{kind}_{name}_fit_seconds: {time.perf_counter() - start:.1f} "
                    f"(kept {getattr(recipe, 'chosen', None) or 'frozen'})",
                    flush=True,
                )
        single = tftransfer.export(recipes["lora"]["topic"], f"{work}/single")
        exports = {
            kind: tftransfer.export.export_tasks(tasks, f"{work}/{kind}-tasks")
            for kind, tasks in recipes.items()
        }
        single_bytes = folder_bytes(single)
        print(f"single_task_export_mb: {single_bytes / 2**20:.2f}")
        for name, path in (("single", single), *exports.items()):
            graph = (path / "saved_model.pb").stat().st_size
            weights = folder_bytes(path / "variables")
            print(f"{name}_graph_mb: {graph / 2**20:.2f}")
            print(f"{name}_variables_mb: {weights / 2**20:.2f}")
        for kind, path in exports.items():
            size = folder_bytes(path)
            print(f"{kind}_multi_task_export_mb: {size / 2**20:.2f}")
            print(f"{kind}_multi_task_size_ratio: {size / single_bytes:.3f}")
        signatures = {
            name: tf.saved_model.load(str(path)).signatures
            for name, path in (("single", single), *exports.items())
        }
        functions = {
            "one_task": lambda raw: signatures["single"]["serving_default"](text=raw),
            "frozen_all_tasks": lambda raw: signatures["frozen"]["serving_default"](
                text=raw
            ),
            "lora_all_tasks": lambda raw: signatures["lora"]["serving_default"](
                text=raw
            ),
            "lora_topic_signature": lambda raw: signatures["lora"]["topic"](text=raw),
        }
        seconds = timed(functions, batch, args.rounds, args.calls)
        for name, value in seconds.items():
            print(f"{name}_seconds: {value:.4f}")
            if name != "one_task":
                print(f"{name}_latency_ratio: {value / seconds['one_task']:.3f}")
        report = tftransfer.export.verify_tasks(
            exports["lora"],
            [t.decode() for t in batch.numpy()[:4]],
            recipes["lora"],
            print_signatures=False,
        )
        print(f"lora_verify_tasks_max_abs_diff: {report.max_abs_difference:.2e}")
        print(f"fresh_process_imported: {report.imported}")
        Path(args.cli_output).write_text(report.saved_model_cli)
        print(f"saved_model_cli: {args.cli_output}")


if __name__ == "__main__":
    main()
