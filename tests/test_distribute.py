"""Strategy selection (TPU paths with a resolver double) and mirrored training."""

import json
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import signal_images, tiny_recipe

import tftransfer
from tftransfer import ConfigError, distribute
from tftransfer.recipes import FeatureExtraction, training_loop
from tftransfer.recipes.callbacks import TrainingState


class FakeResolver:
    """Stands in for `TPUClusterResolver`: records the TPU it was given."""

    created = []

    def __init__(self, tpu=None):
        if tpu == "unreachable":
            raise ValueError("Could not lookup TPU metadata")
        self.tpu = tpu
        FakeResolver.created.append(tpu)


@pytest.fixture
def fake_tpu(monkeypatch):
    FakeResolver.created = []
    calls = []
    monkeypatch.setattr(distribute, "TPUClusterResolver", FakeResolver)
    monkeypatch.setattr(
        tf.config,
        "experimental_connect_to_cluster",
        lambda r: calls.append(("connect", r.tpu)),
    )
    monkeypatch.setattr(
        tf.tpu.experimental,
        "initialize_tpu_system",
        lambda r: calls.append(("init", r.tpu)),
    )
    monkeypatch.setattr(tf.distribute, "TPUStrategy", lambda r: ("TPUStrategy", r.tpu))
    for name in ("TPU_NAME", "COLAB_TPU_ADDR", "TF_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return calls


def _no_tpu_vm(monkeypatch):
    monkeypatch.setattr(distribute.glob, "glob", lambda pattern: [])


def test_default_kind_returns_the_default_strategy():
    strategy = distribute.resolve_strategy("default")
    assert strategy is tf.distribute.get_strategy()
    assert strategy.num_replicas_in_sync == 1
    assert distribute.fit_supported(strategy)
    assert distribute.is_chief(strategy)
    assert distribute.load_options(strategy) is None
    assert distribute.steps_per_execution(strategy) == 1


def test_unknown_kind_raises_config_error_naming_it():
    with pytest.raises(ConfigError, match="kind='gpu'"):
        distribute.resolve_strategy("gpu")


def test_auto_without_accelerators_or_cluster_gives_default(fake_tpu, monkeypatch):
    _no_tpu_vm(monkeypatch)
    assert distribute.resolve_strategy("auto") is tf.distribute.get_strategy()
    assert FakeResolver.created == []


def test_auto_connects_to_local_tpu_on_a_tpu_vm(fake_tpu, monkeypatch):
    monkeypatch.setattr(
        distribute.glob, "glob", lambda p: ["/dev/accel0"] if "accel" in p else []
    )
    monkeypatch.setattr(distribute.importlib.util, "find_spec", lambda name: object())
    assert distribute.resolve_strategy("auto") == ("TPUStrategy", "local")
    assert fake_tpu == [("connect", "local"), ("init", "local")]


def test_auto_uses_tpu_name_from_environment(fake_tpu, monkeypatch):
    _no_tpu_vm(monkeypatch)
    monkeypatch.setenv("TPU_NAME", "node-1")
    assert distribute.resolve_strategy("auto") == ("TPUStrategy", "node-1")


def test_explicit_tpu_address_is_passed_to_the_resolver(fake_tpu):
    strategy = distribute.resolve_strategy("tpu", tpu="grpc://10.0.0.2:8470")
    assert strategy == ("TPUStrategy", "grpc://10.0.0.2:8470")
    assert fake_tpu[0] == ("connect", "grpc://10.0.0.2:8470")


def test_unreachable_tpu_raises_config_error_with_fix(fake_tpu):
    with pytest.raises(ConfigError, match="tpu='local'"):
        distribute.resolve_strategy("tpu", tpu="unreachable")


def test_tpu_strategy_gets_io_device_and_steps_per_execution():
    strategy = object.__new__(tf.distribute.TPUStrategy)
    assert distribute.is_tpu(strategy)
    assert distribute.load_options(strategy).experimental_io_device == "/job:localhost"
    assert distribute.steps_per_execution(strategy) == 32
    assert distribute.fit_supported(strategy)


def test_auto_picks_multi_worker_when_tf_config_names_two_workers(
    fake_tpu, monkeypatch
):
    _no_tpu_vm(monkeypatch)
    cluster = {
        "cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
        "task": {"type": "worker", "index": 0},
    }
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    monkeypatch.setattr(
        tf.distribute, "MultiWorkerMirroredStrategy", lambda: "multi_worker"
    )
    assert distribute.resolve_strategy("auto") == "multi_worker"


def test_malformed_tf_config_raises_config_error(fake_tpu, monkeypatch):
    _no_tpu_vm(monkeypatch)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ConfigError, match="TF_CONFIG"):
        distribute.resolve_strategy("auto")


def test_auto_picks_mirrored_with_two_gpus(fake_tpu, monkeypatch):
    _no_tpu_vm(monkeypatch)
    gpus = [
        tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in range(2)
    ]
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: gpus)
    monkeypatch.setattr(
        tf.distribute, "MirroredStrategy", lambda devices=None: "mirrored"
    )
    assert distribute.resolve_strategy("auto") == "mirrored"


def test_global_batch_is_per_replica_batch_times_replicas():
    strategy = distribute.resolve_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    assert distribute.global_batch_size(8, strategy) == 16
    with pytest.raises(ConfigError, match="batch_size=0"):
        distribute.global_batch_size(0, strategy)


def _train_tiny(strategy, owned):
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(0)
    features = rng.normal(size=(48, 6)).astype("float32")
    labels = (features[:, 0] + features[:, 1] > 0).astype("int64")
    data = tf.data.Dataset.from_tensor_slices((features, labels)).batch(16)
    with strategy.scope():
        model = keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(5, activation="tanh"),
                keras.layers.Dense(2, activation="softmax"),
            ]
        )
        model.compile(
            keras.optimizers.SGD(0.1),
            keras.losses.SparseCategoricalCrossentropy(),
            metrics=["accuracy"],
        )
    if owned:
        history = training_loop.OwnedLoop(model, strategy).fit(
            data, epochs=2, verbose=0
        )
    else:
        history = training_loop.train(
            model, data, strategy=strategy, epochs=2, verbose=0
        )
    return [v.numpy() for v in model.weights], history.history


@pytest.mark.parametrize("owned", [False, True], ids=["fit", "owned_step"])
def test_mirrored_two_cpus_matches_one_device_for_same_global_batch(owned):
    assert len(tf.config.list_logical_devices("CPU")) >= 2, "needs 2 logical CPUs"
    one_weights, one_history = _train_tiny(tf.distribute.get_strategy(), owned)
    mirrored = distribute.resolve_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])
    two_weights, two_history = _train_tiny(mirrored, owned)
    for one, two in zip(one_weights, two_weights, strict=True):
        np.testing.assert_allclose(one, two, atol=1e-5)
    np.testing.assert_allclose(one_history["loss"], two_history["loss"], atol=1e-5)
    assert len(one_history["loss"]) == 2


def _diverging_fit(state, epochs, initial_epoch=0, seen=None):
    """Trains a tiny model whose validation loss is best after epoch 1: the
    validation labels are the training labels inverted."""
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(1)
    features = rng.normal(size=(32, 4)).astype("float32")
    labels = (features[:, 0] > 0).astype("int64")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, "softmax")])
    model.compile(keras.optimizers.Adam(0.1), "sparse_categorical_crossentropy")
    initial_epoch = state.restore(model)
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(
            [w.numpy().copy() for w in model.weights]
        )
    )
    history = model.fit(
        features,
        labels,
        validation_data=(features, 1 - labels),
        epochs=epochs,
        initial_epoch=initial_epoch,
        batch_size=8,
        shuffle=False,
        callbacks=[state, record] if seen is not None else [state],
        verbose=0,
    )
    return model, history.history


def _assert_weights_equal(model, weights):
    for variable, expected in zip(model.weights, weights, strict=True):
        np.testing.assert_array_equal(variable.numpy(), expected)


def test_non_writing_worker_ends_on_best_weights_and_removes_its_copy(
    tmp_path, monkeypatch
):
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private))
    shared = tmp_path / "shared"
    per_epoch = []
    state = TrainingState(shared, write=False)
    model, history = _diverging_fit(state, epochs=3, seen=per_epoch)
    assert int(np.argmin(history["val_loss"])) == 0  # the best epoch is not the last
    _assert_weights_equal(model, per_epoch[0])
    assert not shared.exists()  # it wrote nothing where the chief writes
    assert list(private.iterdir()) == []  # and removed its private best weights


def test_non_writing_worker_resumes_from_the_chief_checkpoint(tmp_path):
    shared = tmp_path / "shared"
    per_epoch = []
    chief, _ = _diverging_fit(TrainingState(shared), epochs=2, seen=per_epoch)
    _assert_weights_equal(chief, per_epoch[0])
    written = {path: path.stat().st_mtime_ns for path in shared.iterdir()}
    worker_state = TrainingState(shared, write=False)
    worker, history = _diverging_fit(worker_state, epochs=3)
    assert len(history["loss"]) == 1  # resumed at the chief's epoch 2 of 3
    assert len(worker_state.history["loss"]) == 3
    _assert_weights_equal(worker, per_epoch[0])  # the chief's best, epoch 1
    assert {path: path.stat().st_mtime_ns for path in shared.iterdir()} == written


# An io device no process has: a SavedModel read with these options fails,
# which shows the options reached the load.
UNREACHABLE_IO = tf.saved_model.LoadOptions(experimental_io_device="/job:nowhere")


def test_recipes_build_hub_backbones_with_the_strategy_load_options(
    image_model_path, tmp_path, monkeypatch
):
    from tftransfer import Backbone, HandleError
    from tftransfer.recipes import FeatureExtraction

    backbone = Backbone.from_hub(image_model_path)
    recipe = FeatureExtraction(
        backbone, head_epochs=1, cache_dir=tmp_path / "cache", run_dir=tmp_path / "run"
    )
    images = np.zeros((4, *backbone.image_size, 3), "float32")
    data = tf.data.Dataset.from_tensor_slices((images, np.array([0, 1, 0, 1])))
    monkeypatch.setattr(distribute, "load_options", lambda strategy: UNREACHABLE_IO)
    with pytest.raises(HandleError, match="/job:nowhere"):
        recipe.fit(data.batch(2))
    # Read inside a TPU strategy's scope, the signature is read with them too.
    with pytest.raises(tf.errors.InvalidArgumentError, match="/job:nowhere"):
        Backbone.from_hub(image_model_path)


def _two_cpus():
    assert len(tf.config.list_logical_devices("CPU")) >= 2, "needs 2 logical CPUs"
    return distribute.resolve_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])


def test_mirrored_strategies_of_one_process_train_on_any_device_lists():
    # A second strategy would reuse the first one's collective keys
    # (tensorflow/tensorflow#62790): one per device list, each new list
    # with its own keys.
    assert _two_cpus() is distribute.resolve_strategy(
        "mirrored", devices=["/CPU:0", "/device:CPU:1"]
    )
    one_weights, _ = _train_tiny(tf.distribute.get_strategy(), owned=False)
    for devices in (["/cpu:0", "/cpu:1"], ["/cpu:1", "/cpu:0"], ["/cpu:0"]):
        strategy = distribute.resolve_strategy("mirrored", devices=devices)
        weights, history = _train_tiny(strategy, owned=False)
        assert np.isfinite(history["loss"]).all()
        for one, other in zip(one_weights, weights, strict=True):
            np.testing.assert_allclose(one, other, atol=1e-5)


def test_several_steps_per_execution_are_refused_with_two_replicas(tmp_path):
    strategy = _two_cpus()
    assert not distribute.several_steps_per_execution(strategy)
    assert distribute.steps_per_execution(strategy) == 1
    with pytest.raises(ConfigError, match="keras-team/keras#19246"):
        distribute.steps_per_execution(strategy, 4)
    with pytest.raises(ConfigError, match="steps_per_execution=4 cannot run"):
        tiny_recipe(
            FeatureExtraction, tmp_path, strategy=strategy, steps_per_execution=4
        )


def test_the_head_trains_several_steps_an_epoch_on_two_replicas(tmp_path):
    # The head runs a whole epoch per execution where it can; not here.
    pixels, signal = signal_images(64)
    data = tftransfer.data.from_arrays(pixels, (signal > 0.5).astype(int))
    recipe = tiny_recipe(
        FeatureExtraction, tmp_path, strategy=_two_cpus(), batch_size=8
    )
    history = recipe.fit(data, data)
    assert recipe.strategy.num_replicas_in_sync == 2
    assert len(history.history["loss"]) == 3
    assert np.isfinite(history.history["loss"]).all()
