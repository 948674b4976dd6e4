"""LoRA vs full fine-tuning of all-MiniLM-L6-v2 on BBC News, and its delta.

One bounded configuration for both sides (stated in the output): BBC News
(60/20/20 split, seed 0; `--train-examples` keeps N training articles
at random, seed 0), seq_length `--seq-length`, one head epoch, `--epochs` phase-2
epochs at fixed peak learning rates (no range test: it would cost more
than the training), batch 32.

- accuracy: `FineTuning(method="full")` and `FineTuning(method="lora")`
  test accuracy (and which model each kept: fine-tuned or frozen);
- trainable share, optimizer memory, step time: the backbone plus a linear
  head on mean-pooled tokens, all backbone weights trainable vs LoRA
  factors (rank 8, query and value) only, both with `DiscriminativeAdamW`;
  steps timed interleaved (`--rounds` rounds of `--steps` steps of each,
  the first round left out) on one batch, medians printed;
- delta: `save_delta` of both recipes, the `.npz` size vs the backbone's
  float32 weights; `load_delta` + the source backbone vs the recipe's
  model on test inputs (max absolute difference).

Prints `name: value` lines; goals (issue 14): lora_accuracy >= full - 0.005,
lora_trainable_share <= 0.02, lora_step_time_ratio <= 1,
lora_optimizer_memory_ratio <= 0.05, lora_delta_size_ratio <= 0.03,
load_delta_max_abs_diff <= 1e-5.

    PYTHONPATH=benchmarks:. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/peft.py \\
        [--train-examples 600 --seq-length 128 --epochs 2 --rounds 4 --steps 3]
"""

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from transfer_quality import bbc_news

import tftransfer
from tftransfer.deltas import load_delta, save_delta
from tftransfer.recipes import FineTuning, peft
from tftransfer.recipes.optimizers import DiscriminativeAdamW

BATCH = 32
PEAK = {"full": 1e-4, "lora": 1e-3}


def fit(method, splits, backbone, work, epochs):
    recipe = FineTuning(
        backbone,
        method=method,
        head_epochs=1,
        fine_tune_epochs=epochs,
        fine_tune_learning_rate=PEAK[method],
        learning_rate=1e-2,
        head_weight_decay=0.0,
        batch_size=BATCH,
        cache_dir=f"{work}/cache",
        run_dir=f"{work}/{method}",
        strategy="default",
        verbose=0,
    )
    start = time.perf_counter()
    recipe.fit(splits.train, splits.validation)
    seconds = time.perf_counter() - start
    return recipe, recipe.evaluate(splits.test)["accuracy"], seconds


def training_model(backbone, method):
    """Backbone + linear head, compiled for one phase-2 step."""
    layer = backbone.build(trainable=True)
    chosen = layer.trainable_weights
    if method == "lora":
        chosen = peft.enable_lora(peft.lora_layers(layer, chosen, "auto"), 8, None)
        chosen_ids = {id(v) for v in chosen}
        for variable in layer.weights:
            variable.trainable = id(variable) in chosen_ids
    inputs = {
        name: keras.Input((backbone.seq_length,), dtype="int32", name=name)
        for name in ("input_word_ids", "input_mask", "input_type_ids")
    }
    features = layer(inputs)
    model = keras.Model(inputs, keras.layers.Dense(5)(features))
    model.compile(
        DiscriminativeAdamW(1e-4, backbone_variables=chosen, backbone_lr_scale=0.3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--train-examples", type=int, default=600)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    backbone = tftransfer.backbone("all-minilm-l6-v2", seq_length=args.seq_length)
    splits = bbc_news(0, args)
    if args.train_examples:
        splits.train = dataclasses.replace(
            splits.train,
            dataset=splits.train.dataset.shuffle(4096, seed=0).take(
                args.train_examples
            ),
            num_examples=min(args.train_examples, splits.train.num_examples),
        )
    print(
        f"config: all-MiniLM-L6-v2, BBC News seed 0, train "
        f"{args.train_examples or 'all'} articles, seq_length {args.seq_length}, "
        f"batch {BATCH}, 1 head epoch, {args.epochs} fine-tuning epochs, peak "
        f"lr full {PEAK['full']} / lora {PEAK['lora']} (backbone x0.3), LoRA "
        "rank 8 on query/value"
    )

    # Step time, trainable share, optimizer memory: interleaved.
    models = {m: training_model(backbone, m) for m in ("full", "lora")}
    preprocess = backbone.text_preprocessor()
    texts = next(iter(splits.test.dataset.batch(BATCH)))[0]
    batch = (preprocess(texts), np.zeros(BATCH, "int64"))
    times = {m: [] for m in models}
    for round_index in range(args.rounds):
        for method, model in models.items():
            for _ in range(args.steps):
                start = time.perf_counter()
                model.train_on_batch(*batch)
                if round_index:
                    times[method].append(time.perf_counter() - start)
    share = {
        m: count(x.trainable_weights) / count(x.weights) for m, x in models.items()
    }
    memory = {
        m: sum(v.numpy().nbytes for v in x.optimizer.variables)
        for m, x in models.items()
    }
    step = {m: statistics.median(t) for m, t in times.items()}
    for method in models:
        print(f"{method}_trainable_share: {share[method]:.4f}")
        print(f"{method}_optimizer_memory_mb: {memory[method] / 2**20:.2f}")
        print(f"{method}_step_time_s: {step[method]:.3f}")
    print(f"lora_step_time_ratio: {step['lora'] / step['full']:.3f}")
    print(f"lora_optimizer_memory_ratio: {memory['lora'] / memory['full']:.4f}")
    del models

    with tempfile.TemporaryDirectory() as work:
        results = {m: fit(m, splits, backbone, work, args.epochs) for m in PEAK}
        source_bytes = sum(
            w.numpy().nbytes for w in results["full"][0].backbone_layer.weights
        )
        for method, (recipe, accuracy, seconds) in results.items():
            print(f"{method}_accuracy: {accuracy:.4f} (kept {recipe.chosen})")
            print(f"{method}_fit_seconds: {seconds:.0f}")
            folder = save_delta(recipe, Path(work) / f"delta-{method}")
            size = (folder / "delta.npz").stat().st_size
            print(f"{method}_delta_mb: {size / 2**20:.2f}")
            print(f"{method}_delta_size_ratio: {size / source_bytes:.4f}")
            inputs = next(iter(recipe._batches(splits.test)))[0]
            loaded = load_delta(folder)
            difference = np.abs(loaded(inputs).numpy() - recipe.model(inputs).numpy())
            print(f"{method}_load_delta_max_abs_diff: {difference.max():.2e}")
        print(f"backbone_float32_mb: {source_bytes / 2**20:.2f}")
        full, lora = results["full"][1], results["lora"][1]
        print(f"lora_minus_full_accuracy: {lora - full:+.4f}")


if __name__ == "__main__":
    main()
