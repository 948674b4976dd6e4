"""GPU paths of tftransfer, timed, with the same figures on the CPU for scale.

Runs (each on the GPU when TensorFlow sees one, and on the CPU):
  - the feature pass of MiniLM (`all-minilm-l6-v2`, seq_length 128) and
    EfficientNet-Lite0 (224x224): examples/s in float32, under
    `mixed_float16` (GPU only) and `mixed_bfloat16`, and with XLA
    (`jit_compile=True`); warm-up left out, median of the timed repeats; and
    the largest cosine drift (1 - cos) of each variant's features from the
    float32 ones on the same batch;
  - one fine-tuning train step (the recipe's phase-2 model: backbone in
    inference mode + linear head, DiscriminativeAdamW), float32 and mixed;
  - the EfficientNet-Lite0 train step under `MirroredStrategy` over all
    visible GPUs (with one GPU it only checks that it works).

Every measurement runs in its own try: one that fails is reported, the rest
go on. The GPU and the CPU figures come from two worker processes (the CPU
one with no GPU visible), so neither sees the other's device or dtype policy.
Prints a header, then one table; writes the figures as JSON to
`$OUT/device_check.json` when `OUT` is set (or to `--json`).

    python benchmarks/device_check.py [--quick] [--devices gpu,cpu]

Usually started by benchmarks/device_check.sh, which finds a Python with
TensorFlow first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
BACKBONES = {"minilm": "all-minilm-l6-v2", "efficientnet-lite0": "efficientnet-lite0"}
CLASSES = 5


def settings(device: str, quick: bool) -> dict:
    """Batch, repeats and variants per device; `--quick` shrinks the CPU runs
    (for this check's own tests on machines with few cores)."""
    gpu = device == "gpu"
    feature_variants = ["float32", "mixed_bfloat16", "float32+xla"]
    train_variants = ["float32", "mixed_bfloat16"]
    if gpu:
        feature_variants = [
            "float32",
            "mixed_float16",
            "mixed_bfloat16",
            "float32+xla",
            "mixed_float16+xla",
        ]
        train_variants = ["float32", "mixed_float16", "mixed_float16+xla"]
    batch = 64
    repeats, train_repeats = (10, 5) if gpu else (2, 2)
    if quick and not gpu:
        batch, repeats, train_repeats = 8, 2, 2
    return {
        "batch": batch,
        "seq_length": 128,
        "image_size": 224,
        "repeats": repeats,
        "train_repeats": train_repeats,
        "feature_variants": feature_variants,
        "train_variants": train_variants,
    }


# ----------------------------------------------------------------- worker


def worker(device: str, quick: bool, path: str) -> None:
    """Measures everything on `device` ("gpu" or "cpu"); writes JSON to `path`."""
    result = {"device": device, "errors": [], "rows": [], "skipped": []}

    def save():
        with open(path, "w") as f:
            json.dump(result, f, indent=1)

    import warnings

    # MiniLM's pooler is not in the sentence embedding, so it gets no gradient.
    warnings.filterwarnings("ignore", message="Gradients do not exist for variables")
    try:
        import keras
        import tensorflow as tf
    except Exception as error:  # reported, not raised
        result["errors"].append(f"import tensorflow/keras: {error!r}")
        save()
        return
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        with contextlib.suppress(RuntimeError):  # already initialized
            tf.config.experimental.set_memory_growth(gpu, True)
    result["info"] = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "built_with_cuda": tf.test.is_built_with_cuda(),
        "cuda_build": {
            key: value
            for key, value in tf.sysconfig.get_build_info().items()
            if key in ("cuda_version", "cudnn_version")
        },
        "gpus": [
            tf.config.experimental.get_device_details(g).get("device_name", g.name)
            for g in gpus
        ],
        "cpu_threads": os.cpu_count(),
    }
    if device == "gpu" and not gpus:
        result["skipped"].append(
            "no GPU visible to TensorFlow (built with CUDA: "
            f"{tf.test.is_built_with_cuda()}): GPU paths not run"
        )
        save()
        return
    config = settings(device, quick)
    result["settings"] = config
    save()
    measure = Measure(tf, keras, config, result, save)
    for short, name in BACKBONES.items():
        try:
            import tftransfer

            backbone = tftransfer.backbone(name)  # MiniLM: seq_length 128
        except Exception as error:
            measure.error(f"{short}: backbone: {error!r}")
            continue
        measure.features(short, backbone)
        measure.train_steps(short, backbone)
    if device == "gpu":
        measure.mirrored(BACKBONES["efficientnet-lite0"], len(gpus))
    save()


class Measure:
    """The timed runs of one worker; each adds rows or an error to `result`."""

    def __init__(self, tf, keras, config, result, save):
        self.tf, self.keras, self.config = tf, keras, config
        self.result, self.save = result, save

    def error(self, message: str) -> None:
        print(f"  ERROR {message}", flush=True)
        self.result["errors"].append(message)
        self.save()

    def timed_row(self, batch: int, step: float, first_s: float, **row) -> None:
        """A row of one timed step: its milliseconds, throughput and the
        first (tracing) call's seconds, beside `row`'s fields."""
        self.row(
            **row,
            batch=batch,
            step_ms=round(1000 * step, 2),
            examples_per_s=round(batch / step, 1),
            first_call_s=round(first_s, 2),
        )

    def row(self, **row) -> None:
        shown = ", ".join(f"{k}={v}" for k, v in row.items())
        print(f"  {self.result['device']}: {shown}", flush=True)
        self.result["rows"].append(row)
        self.save()

    def inputs(self, backbone, batch: int):
        import numpy as np

        rng = np.random.default_rng(0)
        if backbone.modality == "text":
            seq = self.config["seq_length"]
            ids = rng.integers(1000, 30000, size=(batch, seq)).astype("int32")
            ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
            return {
                "input_word_ids": self.tf.constant(ids),
                "input_mask": self.tf.ones((batch, seq), "int32"),
                "input_type_ids": self.tf.zeros((batch, seq), "int32"),
            }
        low, high = backbone.value_range
        size = self.config["image_size"]
        images = rng.uniform(low, high, size=(batch, size, size, 3)).astype("float32")
        return self.tf.constant(images)

    def built(self, backbone, policy: str, trainable: bool):
        """`backbone.build()` under the dtype `policy` (the global policy is
        put back to float32 afterwards)."""
        self.keras.mixed_precision.set_global_policy(policy)
        try:
            self.keras.utils.set_random_seed(0)
            return backbone.build(trainable=trainable)
        finally:
            self.keras.mixed_precision.set_global_policy("float32")

    def features(self, short: str, backbone) -> None:
        import numpy as np

        tf, batch = self.tf, self.config["batch"]
        x = self.inputs(backbone, batch)
        reference = None
        for variant in self.config["feature_variants"]:
            policy, _, xla = variant.partition("+")
            try:
                layer = self.built(backbone, policy, trainable=False)
                call = tf.function(
                    lambda inputs, layer=layer: layer(inputs, training=False),
                    jit_compile=bool(xla),
                )
                start = time.perf_counter()
                out = call(x).numpy()  # traces (and compiles, with XLA)
                first_s = time.perf_counter() - start
                call(x).numpy()
                times = []
                for _ in range(self.config["repeats"]):
                    start = time.perf_counter()
                    out = call(x).numpy()
                    times.append(time.perf_counter() - start)
                step = statistics.median(times)
                out = out.astype("float64")
                drift = None
                if variant == "float32":
                    reference = out
                elif reference is not None:
                    cos = np.sum(out * reference, 1) / (
                        np.linalg.norm(out, axis=1) * np.linalg.norm(reference, axis=1)
                    )
                    drift = float(np.max(1.0 - cos))
                self.timed_row(
                    batch,
                    step,
                    first_s,
                    kind="features",
                    backbone=short,
                    variant=variant,
                    max_cosine_drift=None if drift is None else float(f"{drift:.3g}"),
                )
                del layer, call
            except Exception as error:
                self.error(f"{short} features {variant}: {error!r}")
                traceback.print_exc()

    def train_model(self, backbone, policy: str):
        from tftransfer.recipes import build_head
        from tftransfer.recipes.heads import InferenceMode
        from tftransfer.recipes.optimizers import DiscriminativeAdamW

        keras = self.keras
        layer = self.built(backbone, policy, trainable=True)
        keras.mixed_precision.set_global_policy(policy)
        try:
            if backbone.modality == "text":
                seq = self.config["seq_length"]
                inputs = {
                    key: keras.Input((seq,), dtype="int32", name=key)
                    for key in ("input_word_ids", "input_mask", "input_type_ids")
                }
            else:
                size = self.config["image_size"]
                inputs = keras.Input((size, size, 3), dtype="float32")
            head = build_head(backbone.feature_dim, CLASSES)
            model = keras.Model(inputs, head(InferenceMode(layer)(inputs)))
        finally:
            keras.mixed_precision.set_global_policy("float32")
        optimizer = DiscriminativeAdamW(
            1e-4, backbone_variables=layer.trainable_variables, global_clipnorm=1.0
        )
        return model, optimizer

    def time_train(self, model, x, y, repeats: int):
        start = time.perf_counter()
        model.train_on_batch(x, y)  # traces (and compiles, with XLA)
        first_s = time.perf_counter() - start
        model.train_on_batch(x, y)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model.train_on_batch(x, y)  # returns numpy logs: waits for the step
            times.append(time.perf_counter() - start)
        return statistics.median(times), first_s

    def train_steps(self, short: str, backbone) -> None:
        tf, batch = self.tf, self.config["batch"]
        x = self.inputs(backbone, batch)
        y = tf.constant([i % CLASSES for i in range(batch)])
        for variant in self.config["train_variants"]:
            policy, _, xla = variant.partition("+")
            try:
                model, optimizer = self.train_model(backbone, policy)
                # Keras wraps the optimizer in a LossScaleOptimizer under
                # mixed_float16.
                model.compile(
                    optimizer,
                    "sparse_categorical_crossentropy",
                    jit_compile=bool(xla),
                )
                step, first_s = self.time_train(
                    model, x, y, self.config["train_repeats"]
                )
                self.timed_row(
                    batch,
                    step,
                    first_s,
                    kind="train_step",
                    backbone=short,
                    variant=variant,
                )
                del model, optimizer
            except Exception as error:
                self.error(f"{short} train_step {variant}: {error!r}")
                traceback.print_exc()

    def mirrored(
        self,
        name: str,
        gpu_count: int,
        devices: list[str] | None = None,
        policy: str = "mixed_float16",
    ) -> None:
        """EfficientNet-Lite0's train step under `MirroredStrategy` (every GPU,
        or `devices`), per-replica batch as configured, through `Model.fit`
        so that each replica gets its share of the global batch."""
        import numpy as np

        import tftransfer
        from tftransfer.distribute import global_batch_size, resolve_strategy

        if devices is None and gpu_count < 2:
            self.result["skipped"].append(
                f"MirroredStrategy: {gpu_count} GPU visible, run on one replica "
                "to check that it works (no scaling figure)"
            )
        try:
            strategy = resolve_strategy("mirrored", devices=devices)
            replicas = strategy.num_replicas_in_sync
            batch = global_batch_size(self.config["batch"], strategy)
            backbone = tftransfer.backbone(name)
            x = self.inputs(backbone, batch).numpy()
            y = np.arange(batch) % CLASSES
            steps = self.config["train_repeats"]
            data = self.tf.data.Dataset.from_tensors((x, y)).repeat()
            with strategy.scope():
                model, optimizer = self.train_model(backbone, policy)
                model.compile(optimizer, "sparse_categorical_crossentropy")
            start = time.perf_counter()
            model.fit(
                data, steps_per_epoch=2, verbose=0, shuffle=False
            )  # traces, warms up
            first_s = time.perf_counter() - start
            start = time.perf_counter()
            model.fit(
                data, steps_per_epoch=steps, verbose=0, shuffle=False
            )  # waits for the end
            step = (time.perf_counter() - start) / steps
            self.timed_row(
                batch,
                step,
                first_s,
                kind="train_step",
                backbone="efficientnet-lite0",
                variant=f"mirrored x{replicas} {policy} (fit)",
            )
        except Exception as error:
            self.error(f"MirroredStrategy: {error!r}")
            traceback.print_exc()


# ----------------------------------------------------------------- driver


def run_worker(device: str, quick: bool, timeout: float) -> dict:
    """Runs one worker process and returns its JSON (or why there is none)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    with tempfile.TemporaryDirectory() as work:
        path = os.path.join(work, f"{device}.json")
        command = [sys.executable, __file__, "--worker", device, "--json", path]
        if quick:
            command.append("--quick")
        print(f"== {device} worker ==", flush=True)
        try:
            code = subprocess.run(command, env=env, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
        result = {"device": device, "errors": [], "rows": [], "skipped": []}
        if os.path.exists(path):
            with open(path) as f:
                result = json.load(f)
        if code != 0:
            result["errors"].append(
                f"{device} worker stopped at its {timeout:.0f} s limit; its "
                "figures so far are kept"
                if code == "timeout"
                else f"{device} worker exited with code {code}"
            )
        return result


def table(results: list[dict]) -> str:
    header = (
        "device",
        "kind",
        "backbone",
        "variant",
        "batch",
        "step ms",
        "ex/s",
        "1st call s",
        "max 1-cos",
    )
    lines = [header]
    for result in results:
        for row in result["rows"]:
            drift = row.get("max_cosine_drift")
            lines.append(
                (
                    result["device"],
                    row["kind"],
                    row["backbone"],
                    row["variant"],
                    str(row["batch"]),
                    f"{row['step_ms']:.1f}",
                    f"{row['examples_per_s']:.1f}",
                    f"{row['first_call_s']:.1f}",
                    "" if drift is None else f"{drift:.2e}",
                )
            )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True))
        for line in lines
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        default=os.environ.get("DEVICE_CHECK_QUICK") == "1",
        help="smaller CPU runs (batch 8, 2 repeats); env DEVICE_CHECK_QUICK=1",
    )
    parser.add_argument("--devices", default="gpu,cpu")
    parser.add_argument(
        "--budget",
        type=float,
        default=420.0,
        help="seconds for all workers together; each may use what the ones "
        "before it left, less 90 s for each one after it",
    )
    parser.add_argument("--json", default=None)
    parser.add_argument("--worker", choices=("gpu", "cpu"), help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        worker(arguments.worker, arguments.quick, arguments.json)
        return 0
    start = time.perf_counter()
    results = []
    devices = arguments.devices.split(",")
    for index, device in enumerate(devices):
        left = arguments.budget - (time.perf_counter() - start)
        left -= 90.0 * (len(devices) - index - 1)  # kept for the later workers
        results.append(run_worker(device, arguments.quick, max(left, 30.0)))
    info = next((r["info"] for r in results if r.get("info")), {})
    print("\n== device check ==")
    print(
        f"host: {platform.node()}  python {platform.python_version()}  "
        f"quick: {arguments.quick}"
    )
    for key, value in info.items():
        print(f"{key}: {value}")
    for result in results:
        for line in result.get("skipped", []):
            print(f"skipped ({result['device']}): {line}")
    print()
    print(table(results))
    errors = [f"{r['device']}: {e}" for r in results for e in r["errors"]]
    for error in errors:
        print(f"ERROR {error}")
    total = time.perf_counter() - start
    print(f"\ntotal: {total:.0f} s, {len(errors)} error(s)")
    path = arguments.json or (
        os.path.join(os.environ["OUT"], "device_check.json")
        if os.environ.get("OUT")
        else None
    )
    if path:
        with open(path, "w") as f:
            json.dump(
                {
                    "info": info,
                    "quick": arguments.quick,
                    "total_s": total,
                    "results": results,
                },
                f,
                indent=1,
            )
        print(f"figures written to {path}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
