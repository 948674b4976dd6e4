"""HubLayer forward time vs calling the restored SavedModel object directly.

Both are measured in this one run, on the same hub-format SavedModel (a
MobileNetV2 written by `tftransfer.hubify`, random weights), the same batch,
each inside a `tf.function` (how Keras runs a layer in `predict` and `fit`),
and also eagerly. Prints `name: ratio` lines; goal for the compiled ratio is
<= 1.05.

    python benchmarks/hub_layer_overhead.py
"""

import argparse
import collections
import tempfile
import timeit

import keras
import numpy as np
import tensorflow as tf

import tftransfer


def _best_times(functions, inputs, repeats: int, number: int) -> list[float]:
    """Best time of each function; the functions take turns, so load is shared."""
    for function in functions:
        function(inputs)  # Trace and warm up.
    best = [float("inf")] * len(functions)
    for _ in range(repeats):
        for index, function in enumerate(functions):
            elapsed = timeit.timeit(lambda f=function: f(inputs), number=number)
            best[index] = min(best[index], elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--number", type=int, default=5)
    args = parser.parse_args()

    size = args.image_size
    network = keras.applications.MobileNetV2(
        input_shape=(size, size, 3), include_top=False, pooling="avg", weights=None
    )
    path = tempfile.mkdtemp(prefix="hub_layer_overhead_") + "/model"
    tftransfer.hubify(network, path)

    restored = tf.saved_model.load(path)
    layer = tftransfer.HubLayer(path)
    images = tf.constant(
        np.random.default_rng(0).random((args.batch_size, size, size, 3)), tf.float32
    )
    np.testing.assert_array_equal(
        layer(images).numpy(), restored(images, training=False).numpy()
    )

    timing = dict(repeats=args.repeats, number=args.number)
    direct_function = tf.function(lambda x: restored(x, training=False))
    layer_function = tf.function(layer)
    compiled_direct, compiled_layer = _best_times(
        [direct_function, layer_function], images, **timing
    )
    eager_direct, eager_layer = _best_times(
        [lambda x: restored(x, training=False), layer], images, **timing
    )

    print(f"batch {args.batch_size} x {size}x{size}x3, best of {args.repeats}")
    print(f"direct_compiled_ms: {1000 * compiled_direct / args.number:.2f}")
    print(f"hub_layer_compiled_ms: {1000 * compiled_layer / args.number:.2f}")
    print(f"hub_layer_vs_direct_compiled: {compiled_layer / compiled_direct:.3f}")
    print(f"hub_layer_vs_direct_eager: {eager_layer / eager_direct:.3f}")
    # Timings on a shared machine are noisy; the graphs say what is run.
    direct_ops = _graph_ops(direct_function, images)
    layer_ops = _graph_ops(layer_function, images)
    print(f"compiled_graphs_run_the_same_ops: {direct_ops == layer_ops}")
    if direct_ops != layer_ops:
        print(f"  only direct: {dict(direct_ops - layer_ops)}")
        print(f"  only hub_layer: {dict(layer_ops - direct_ops)}")


def _graph_ops(function, inputs) -> collections.Counter:
    """How often each op type runs in a traced function and its nested ones."""
    graph_def = function.get_concrete_function(inputs).graph.as_graph_def()
    ops = collections.Counter(node.op for node in graph_def.node)
    for nested in graph_def.library.function:
        ops.update(node.op for node in nested.node_def)
    return ops


if __name__ == "__main__":
    main()
