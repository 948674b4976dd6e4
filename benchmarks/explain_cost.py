"""The cost of explaining one prediction, in forward+backward passes.

Each method of `tftransfer.explain.explain()` at its default settings
explains one raw example (preparation included), timed against one forward
and backward pass of the same model on one prepared example: the gradient
of the explained output with respect to what integrated gradients
differentiate (the pixels; a text model's token embeddings). Both are
warmed up and timed the same way (eagerly, as `explain()` runs), taking
turns so they share the machine's load; the best of `--repeats` is kept.

Models: MobileNetV3Small (random weights, 224 x 224) with a 5-class softmax
head, and all-MiniLM-L6-v2 (128 tokens, the default run's backbone) with
one, where its weights are installed. Prints `name: ratio` lines; the goal
for integrated gradients is <= 60.

    python benchmarks/explain_cost.py [--repeats 3]
"""

import argparse
import functools
import time

import common
import keras
import numpy as np
import tensorflow as tf

import tftransfer
from tftransfer.explain import explain, layers

GOAL = 60.0
ARTICLE = (
    "Piero gives rugby perspective. BBC Sport unveils its new analysis tool "
    "Piero at the Six Nations, giving viewers a three-dimensional look at "
    "the tactics of the game from any angle on the pitch, in real time."
)


def _best(functions, repeats: int) -> list[float]:
    """Best time of each function; they take turns, so load is shared."""
    for function in functions:
        function()  # Trace and warm up.
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            start = time.perf_counter()
            function()
            best[index] = min(best[index], time.perf_counter() - start)
    return best


def _image_case():
    backbone = tftransfer.Backbone(
        name="mobilenet_v3_small",
        handle="bench://mobilenet_v3_small",
        modality="image",
        feature_dim=576,
        builder=lambda trainable: common.random_mobilenet_v3_small(224),
        image_size=(224, 224),
    )
    model = keras.Sequential(
        [
            keras.Input((224, 224, 3)),
            backbone.build(),
            keras.layers.Dense(5, activation="softmax"),
        ]
    )
    raw = np.random.default_rng(0).integers(0, 256, (240, 320, 3)).astype("uint8")
    prepared = tftransfer.data.prepare_fn(backbone)(raw)[None]

    def one_pass():
        with tf.GradientTape() as tape:
            tape.watch(prepared)
            score = model(prepared, training=False)[:, 0]
        return tape.gradient(score, prepared)

    return "image_mobilenet_v3_small_224", model, backbone, raw, one_pass, True


def _text_case():
    try:
        backbone = tftransfer.backbone("all-minilm-l6-v2", seq_length=128)
        layer = backbone.build()
    except tftransfer.TFTransferError as error:
        print(f"(text case skipped: {error})")
        return None
    inputs = {
        key: keras.Input((128,), dtype="int32", name=key)
        for key in ("input_word_ids", "input_mask", "input_type_ids")
    }
    model = keras.Model(
        inputs, keras.layers.Dense(5, activation="softmax")(layer(inputs))
    )
    prepared = tftransfer.data.prepare_fn(backbone)(tf.constant([ARTICLE]))
    embedding = layers.token_embedding(model)

    def one_pass():
        seen = []
        with tf.GradientTape() as tape:
            hook = layers.watched(tape, seen)
            with layers.output_hook(embedding, hook):
                score = model(prepared, training=False)[:, 0]
        return tape.gradient(score, seen[-1])

    return "text_all_minilm_l6_v2_128", model, backbone, ARTICLE, one_pass, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for case in (_image_case(), _text_case()):
        if case is None:
            continue
        name, model, backbone, raw, one_pass, image = case
        methods = ["integrated_gradients", "occlusion"]
        if image:
            methods.insert(1, "grad_cam")
        functions = [one_pass] + [
            functools.partial(explain, model, [raw], method, backbone=backbone)
            for method in methods
        ]
        times = _best(functions, args.repeats)
        print(f"# {name}: one forward+backward pass {times[0] * 1e3:.1f} ms")
        for method, elapsed in zip(methods, times[1:], strict=True):
            print(f"{method}_{name}: {elapsed / times[0]:.1f}")
        ratio = times[1] / times[0]
        verdict = "met" if ratio <= GOAL else "MISSED"
        print(f"# goal integrated_gradients <= {GOAL:.0f} passes: {verdict}")


if __name__ == "__main__":
    main()
