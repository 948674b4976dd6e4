"""MultiWorkerMirroredStrategy: 2 worker processes on 127.0.0.1.

Run by pytest, this file starts itself twice as a worker (`python
tests/test_distribute_multi_worker.py <index> <ports> <out>`).
"""

import json
import sys

import numpy as np
from processes import finish, free_ports, join_cluster, start


def test_multi_worker_training_gives_identical_weights_on_both_workers(tmp_path):
    ports = ",".join(map(str, free_ports(2)))
    finish([start(__file__, index, ports, tmp_path) for index in range(2)])
    weights = [np.load(tmp_path / f"worker{index}.npz") for index in range(2)]
    assert weights[0].files == weights[1].files
    for key in weights[0].files:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])
    history = json.loads((tmp_path / "history0.json").read_text())
    assert len(history["loss"]) == 3
    assert history["loss"][-1] < history["loss"][0]
    initial = np.load(tmp_path / "initial0.npz")
    assert not np.array_equal(initial["w0"], weights[0]["w0"])
    # The recipe's best epoch is not its last, and every worker ends on the
    # best weights, after the first run and after resuming.
    recipe_history = json.loads((tmp_path / "recipe_history0.json").read_text())
    assert recipe_history == json.loads((tmp_path / "recipe_history1.json").read_text())
    assert len(recipe_history["val_loss"]) == 3
    assert int(np.argmin(recipe_history["val_loss"])) == 0
    for run in ("first", "resumed"):
        recipe_weights = [np.load(tmp_path / f"{run}{index}.npz") for index in range(2)]
        for key in recipe_weights[0].files:
            np.testing.assert_array_equal(
                recipe_weights[0][key], recipe_weights[1][key]
            )
    # Only the chief wrote the feature cache and the checkpoints.
    assert len(list((tmp_path / "cache").glob("*/train/manifest.json"))) == 1
    assert list((tmp_path / "run" / "checkpoints").glob("head-*/state.npz"))


def _worker(index, ports, out_dir):
    join_cluster(index, ports)
    import keras
    import tensorflow as tf

    from tftransfer import distribute
    from tftransfer.recipes import FeatureExtraction, training_loop

    strategy = distribute.resolve_strategy("auto")
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    assert not distribute.fit_supported(strategy)
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(64, 8)).astype("float32")
    labels = (features[:, 0] > 0).astype("int64")
    batch = distribute.global_batch_size(8, strategy)
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(batch)
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((8,)),
                keras.layers.Dense(4, activation="relu"),
                keras.layers.Dense(2, activation="softmax"),
            ]
        )
        model.compile(
            keras.optimizers.Adam(0.05),
            keras.losses.SparseCategoricalCrossentropy(),
            metrics=["accuracy"],
        )
    np.savez(
        f"{out_dir}/initial{index}.npz",
        **{f"w{i}": v.numpy() for i, v in enumerate(model.weights)},
    )
    history = training_loop.train(
        model, data, strategy=strategy, epochs=3, validation_data=data, verbose=2
    )
    np.savez(
        f"{out_dir}/worker{index}.npz",
        **{f"w{i}": v.numpy() for i, v in enumerate(model.weights)},
    )
    with open(f"{out_dir}/history{index}.json", "w") as handle:
        json.dump(history.history, handle)

    # The same recipe code trains under MultiWorkerMirroredStrategy. The
    # validation labels are the training labels inverted, so the validation
    # loss is best after the first epoch: the workers must all end on the
    # best weights, not on the last ones. A second run with more epochs
    # resumes from the chief's checkpoint on every worker.
    images = rng.normal(size=(32, 6, 6, 3)).astype("float32")
    image_labels = (images[:, 0, 0, 0] > 0).astype("int64")
    train_images = tf.data.Dataset.from_tensor_slices((images, image_labels))
    validation_images = tf.data.Dataset.from_tensor_slices((images, 1 - image_labels))
    with strategy.scope():
        backbone = keras.Sequential([keras.Input((6, 6, 3)), keras.layers.Flatten()])
    for run, epochs in (("first", 2), ("resumed", 3)):
        recipe = FeatureExtraction(
            backbone,
            strategy=strategy,
            head_epochs=epochs,
            patience=None,
            learning_rate=0.1,
            batch_size=8,
            cache_dir=f"{out_dir}/cache",
            run_dir=f"{out_dir}/run",
            verbose=0,
        )
        recipe.fit(train_images.batch(batch), validation_images.batch(batch))
        np.savez(
            f"{out_dir}/{run}{index}.npz",
            **{f"w{i}": v.numpy() for i, v in enumerate(recipe.model.weights)},
        )
    with open(f"{out_dir}/recipe_history{index}.json", "w") as handle:
        json.dump(recipe.history.history, handle)


if __name__ == "__main__":
    _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
