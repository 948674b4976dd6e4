"""A run killed with SIGKILL resumes from its last checkpoint.

Run by pytest, this file starts itself as the training process
(`python tests/test_recipes_resume.py <work dir> <slow>`).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HEAD_EPOCHS, EPOCHS, STEPS_PER_EPOCH = 3, 4, 4


def _start(work_dir, slow):
    repo_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": os.pathsep.join([repo_root, os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, __file__, str(work_dir), "slow" if slow else "fast"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _epochs_done(work_dir, phase):
    for path in (Path(work_dir) / "run" / "checkpoints").glob(f"{phase}-*/state.npz"):
        with np.load(path) as arrays:
            return json.loads(str(arrays["meta"]))["epoch"]
    return 0


def _kill_after(process, work_dir, phase, epochs):
    deadline = time.time() + 180
    while _epochs_done(work_dir, phase) < epochs:
        assert process.poll() is None, process.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_killed_run_resumes_without_losing_or_repeating_epochs(tmp_path):
    _kill_after(_start(tmp_path, slow=True), tmp_path, "head", 1)
    _kill_after(_start(tmp_path, slow=True), tmp_path, "fine_tune", 2)
    assert not (tmp_path / "result.json").exists()
    final = _start(tmp_path, slow=False)
    output = final.communicate(timeout=240)[0].decode()
    assert final.returncode == 0, output[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["head_epochs"] == HEAD_EPOCHS
    assert result["fine_tune_epochs"] == EPOCHS
    # Every phase-2 step ran exactly once across the three processes.
    assert result["iterations"] == EPOCHS * STEPS_PER_EPOCH
    assert not list(tmp_path.rglob("*.tmp"))


def _train(work_dir, slow):
    import keras
    import tensorflow as tf

    from tftransfer.recipes import FineTuning
    from tftransfer.recipes.callbacks import TrainingState

    if slow:
        on_epoch_end = TrainingState.on_epoch_end

        def slow_epoch_end(self, epoch, logs=None):
            on_epoch_end(self, epoch, logs)
            time.sleep(1.5)

        TrainingState.on_epoch_end = slow_epoch_end
    rng = np.random.default_rng(0)
    x = rng.normal(size=(STEPS_PER_EPOCH * 16, 8, 8, 3)).astype("float32")
    y = (x[:, 0, 0, 0] > 0).astype("int64")
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3),
            keras.layers.GlobalAveragePooling2D(),
        ]
    )
    recipe = FineTuning(
        backbone,
        head_epochs=HEAD_EPOCHS,
        fine_tune_epochs=EPOCHS,
        patience=None,
        cache_dir=f"{work_dir}/cache",
        run_dir=f"{work_dir}/run",
        strategy="default",
        verbose=2,
    )
    recipe.fit(data, data)
    result = {
        "head_epochs": len(recipe.head_history.history["loss"]),
        "fine_tune_epochs": len(recipe.history.history["loss"]),
        "iterations": int(recipe.model.optimizer.iterations.numpy()),
    }
    Path(work_dir, "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    _train(sys.argv[1], sys.argv[2] == "slow")
