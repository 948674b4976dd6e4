"""Choosing and building the `tf.distribute` strategy a recipe trains under.

`resolve_strategy()` turns a name (`"auto"`, `"default"`, `"mirrored"`,
`"multi_worker"`, `"tpu"`) into a strategy. The helpers next to it answer the
questions recipes ask of a strategy: how many replicas, what global batch,
whether Keras' `Model.fit` works under it, and which
`tf.saved_model.LoadOptions` hub models need.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os

import tensorflow as tf

from tftransfer.errors import ConfigError

STRATEGY_KINDS = ("auto", "default", "mirrored", "multi_worker", "tpu")

# The resolver class, a module attribute so tests can replace it with a
# double (no TPU exists on the machines that run the tests).
TPUClusterResolver = tf.distribute.cluster_resolver.TPUClusterResolver


_MIRRORED: dict[tuple, tf.distribute.MirroredStrategy] = {}
# Collective group and instance keys set aside for each mirrored strategy.
_COLLECTIVE_KEYS_PER_STRATEGY = 100_000


def resolve_strategy(
    kind: str = "auto",
    tpu: str | None = None,
    *,
    devices: list[str] | None = None,
) -> tf.distribute.Strategy:
    """Returns the `tf.distribute.Strategy` to train under.

    `"auto"` picks, in this order: a TPU when one is reachable (`tpu` is
    given, `TPU_NAME` or `COLAB_TPU_ADDR` is set, or this is a TPU VM such as
    today's Colab), `MultiWorkerMirroredStrategy` when `TF_CONFIG` names more
    than one worker, `MirroredStrategy` with more than one GPU, and the
    default strategy otherwise.

    Args:
        kind: one of `"auto"`, `"default"`, `"mirrored"`, `"multi_worker"`,
            `"tpu"`.
        tpu: the TPU to use: `"local"` on TPU VMs, a name or `grpc://`
            address for TPU nodes. `None` reads `TPU_NAME`, else `"local"`.
        devices: devices for `"mirrored"` (for example
            `["/cpu:0", "/cpu:1"]`); `None` uses every GPU.

    Returns:
        A `tf.distribute.Strategy`. Build backbones, heads and optimizers
        inside its `scope()`. `"mirrored"` returns the same strategy for
        the same devices throughout the process (two on one device list
        would share collective keys, tensorflow/tensorflow#62790).

    Example:

    >>> strategy = resolve_strategy("default")
    >>> strategy.num_replicas_in_sync
    1
    """
    if kind not in STRATEGY_KINDS:
        raise ConfigError(
            f"Unknown strategy kind. Expected one of {STRATEGY_KINDS}. "
            f"Received: kind={kind!r}"
        )
    if kind == "auto":
        kind = _auto_kind(tpu)
    if kind == "tpu":
        return _tpu_strategy(tpu)
    if kind == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        return _mirrored(devices)
    return tf.distribute.get_strategy()


def _mirrored(devices: list[str] | None) -> tf.distribute.MirroredStrategy:
    """The process's `MirroredStrategy` on `devices` (their canonical names),
    made once. Each new strategy starts its collective keys at the class's
    base, and TensorFlow mixes up the all-reduces of two that share keys
    (tensorflow/tensorflow#62790): a second recipe under "mirrored" would
    fail. So one is shared per device list, and each is made on a range of
    keys of its own: the base (which TensorFlow's own tests set) moves past
    it before and after, away from strategies made directly too."""
    canonical = None if devices is None else tuple(map(_device_name, devices))
    key = (tf.distribute.MirroredStrategy, canonical)
    if key not in _MIRRORED:
        _next_collective_keys()
        _MIRRORED[key] = tf.distribute.MirroredStrategy(devices=devices)
        _next_collective_keys()
    return _MIRRORED[key]


def _next_collective_keys() -> None:
    strategy_class = tf.distribute.MirroredStrategy
    strategy_class._collective_key_base = (
        getattr(strategy_class, "_collective_key_base", 0)
        + _COLLECTIVE_KEYS_PER_STRATEGY
    )


def _device_name(device: str) -> str:
    """One spelling of a device: "/cpu:0", "/CPU:0" -> "/device:CPU:0"."""
    return tf.DeviceSpec.from_string(device).to_string()


def _auto_kind(tpu: str | None) -> str:
    if tpu is not None or _tpu_reachable():
        return "tpu"
    if _tf_config_worker_count() > 1:
        return "multi_worker"
    if len(tf.config.list_physical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


def _tpu_reachable() -> bool:
    """True on TPU nodes named by the environment and on TPU VMs."""
    if os.environ.get("TPU_NAME") or os.environ.get("COLAB_TPU_ADDR"):
        return True
    has_libtpu = importlib.util.find_spec("libtpu") is not None
    tpu_device_nodes = glob.glob("/dev/accel*") + glob.glob("/dev/vfio/[0-9]*")
    return has_libtpu and bool(tpu_device_nodes)


def _tf_config_worker_count() -> int:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except json.JSONDecodeError as error:
        raise ConfigError(
            f"TF_CONFIG is not valid JSON ({error}). Set it to "
            '\'{"cluster": {"worker": [...]}, "task": {"type": "worker", '
            '"index": 0}}\' or unset it. Received: TF_CONFIG={raw!r}'
        ) from error
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def _tpu_strategy(tpu: str | None) -> tf.distribute.TPUStrategy:
    if tpu is None:
        tpu = os.environ.get("TPU_NAME") or "local"
    try:
        resolver = TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        raise ConfigError(
            f"Cannot connect to the TPU {tpu!r}: {error}. On a TPU VM (Colab "
            "TPU runtime) use tpu='local'; for a TPU node pass its name or "
            "'grpc://host:8470' address; without a TPU use kind='auto'."
        ) from error
    return tf.distribute.TPUStrategy(resolver)


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
    """Returns whether `strategy` runs on TPUs."""
    return isinstance(strategy, tf.distribute.TPUStrategy)


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    """Returns whether `strategy` spans several worker processes."""
    return bool(getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)())


def fit_supported(strategy: tf.distribute.Strategy) -> bool:
    """Returns whether Keras 3's `Model.fit` trains under `strategy`.

    It does not under `MultiWorkerMirroredStrategy` (keras-team/keras#20585,
    tensorflow/tensorflow#72388: "Attempt to convert a value (PerReplica:...)
    to a Tensor"); recipes then run their own training step.
    """
    return not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Returns whether this process writes run files (checkpoints, logs)."""
    if not is_multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and resolver.task_type == "worker" and resolver.task_id == 0


def global_batch_size(
    per_replica_batch_size: int, strategy: tf.distribute.Strategy
) -> int:
    """Returns the global batch: per-replica batch x replicas in sync."""
    if per_replica_batch_size < 1:
        raise ConfigError(
            "Expected a positive per-replica batch size. "
            f"Received: batch_size={per_replica_batch_size}"
        )
    return per_replica_batch_size * strategy.num_replicas_in_sync


def load_options(strategy: tf.distribute.Strategy) -> tf.saved_model.LoadOptions | None:
    """Returns the SavedModel load options hub models need under `strategy`.

    On TPUs the SavedModel is read by the local host
    (`experimental_io_device="/job:localhost"`), since the TPU workers cannot
    read local files. Other strategies need no options (`None`).
    """
    if is_tpu(strategy):
        return tf.saved_model.LoadOptions(experimental_io_device="/job:localhost")
    return None


def steps_per_execution(
    strategy: tf.distribute.Strategy, requested: int | None = None
) -> int:
    """Returns how many steps one `fit` execution runs.

    TPUs idle between host round trips, so they run 32 steps per execution
    unless `requested` says otherwise; other devices run 1.

    Raises:
        ConfigError: if `requested` is below 1, or above 1 where
            `several_steps_per_execution(strategy)` is false.
    """
    if requested is not None:
        if requested < 1:
            raise ConfigError(
                "Expected steps_per_execution >= 1. "
                f"Received: steps_per_execution={requested}"
            )
        if requested > 1 and not several_steps_per_execution(strategy):
            raise ConfigError(
                f"steps_per_execution={requested} cannot run under "
                f"{type(strategy).__name__} with {strategy.num_replicas_in_sync} "
                "replicas: Keras 3 fails on several steps per execution there "
                "(keras-team/keras#19246). Leave it unset (1 off TPUs)."
            )
        return requested
    return 32 if is_tpu(strategy) else 1


def several_steps_per_execution(strategy: tf.distribute.Strategy) -> bool:
    """Whether Keras can run several steps per `fit` execution under
    `strategy`: on TPUs and one replica, not with more replicas of a
    (multi-worker) mirrored strategy, whose multi-step loop fails in Keras 3
    (keras-team/keras#19246).

    Example:

    >>> several_steps_per_execution(tf.distribute.get_strategy())
    True
    """
    return is_tpu(strategy) or strategy.num_replicas_in_sync == 1
