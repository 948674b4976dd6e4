"""What LoRA on a TF Hub SavedModel costs (`tftransfer.recipes.hub_lora`),
against BitFit and full fine-tuning of the same SavedModel.

Configuration: a MiniLM-L6-shaped BERT encoder written here as a TF Hub
reusable SavedModel (random weights, seeded: `--layers` layers, default 6,
width 384, 12 heads, FFN 1536, vocabulary 30,522, 512 positions: 22.6 M
parameters, 86 MB in float32; dict inputs `input_word_ids`, `input_mask`,
`input_type_ids`, output `pooled_output`: mean of the tokens under the
mask), loaded by `HubLayer(trainable=True)`, a linear head (5 classes),
`DiscriminativeAdamW(1e-4, backbone_lr_scale=0.3)`, one random batch of
`--batch` (32) sequences of `--seq-length` (128) tokens, all unmasked.
The backbone variables of each method are chosen by the library's own code
paths, as `FineTuning(method=...)` chooses them:

- `full`: every backbone variable trains;
- `bitfit`: `peft.bitfit_variables` (biases, LayerNorm gamma and beta);
- `lora`: `peft.lora_layers(layer, weights, "auto")` (the query and value
  kernels), `peft.lora_rank(targets, --lora-rank)` (`auto`: 8),
  `peft.enable_lora(targets, rank, None, seed=0)`: the factors train, the
  SavedModel's kernels are assigned `W0 + a @ b` before each call;
- `kernels` (reference, `--methods` can leave it out): the same kernels as
  LoRA's, trained outright (no factors), to show what the factors add.

Measured, for each method:

- trainable backbone bytes, optimizer-state bytes (`model.optimizer.
  variables`, head included), the bytes of the frozen copies `W0` LoRA
  keeps (`hub_lora.adapters(layer)[i].frozen`; each step also computes a
  dense gradient of each adapted kernel, as large, transient);
- step times: every method's model is built in one process and their steps
  are interleaved (`--rounds` rounds of `--steps` `train_on_batch` steps of
  each method in turn; the first round, which traces, left out); medians
  of the CPU time of the process (`time.process_time`: all threads) and of
  the wall time per step;
- peak resident memory: one fresh process per method (this script with
  `--peak-memory METHOD`) loads the SavedModel, builds the model and runs
  `--memory-steps` steps; its peak RSS (`VmHWM`) and the peak before the
  SavedModel was loaded.

Every figure is also printed as a ratio to full fine-tuning, measured in
the same run. On a shared machine the wall times vary with the load (the
load average is printed before and after); the CPU times are steadier.

    PYTHONPATH=benchmarks:. TF_CPP_MIN_LOG_LEVEL=3 python benchmarks/hub_lora_cost.py \\
        [--seq-length 128 --batch 32 --layers 6 --rounds 4 --steps 3 \\
         --memory-steps 4 --methods full,bitfit,lora,kernels]
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tftransfer.hub import HubLayer
from tftransfer.recipes import hub_lora, peft
from tftransfer.recipes.optimizers import DiscriminativeAdamW

WIDTH, HEADS, FFN, VOCAB, POSITIONS = 384, 12, 1536, 30522, 512
CLASSES = 5
METHODS = ("full", "bitfit", "lora", "kernels")
INPUTS = ("input_word_ids", "input_mask", "input_type_ids")


# The SavedModel -------------------------------------------------------------


class MiniLMShapedEncoder(tf.Module):
    """A post-LayerNorm BERT encoder of MiniLM-L6's shape, random weights
    (seed 0), its variables named as TF Hub's BERT encoders name them
    (`transformer/layer_0/self_attention/query/kernel`, ...)."""

    def __init__(self, layers: int):
        super().__init__()
        rng = np.random.default_rng(0)

        def variable(shape, name, fill=None):
            value = rng.normal(0, 0.02, shape) if fill is None else np.full(shape, fill)
            return tf.Variable(value.astype("float32"), name=name)

        def dense(shape, prefix):
            return variable(shape, prefix + "/kernel"), variable(
                shape[-1:], prefix + "/bias", 0.0
            )

        def norm(prefix):
            return variable((WIDTH,), prefix + "/gamma", 1.0), variable(
                (WIDTH,), prefix + "/beta", 0.0
            )

        self.word_embeddings = variable((VOCAB, WIDTH), "embeddings/word_embeddings")
        self.position_embeddings = variable(
            (POSITIONS, WIDTH), "embeddings/position_embeddings"
        )
        self.layers = []
        for i in range(layers):
            prefix = f"transformer/layer_{i}/"
            attention = prefix + "self_attention/"
            self.layers.append(
                {
                    **{
                        name: dense((WIDTH, WIDTH), attention + name)
                        for name in ("query", "key", "value", "attention_output")
                    },
                    "norm1": norm(prefix + "self_attention_layer_norm"),
                    "intermediate": dense((WIDTH, FFN), prefix + "intermediate"),
                    "output": dense((FFN, WIDTH), prefix + "output"),
                    "norm2": norm(prefix + "output_layer_norm"),
                }
            )
        self.regularization_losses = []
        spec = {
            name: tf.TensorSpec([None, None], tf.int32, name=name) for name in INPUTS
        }
        self.__call__.get_concrete_function(spec, True)
        self.__call__.get_concrete_function(spec, False)

    @tf.function
    def __call__(self, inputs, training=False):
        ids = inputs["input_word_ids"]
        batch, length = tf.shape(ids)[0], tf.shape(ids)[1]
        x = tf.gather(self.word_embeddings, ids) + self.position_embeddings[:length]
        mask = tf.cast(inputs["input_mask"], tf.float32)
        attention_bias = (1.0 - mask[:, None, None, :]) * -1e4

        def layer_norm(x, gamma, beta):
            mean, variance = tf.nn.moments(x, [-1], keepdims=True)
            return (x - mean) * tf.math.rsqrt(variance + 1e-12) * gamma + beta

        def heads(x):
            x = tf.reshape(x, [batch, length, HEADS, WIDTH // HEADS])
            return tf.transpose(x, [0, 2, 1, 3])

        for layer in self.layers:
            q, k, v = (
                heads(x @ layer[name][0] + layer[name][1])
                for name in ("query", "key", "value")
            )
            scores = q @ tf.transpose(k, [0, 1, 3, 2]) / (WIDTH // HEADS) ** 0.5
            attended = tf.nn.softmax(scores + attention_bias) @ v
            attended = tf.reshape(tf.transpose(attended, [0, 2, 1, 3]), tf.shape(x))
            projected = attended @ layer["attention_output"][0]
            x = layer_norm(
                x + projected + layer["attention_output"][1], *layer["norm1"]
            )
            hidden = tf.nn.gelu(x @ layer["intermediate"][0] + layer["intermediate"][1])
            x = layer_norm(
                x + hidden @ layer["output"][0] + layer["output"][1], *layer["norm2"]
            )
        pooled = tf.reduce_sum(x * mask[..., None], 1) / tf.maximum(
            tf.reduce_sum(mask, 1, keepdims=True), 1.0
        )
        return {"pooled_output": pooled, "sequence_output": x, "default": pooled}


def save_encoder(path: str, layers: int) -> str:
    """Writes the encoder as a TF Hub reusable SavedModel (`__call__` traced
    for both values of `training`, `variables`, `trainable_variables`,
    `regularization_losses`), as TF Hub's TF2 models were written."""
    module = MiniLMShapedEncoder(layers)
    root = tf.__internal__.tracking.AutoTrackable()
    root.__call__ = module.__call__
    root.variables = list(module.variables)
    root.trainable_variables = list(module.trainable_variables)
    root.regularization_losses = []
    root.module = module
    tf.saved_model.save(root, path)
    return path


# The models -----------------------------------------------------------------


def training_model(path: str, method: str, args):
    """The SavedModel + a linear head, compiled for one fine-tuning step,
    its backbone variables chosen as `FineTuning(method=...)` chooses them.
    Returns the model, the `HubLayer` and the trainable backbone variables."""
    layer = HubLayer(path, trainable=True, output_key="pooled_output")
    candidates = list(layer.trainable_weights)
    chosen = candidates
    if method == "bitfit":
        chosen = peft.bitfit_variables(candidates)
    elif method in ("lora", "kernels"):
        targets = peft.lora_layers(layer, candidates, "auto")
        if method == "lora":
            rank = peft.lora_rank(targets, args.lora_rank)
            chosen = peft.enable_lora(targets, rank, None, seed=0)
        else:
            chosen = [target.variable for target in targets]
    chosen_ids = {id(v) for v in chosen}
    for variable in candidates:
        variable.trainable = id(variable) in chosen_ids
    inputs = {
        name: keras.Input((args.seq_length,), dtype="int32", name=name)
        for name in INPUTS
    }
    model = keras.Model(inputs, keras.layers.Dense(CLASSES)(layer(inputs)))
    model.compile(
        DiscriminativeAdamW(1e-4, backbone_variables=chosen, backbone_lr_scale=0.3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model, layer, chosen


def one_batch(args):
    rng = np.random.default_rng(0)
    shape = (args.batch, args.seq_length)
    features = {
        "input_word_ids": rng.integers(0, VOCAB, shape).astype("int32"),
        "input_mask": np.ones(shape, "int32"),
        "input_type_ids": np.zeros(shape, "int32"),
    }
    return features, rng.integers(0, CLASSES, args.batch)


def sizes(model, layer, chosen) -> dict:
    adapters = hub_lora.adapters(layer)
    return {
        "trainable_backbone_mb": sum(v.numpy().nbytes for v in chosen) / 2**20,
        "optimizer_state_mb": sum(v.numpy().nbytes for v in model.optimizer.variables)
        / 2**20,
        "frozen_copies_mb": sum(a.frozen.numpy().nbytes for a in adapters) / 2**20,
        "adapted_kernels": len(adapters),
        **({"rank": adapters[0].b.shape[0]} if adapters else {}),
    }


# Measurements ---------------------------------------------------------------


def high_water_mb() -> float:
    """This process's peak RSS so far, in MiB (Linux's `VmHWM`, which starts
    afresh at `exec`; `ru_maxrss` as a fallback)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(path: str, method: str, args) -> None:
    """In this (fresh) process: load, build, `--memory-steps` steps; prints
    the peak RSS before loading and at the end as one JSON line."""
    batch = one_batch(args)
    before = high_water_mb()
    model, _, _ = training_model(path, method, args)
    for _ in range(args.memory_steps):
        model.train_on_batch(*batch)
    print(json.dumps({"peak_before_mb": before, "peak_mb": high_water_mb()}))


def run_peak_memory(path: str, method: str) -> dict:
    command = [sys.executable, __file__, *sys.argv[1:], "--peak-memory", method]
    output = subprocess.run(
        [*command, "--path", path],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def step_times(path: str, methods: list, args):
    """Median CPU and wall seconds per step of each method, interleaved in
    this process; and each method's sizes."""
    built = {m: training_model(path, m, args) for m in methods}
    batch = one_batch(args)
    cpu = {m: [] for m in methods}
    wall = {m: [] for m in methods}
    for round_index in range(args.rounds):
        for method in methods:
            model = built[method][0]
            for _ in range(args.steps):
                wall_start, cpu_start = time.perf_counter(), time.process_time()
                model.train_on_batch(*batch)
                if round_index:
                    wall[method].append(time.perf_counter() - wall_start)
                    cpu[method].append(time.process_time() - cpu_start)
    return (
        {m: statistics.median(t) for m, t in cpu.items()},
        {m: statistics.median(t) for m, t in wall.items()},
        {m: sizes(*built[m]) for m in methods},
        {m: [round(t, 3) for t in wall[m]] for m in methods},
    )


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seq-length", type=int, default=128)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=4, help="first left out")
    parser.add_argument("--steps", type=int, default=3, help="per method a round")
    parser.add_argument("--memory-steps", type=int, default=4)
    parser.add_argument(
        "--lora-rank",
        type=lambda text: text if text == "auto" else int(text),
        default="auto",
        help="an integer, or auto (the recipes' default: 8 here)",
    )
    parser.add_argument("--methods", default=",".join(METHODS), help="full first")
    parser.add_argument("--peak-memory", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peak_memory:
        peak_memory(args.path, args.peak_memory, args)
        return
    methods = args.methods.split(",")
    if methods[0] != "full" or set(methods) - set(METHODS):
        parser.error(f"--methods: full first, then some of {METHODS[1:]}")
    if args.rounds < 2:
        parser.error("--rounds: at least 2 (the first is left out)")
    start = time.perf_counter()
    print(f"load_average_start: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as work:
        path = save_encoder(os.path.join(work, "encoder"), args.layers)
        parameters = sum(
            int(np.prod(v.shape)) for v in tf.saved_model.load(path).variables
        )
        print(
            f"config: MiniLM-L6-shaped BERT encoder as a TF Hub SavedModel (random "
            f"weights, {args.layers} layers, width {WIDTH}, {HEADS} heads, FFN "
            f"{FFN}, vocab {VOCAB}: {parameters / 1e6:.1f} M parameters, "
            f"{parameters * 4 / 2**20:.1f} MiB), HubLayer + linear head on "
            f"pooled_output, DiscriminativeAdamW (backbone x0.3), batch "
            f"{args.batch} of {args.seq_length} tokens, LoRA rank "
            f"{args.lora_rank} on query/value; {args.rounds} rounds of "
            f"{args.steps} steps of each method interleaved (first round left "
            f"out), medians; peak RSS of one process per method, "
            f"{args.memory_steps} steps; {os.cpu_count()} logical CPUs",
            flush=True,
        )
        cpu, wall, size, all_wall = step_times(path, methods, args)
        print(f"load_average_after_steps: {load_average()}", flush=True)
        peaks = {m: run_peak_memory(path, m) for m in methods}
    for method in methods:
        for name, value in size[method].items():
            print(
                f"{method}_{name}: {value:.4g}"
                if name.endswith("_mb")
                else f"{method}_{name}: {value}"
            )
        print(f"{method}_cpu_s_per_step: {cpu[method]:.3f}")
        print(f"{method}_wall_s_per_step: {wall[method]:.3f}")
        print(f"{method}_wall_s_all_steps: {all_wall[method]}")
        print(f"{method}_peak_rss_mb: {peaks[method]['peak_mb']:.0f}")
        print(
            f"{method}_peak_rss_before_load_mb: {peaks[method]['peak_before_mb']:.0f}"
        )
    for method in methods[1:]:
        full = size["full"]
        print(
            f"{method}_trainable_backbone_ratio_to_full: "
            f"{size[method]['trainable_backbone_mb'] / full['trainable_backbone_mb']:.4f}"
        )
        print(
            f"{method}_optimizer_state_ratio_to_full: "
            f"{size[method]['optimizer_state_mb'] / full['optimizer_state_mb']:.4f}"
        )
        print(f"{method}_cpu_ratio_to_full: {cpu[method] / cpu['full']:.3f}")
        print(f"{method}_wall_ratio_to_full: {wall[method] / wall['full']:.3f}")
        print(
            f"{method}_peak_rss_ratio_to_full: "
            f"{peaks[method]['peak_mb'] / peaks['full']['peak_mb']:.3f}"
        )
    if "lora" in methods:
        print(
            "lora_frozen_copies_share_of_backbone: "
            f"{size['lora']['frozen_copies_mb'] / size['full']['trainable_backbone_mb']:.4f}"
        )
    print(f"load_average_end: {load_average()}")
    print(f"total_seconds: {time.perf_counter() - start:.0f}")


if __name__ == "__main__":
    main()
