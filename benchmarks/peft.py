"""Parameter-efficient fine-tuning (issue 14): LoRA and BitFit vs full
fine-tuning, on a text and an image backbone, and their deltas.

Each part runs one bounded configuration, the same for every method and
stated in its `config:` line, at fixed peak learning rates per method (no
range test: it would cost more than the training; the backbone trains at
0.3x the peak), batch 32, the recipe's seed 0 unless `--seeds` says more.
LoRA's rank is `--lora-rank`, by default the recipes' `"auto"`: 8 on
MiniLM's query and value, 4 on Lite0's convolutions. `--parts` chooses the
parts (each can be rerun alone):

- `speed` (all-MiniLM-L6-v2): trainable share, optimizer memory, step time
  of the backbone plus a linear head on mean-pooled tokens, all backbone
  weights trainable vs LoRA factors (query and value) only, both
  with `DiscriminativeAdamW`; steps timed interleaved (`--rounds` rounds of
  `--steps` steps of each, the first round left out) on one batch, medians.
- `text` (all-MiniLM-L6-v2 on BBC News: 60/20/20 split, seed 0;
  `--train-examples` keeps N training articles at random, seed 0;
  `--seq-length`; one head epoch, `--epochs` phase-2 epochs):
  `FineTuning(method=...)` for full, LoRA and BitFit.
- `image` (EfficientNet-Lite0, ImageNet, on Fashion-MNIST: the loader of
  `transfer_quality.py`, `--per-class` training images and
  `--validation-per-class` validation images a class drawn per seed, a
  fixed test set of `--test-per-class` a class, 28x28 grayscale prepared
  by the library as 224x224 RGB; `--head-epochs` head epochs on cached
  features, `--image-epochs` phase-2 epochs): full, LoRA (on every
  convolution Keras's `enable_lora` supports: `lora_targets="auto"`) and
  BitFit (biases and BatchNorm gamma/beta; statistics frozen).

For each fitted recipe: test accuracy (and which model it kept: fine-tuned
or frozen), fit time, and its delta: `save_delta`, the `.npz` size over the
backbone's float32 weights (`delta_size_ratio`), and `load_delta` + the
source backbone vs the recipe's model on a test batch (max absolute
difference).

Prints `name: value` lines; goals (issue 14):
minilm_lora_accuracy >= minilm_full_accuracy - 0.005,
minilm_lora_trainable_share <= 0.02, minilm_lora_step_time_ratio <= 1,
minilm_lora_optimizer_memory_ratio <= 0.05;
lite0_lora_accuracy or lite0_bitfit_accuracy >= lite0_full_accuracy - 0.01;
<backbone>_{lora,bitfit}_delta_size_ratio <= 0.03;
<backbone>_<method>_load_delta_max_abs_diff <= 1e-5.

    PYTHONPATH=benchmarks:. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/peft.py \\
        [--parts speed,text,image --seeds 0]
"""

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import keras
import numpy as np
from transfer_quality import bbc_news, fashion_pool, few_shot

import tftransfer
from tftransfer.deltas import load_delta, save_delta
from tftransfer.recipes import FineTuning, peft
from tftransfer.recipes.optimizers import DiscriminativeAdamW

BATCH = 32
PARTS = ("speed", "text", "image")
METHODS = ("full", "lora", "bitfit")
# Fixed peak (head) learning rates of phase 2; the backbone trains at 0.3x.
PEAK = {
    "minilm": {"full": 1e-4, "lora": 1e-3, "bitfit": 3e-3},
    "lite0": {"full": 3e-4, "lora": 3e-3, "bitfit": 3e-3},
}


# Shared measurements ------------------------------------------------------


def fit(backbone, method, splits, work, *, peak, head_epochs, epochs, seed, rank):
    """A `FineTuning(method=...)` at a fixed peak rate, fitted; returns the
    recipe, its test accuracy and its fit time in seconds."""
    recipe = FineTuning(
        backbone,
        method=method,
        lora_rank=rank,
        head_epochs=head_epochs,
        fine_tune_epochs=epochs,
        fine_tune_learning_rate=peak,
        learning_rate=1e-2,
        head_weight_decay=0.0,
        batch_size=BATCH,
        seed=seed,
        cache_dir=f"{work}/cache",
        run_dir=f"{work}/{method}-seed{seed}",
        strategy="default",
        verbose=0,
    )
    start = time.perf_counter()
    recipe.fit(splits.train, splits.validation)
    seconds = time.perf_counter() - start
    return recipe, recipe.evaluate(splits.test)["accuracy"], seconds


def weights_bytes(backbone) -> int:
    """The bytes of the backbone's weights, all float32 (as built)."""
    weights = backbone.build(trainable=False).weights
    assert all(w.dtype == "float32" for w in weights), "expected float32 weights"
    return sum(w.numpy().nbytes for w in weights)


def report_delta(name, recipe, test, work, source_bytes) -> None:
    """Prints the delta of a fitted recipe: size, ratio to the backbone's
    float32 weights, and `load_delta`'s difference from the recipe's model."""
    folder = save_delta(recipe, Path(work) / f"delta-{name}")
    size = (folder / "delta.npz").stat().st_size
    folder_size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file())
    print(f"{name}_delta_mb: {size / 2**20:.2f}")
    print(f"{name}_delta_size_ratio: {size / source_bytes:.4f}")
    print(f"{name}_delta_folder_mb: {folder_size / 2**20:.2f}")
    inputs = next(iter(recipe._batches(test)))[0]
    loaded = load_delta(folder)
    difference = np.abs(loaded(inputs).numpy() - recipe.model(inputs).numpy())
    print(f"{name}_load_delta_max_abs_diff: {difference.max():.2e}", flush=True)


def compare_methods(
    prefix, backbone, load_splits, seeds, methods, **fit_options
) -> None:
    """Fits every method on the same splits per seed (methods in turn, so
    a change in the machine's load touches them alike); prints accuracy,
    kept model, fit time and delta of each, then the differences from full
    fine-tuning (means over the seeds)."""
    source_bytes = weights_bytes(backbone)
    print(f"{prefix}_backbone_float32_mb: {source_bytes / 2**20:.2f}")
    accuracies = {m: [] for m in methods}
    for seed in seeds:
        splits = load_splits(seed)
        with tempfile.TemporaryDirectory() as work:
            for method in methods:
                recipe, accuracy, seconds = fit(
                    backbone,
                    method,
                    splits,
                    work,
                    peak=PEAK[prefix][method],
                    seed=seed,
                    **fit_options,
                )
                accuracies[method].append(accuracy)
                name = f"{prefix}_{method}"
                print(
                    f"{name}_accuracy: {accuracy:.4f} (seed {seed}, "
                    f"{splits.test.num_examples} test examples, kept {recipe.chosen})"
                )
                print(f"{name}_fit_seconds: {seconds:.0f}")
                if seed == seeds[0]:
                    report_delta(name, recipe, splits.test, work, source_bytes)
                del recipe
    mean = {m: float(np.mean(a)) for m, a in accuracies.items()}
    if len(seeds) > 1:
        for method in methods:
            print(
                f"{prefix}_{method}_mean_accuracy: {mean[method]:.4f} +- "
                f"{np.std(accuracies[method]):.4f} (seeds {seeds})"
            )
    for method in [m for m in methods if m != "full" and "full" in methods]:
        print(
            f"{prefix}_{method}_minus_full_accuracy: {mean[method] - mean['full']:+.4f}"
        )


def count(variables):
    return sum(int(np.prod(v.shape)) for v in variables)


# Text: all-MiniLM-L6-v2 on BBC News --------------------------------------


def bbc_subset(args):
    splits = bbc_news(0, args)
    if args.train_examples:
        splits.train = dataclasses.replace(
            splits.train,
            dataset=splits.train.dataset.shuffle(4096, seed=0).take(
                args.train_examples
            ),
            num_examples=min(args.train_examples, splits.train.num_examples),
        )
    return splits


def training_model(backbone, method, rank):
    """MiniLM + linear head, compiled for one phase-2 step."""
    layer = backbone.build(trainable=True)
    chosen = layer.trainable_weights
    if method == "lora":
        targets = peft.lora_layers(layer, chosen, "auto")
        chosen = peft.enable_lora(targets, peft.lora_rank(targets, rank), None)
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


def speed(backbone, splits, args) -> None:
    """Step time, trainable share, optimizer memory: full vs LoRA, interleaved."""
    print(
        f"config speed: all-MiniLM-L6-v2, seq_length {args.seq_length}, batch "
        f"{BATCH}, one BBC News test batch, {args.rounds} rounds of {args.steps} "
        f"steps of each (first round left out), LoRA rank {args.lora_rank} on "
        "query/value"
    )
    models = {m: training_model(backbone, m, args.lora_rank) for m in ("full", "lora")}
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
        print(f"minilm_{method}_trainable_share: {share[method]:.4f}")
        print(f"minilm_{method}_optimizer_memory_mb: {memory[method] / 2**20:.2f}")
        print(f"minilm_{method}_step_time_s: {step[method]:.3f}")
    print(f"minilm_lora_step_time_ratio: {step['lora'] / step['full']:.3f}")
    print(
        f"minilm_lora_optimizer_memory_ratio: {memory['lora'] / memory['full']:.4f}",
        flush=True,
    )


def text(backbone, splits, args) -> None:
    print(
        f"config text: all-MiniLM-L6-v2, BBC News seed 0, train "
        f"{args.train_examples or 'all'} articles, seq_length {args.seq_length}, "
        f"batch {BATCH}, 1 head epoch, {args.epochs} fine-tuning epochs, peak lr "
        + ", ".join(f"{m} {r}" for m, r in PEAK["minilm"].items())
        + f" (backbone x0.3), LoRA rank {args.lora_rank} on query/value, recipe seed 0",
        flush=True,
    )
    compare_methods(
        "minilm",
        backbone,
        lambda seed: splits,
        [0],
        args.methods,
        head_epochs=1,
        epochs=args.epochs,
        rank=args.lora_rank,
    )


# Image: EfficientNet-Lite0 on Fashion-MNIST -------------------------------


def image(args, seeds) -> None:
    backbone = tftransfer.backbone("efficientnet-lite0")
    load = few_shot(
        fashion_pool,
        per_class=args.per_class,
        validation_per_class=args.validation_per_class,
        test_per_class=args.test_per_class,
    )
    print(
        f"config image: EfficientNet-Lite0 (ImageNet), Fashion-MNIST (first "
        f"5,000 test-file images), {args.per_class} train / "
        f"{args.validation_per_class} validation images a class drawn per seed, "
        f"fixed test set {args.test_per_class} a class (10 classes), 28x28 "
        f"grayscale prepared as {backbone.image_size[0]}x{backbone.image_size[1]} "
        f"RGB, batch {BATCH}, up to {args.head_epochs} head epochs (lr 1e-2), "
        f"{args.image_epochs} fine-tuning epochs, peak lr "
        + ", ".join(f"{m} {r}" for m, r in PEAK["lite0"].items())
        + f" (backbone x0.3), LoRA rank {args.lora_rank} on every supported convolution, "
        f"BatchNorm statistics frozen, seeds {seeds}",
        flush=True,
    )
    compare_methods(
        "lite0",
        backbone,
        lambda seed: load(seed, args),
        seeds,
        args.methods,
        head_epochs=args.head_epochs,
        epochs=args.image_epochs,
        rank=args.lora_rank,
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated")
    parser.add_argument("--seeds", default="0", help="image part: comma-separated")
    parser.add_argument(
        "--methods", default=",".join(METHODS), help="text and image parts"
    )
    parser.add_argument(
        "--lora-rank",
        type=lambda text: text if text == "auto" else int(text),
        default="auto",
        help="an integer, or auto (the recipes' default: 8; 4 on convolutions)",
    )
    parser.add_argument("--train-examples", type=int, default=600)
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=2, help="text part")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--validation-per-class", type=int, default=30)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--head-epochs", type=int, default=20, help="image part")
    parser.add_argument("--image-epochs", type=int, default=3, help="image part")
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose among {list(PARTS)}")
    args.methods = args.methods.split(",")
    if set(args.methods) - set(METHODS):
        parser.error(f"unknown methods in {args.methods}; choose among {METHODS}")
    seeds = [int(s) for s in args.seeds.split(",")]
    start = time.perf_counter()
    if "speed" in parts or "text" in parts:
        backbone = tftransfer.backbone("all-minilm-l6-v2", seq_length=args.seq_length)
        splits = bbc_subset(args)
        if "speed" in parts:
            speed(backbone, splits, args)
        if "text" in parts:
            text(backbone, splits, args)
    if "image" in parts:
        image(args, seeds)
    print(f"total_seconds: {time.perf_counter() - start:.0f}")


if __name__ == "__main__":
    main()
