"""LoRA and BitFit under tf.distribute strategies, and after a real kill.

Run by pytest, this file also starts itself as a worker process: `python
tests/test_peft_distribute.py worker <index> <ports> <out>` (one of two
MultiWorkerMirroredStrategy workers) or `... resume <work dir> <slow>` (a
BitFit run that the test kills with SIGKILL, then restarts).
"""

import json
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from data_fixtures import batchnorm_network, with_lora_products
from processes import finish, free_ports, join_cluster, start
from test_peft import _fit_keeping_tuned, _recipe, _source_weights
from test_recipes_resume import _kill_after

from tftransfer import distribute
from tftransfer.recipes import peft

# The names the variables of `batchnorm_network()` have below the model.
KERNELS = ["conv_a/kernel", "conv_b/kernel"]
BITFIT = ["bn/beta", "bn/gamma", "conv_a/bias", "conv_b/bias"]
STATISTICS = ["bn/moving_mean", "bn/moving_variance"]


def _by_name(variables) -> dict:
    """`{path below the top model: value}` of the backbone's `variables`."""
    return {v.path.split("/", 1)[1]: np.array(v.numpy()) for v in variables}


def _changed(before: dict, after: dict) -> list:
    return sorted(k for k in before if not np.array_equal(before[k], after[k]))


class _TrainedBackbone(keras.callbacks.Callback):
    """Keeps the backbone's variables (LoRA factors included) as phase 2
    left them, before the recipe serves a merged copy."""

    def __init__(self):
        super().__init__()
        self.recipe, self.values = None, {}

    def on_train_end(self, logs=None):
        if self.model.name == "fine_tuning":
            self.values = _by_name(self.recipe.backbone_layer.weights)


def _fit_on(tmp_path, method, strategy, batch_size):
    """A recipe of `method` fitted under `strategy` (per-replica
    `batch_size`), keeping the fine-tuned weights; and the trained
    backbone's variables."""
    trained = _TrainedBackbone()
    recipe = _recipe(
        tmp_path,
        method=method,
        lora_rank=2,
        strategy=strategy,
        batch_size=batch_size,
        callbacks=[trained],
        dropout=0.0,  # Each replica would drop its own units.
        precision="float32",  # Worker processes have no conftest stub.
    )
    trained.recipe = recipe
    return _fit_keeping_tuned(recipe), trained.values


@pytest.fixture(scope="module")
def mirrored():
    """The MirroredStrategy on 2 logical CPUs (one per process)."""
    return distribute.resolve_strategy("mirrored", devices=["/cpu:0", "/cpu:1"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "bitfit"])
def test_peft_on_two_cpus_matches_one_device_for_same_global_batch(
    tmp_path, mirrored, method
):
    assert len(tf.config.list_logical_devices("CPU")) >= 2, "needs 2 logical CPUs"
    # Phase 2 reads the data's batches of 16; phase 1 the 64 cached training
    # features in one global batch (batch_size x replicas) on both: one step
    # per epoch, so the shuffle order does not matter.
    one, _ = _fit_on(tmp_path / "one", method, "default", batch_size=64)
    two, trained = _fit_on(tmp_path / "two", method, mirrored, batch_size=32)
    assert two.strategy.num_replicas_in_sync == 2
    assert len(two.history.history["loss"]) == 2
    for key in ("loss", "val_loss"):
        np.testing.assert_allclose(
            one.history.history[key], two.history.history[key], atol=1e-5
        )
    for a, b in zip(one.model.weights, two.model.weights, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)

    source = _source_weights()
    served = _by_name(two.backbone_layer.weights)
    # BatchNorm statistics untouched (train_batchnorm=False) on both replicas.
    for key in STATISTICS:
        np.testing.assert_array_equal(served[key], source[key])
    if method == "bitfit":
        assert _changed(source, served) == BITFIT
        return
    # Phase 2 trained the factors of both convolutions; their kernels, and
    # every other backbone variable, kept their pretrained values.
    factors = sorted(k for k in trained if "lora" in k)
    assert factors == [
        f"{layer}/lora_kernel_{ab}" for layer in ("conv_a", "conv_b") for ab in "ab"
    ]
    assert _changed(source, trained) == []
    assert np.abs(trained["conv_b/lora_kernel_b"]).max() > 0
    for position, (_, b, _) in two.lora_factors.items():
        np.testing.assert_allclose(b, one.lora_factors[position][1], atol=1e-5)
    # The served model has plain kernels with the factors' product merged in.
    assert not peft.lora_enabled(two.backbone_layer)
    assert not [w for w in two.model.weights if "lora" in w.path]
    assert _changed(source, served) == KERNELS
    merged = with_lora_products(
        two.lora_factors, [w.numpy() for w in batchnorm_network().weights]
    )
    for weight, value in zip(two.backbone_layer.weights, merged, strict=True):
        np.testing.assert_allclose(weight.numpy(), value, atol=1e-6)


@pytest.mark.slow
def test_lora_and_bitfit_with_two_workers_give_identical_weights(tmp_path):
    ports = ",".join(map(str, free_ports(2)))
    finish([start(__file__, "worker", index, ports, tmp_path) for index in range(2)])
    source = _source_weights()
    for method in ("lora", "bitfit"):
        served = [np.load(tmp_path / f"{method}{i}.npz") for i in range(2)]
        assert served[0].files == served[1].files
        for key in served[0].files:
            np.testing.assert_array_equal(served[0][key], served[1][key])
        history = json.loads((tmp_path / f"{method}_history0.json").read_text())
        assert len(history["loss"]) == 2
        expected = KERNELS if method == "lora" else BITFIT
        assert _changed(source, served[0]) == expected
        # Only the chief wrote the phase-2 checkpoints.
        run = tmp_path / method / "run" / "checkpoints"
        assert len(list(run.glob("fine_tune-*/state.npz"))) == 1
    assert not np.load(tmp_path / "bitfit_factors0.npz").files
    factors = [np.load(tmp_path / f"lora_factors{i}.npz") for i in range(2)]
    assert factors[0].files == ["a0", "b0", "a6", "b6"]
    for key in factors[0].files:
        np.testing.assert_array_equal(factors[0][key], factors[1][key])
    assert np.abs(factors[0]["b6"]).max() > 0  # the second factors start at 0


def _worker(index, ports, out_dir):
    join_cluster(index, ports)
    strategy = distribute.resolve_strategy("auto")
    assert isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    for method in ("lora", "bitfit"):
        recipe, _ = _fit_on(Path(out_dir, method), method, strategy, batch_size=8)
        np.savez(
            f"{out_dir}/{method}{index}.npz", **_by_name(recipe.backbone_layer.weights)
        )
        with open(f"{out_dir}/{method}_history{index}.json", "w") as handle:
            json.dump(recipe.history.history, handle)
        factors = {
            f"{ab}{position}": value
            for position, (a, b, _) in recipe.lora_factors.items()
            for ab, value in (("a", a), ("b", b))
        }
        np.savez(f"{out_dir}/{method}_factors{index}.npz", **factors)


HEAD_EPOCHS, EPOCHS, STEPS_PER_EPOCH = 1, 3, 4


def _bitfit_recipe(work_dir):
    return _recipe(
        Path(work_dir),
        method="bitfit",
        head_epochs=HEAD_EPOCHS,
        fine_tune_epochs=EPOCHS,
        patience=None,
        precision="float32",
    )


@pytest.mark.slow
def test_bitfit_killed_with_sigkill_resumes_to_the_uninterrupted_result(tmp_path):
    _kill_after(start(__file__, "resume", tmp_path, "slow"), tmp_path, "fine_tune", 1)
    assert not (tmp_path / "result.npz").exists()
    finish([start(__file__, "resume", tmp_path, "fast")], timeout=240)
    resumed = np.load(tmp_path / "result.npz")
    # The restarted process trained the epochs the killed one had not: every
    # phase-2 step ran once across both processes.
    assert 0 < int(resumed["trained_here"]) < EPOCHS
    assert int(resumed["iterations"]) == EPOCHS * STEPS_PER_EPOCH
    assert int(resumed["epochs"]) == EPOCHS
    # The same weights as a run that was never killed.
    uninterrupted = _fit_keeping_tuned(_bitfit_recipe(tmp_path / "uninterrupted"))
    served = _by_name(uninterrupted.backbone_layer.weights)
    source = _source_weights()
    assert _changed(source, served) == BITFIT
    for key in source:
        np.testing.assert_allclose(resumed[key], served[key], atol=1e-6)


def _resume(work_dir, slow):
    from tftransfer.recipes.callbacks import TrainingState

    if slow:  # Time to kill it between two phase-2 epochs.
        on_epoch_end = TrainingState.on_epoch_end

        def slow_epoch_end(self, epoch, logs=None):
            on_epoch_end(self, epoch, logs)
            if self.model.name == "fine_tuning":
                time.sleep(1.5)

        TrainingState.on_epoch_end = slow_epoch_end
    trained_here = []

    class Phase2Epochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if self.model.name == "fine_tuning":
                trained_here.append(epoch)

    recipe = _bitfit_recipe(work_dir)
    recipe.callbacks = [Phase2Epochs()]
    _fit_keeping_tuned(recipe)
    np.savez(
        f"{work_dir}/result.npz",
        iterations=int(recipe.model.optimizer.iterations.numpy()),
        epochs=len(recipe.history.history["loss"]),
        trained_here=len(trained_here),
        **_by_name(recipe.backbone_layer.weights),
    )


if __name__ == "__main__":
    if sys.argv[1] == "worker":
        _worker(int(sys.argv[2]), sys.argv[3], sys.argv[4])
    else:
        _resume(sys.argv[2], sys.argv[3] == "slow")
