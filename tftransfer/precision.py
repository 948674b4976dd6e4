"""The compute precision of the backbone pass: which one to try, and the guard.

Reduced precision (`"mixed_bfloat16"`, `"mixed_float16"`: float32 weights,
16-bit compute) runs a backbone up to twice as fast on hardware built for
it (CPUs with AMX or AVX-512 BF16, GPUs, TPUs), and slower elsewhere. The
recipes' default, `precision="auto"`, tries the hardware's reduced precision
and keeps it only where it does not change the answer and saves time: the
first batches of the backbone pass also run in float32 (`guarded_choice`),
and the pass falls back to float32, with a log line, if the features
drift from float32's by more than `DRIFT_TOLERANCE` or the reduced pass is
not clearly faster. Trained and exported models compute in float32.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import tensorflow as tf

from tftransfer import distribute
from tftransfer.errors import ConfigError
from tftransfer.vocabulary import PRECISIONS

DRIFT_TOLERANCE = 1e-3
"""The most cosine drift (`1 - cos`, per example, between a reduced-precision
pass's features and float32's) that `"auto"` accepts. Measured on this
project's benchmarks: about 1e-4 for MiniLM on news articles."""

SPEED_MARGIN = 1.1
"""How much faster (time ratio) the reduced-precision pass must run on the
probe batches for `"auto"` to keep it."""

CPUINFO = Path("/proc/cpuinfo")
"""Where Linux lists the CPU's features (`flags`)."""

PROBE_BATCHES = 3
"""Batches `"auto"` runs in both precisions: the first gives the drift (and
traces both passes), the later ones the speed (their total time in each)."""


def check_precision(precision: str) -> None:
    """Raises a `ConfigError` unless `precision` is one of `PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ConfigError(
            f"Expected precision to be one of {PRECISIONS}. "
            f"Received: precision={precision!r}. Use 'float32' to turn reduced "
            "precision off."
        )


def candidate_policy(precision: str, strategy: tf.distribute.Strategy) -> str:
    """Returns the dtype policy a recipe's backbone pass tries.

    `"auto"` gives `"mixed_bfloat16"` on TPUs, on GPUs of compute
    capability 8.0 or more and on CPUs with AMX or AVX-512 BF16 units;
    `"mixed_float16"` on older GPUs; `"float32"` on other CPUs and under
    multi-worker strategies (the guard's choice, made from each worker's
    own batches and timings, could differ between workers). Any other
    `precision` is returned as it is.

    Example:

    >>> candidate_policy("float32", tf.distribute.get_strategy())
    'float32'
    """
    check_precision(precision)
    if precision != "auto":
        return precision
    if distribute.is_tpu(strategy):
        return "mixed_bfloat16"
    if distribute.is_multi_worker(strategy):
        return "float32"
    return local_policy()


def local_policy() -> str:
    """The reduced precision this machine's GPUs, or else its CPU, run
    fast: `"mixed_bfloat16"` on GPUs of compute capability 8.0 or more and
    on CPUs with AMX or AVX-512 BF16 units, `"mixed_float16"` on older GPUs,
    `"float32"` otherwise."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        major, _ = details.get("compute_capability", (0, 0))
        return "mixed_bfloat16" if major >= 8 else "mixed_float16"
    return "mixed_bfloat16" if _cpu_has_bfloat16_units() else "float32"


@functools.cache
def _cpu_has_bfloat16_units() -> bool:
    """Whether this machine's CPU has AMX-BF16 or AVX-512 BF16 units (read
    from `/proc/cpuinfo`; `False` where there is none)."""
    try:
        text = CPUINFO.read_text()
    except OSError:
        return False
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return bool(flags & {"amx_bf16", "avx512_bf16"})


def feature_drift(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Returns the largest cosine drift, `1 - cos`, between matching rows
    of two `[batch, dim]` feature arrays (0 for identical directions; rows
    that are zero in both count as identical, zero in one as orthogonal; infinite where `candidate`
    holds a value that is not finite)."""
    reference = np.asarray(reference, np.float64).reshape(len(reference), -1)
    candidate = np.asarray(candidate, np.float64).reshape(len(candidate), -1)
    if not np.all(np.isfinite(candidate)):
        return float("inf")
    dot = np.sum(reference * candidate, axis=1)
    reference_norm = np.linalg.norm(reference, axis=1)
    candidate_norm = np.linalg.norm(candidate, axis=1)
    norms = reference_norm * candidate_norm
    both_zero = (reference_norm == 0) & (candidate_norm == 0)
    cosine = np.where(norms > 0, dot / np.where(norms > 0, norms, 1.0), 0.0)
    cosine = np.where(both_zero, 1.0, cosine)
    return float(np.max(1.0 - cosine, initial=0.0))


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
    """What the guard chose for a backbone pass, and what it measured.

    Attributes:
        policy: the dtype policy the pass runs in.
        drift: the largest cosine drift of the reduced pass's features from
            float32's on the first batch (`None` where nothing was compared).
        speedup: float32's time over the reduced pass's on the later probe
            batches (`None` where nothing was timed).
        reason: one line for the log.
    """

    policy: str
    drift: float | None = None
    speedup: float | None = None
    reason: str = ""


def guarded_choice(
    candidate: str,
    reduced: list[np.ndarray],
    reduced_seconds: list[float],
    full: list[np.ndarray],
    full_seconds: list[float],
) -> PrecisionChoice:
    """Chooses between a reduced-precision pass and float32's on the probe
    batches: the reduced one is kept if its first batch's features drift
    at most `DRIFT_TOLERANCE` from float32's and it ran the later batches
    (in all) at least `SPEED_MARGIN` times faster.

    Args:
        candidate: the reduced policy tried (`"mixed_bfloat16"`, ...).
        reduced: features of the probe batches in `candidate`.
        reduced_seconds: seconds each of those batches took.
        full: features of the same batches in float32.
        full_seconds: seconds each of those batches took.

    Example:

    >>> guarded_choice("mixed_bfloat16", [f16], [2.0, 0.5], [f32], [1.0, 1.0])
    PrecisionChoice(policy='mixed_bfloat16', ...)
    """
    drift = feature_drift(full[0], reduced[0])
    if not drift <= DRIFT_TOLERANCE:  # NaN too
        return PrecisionChoice(
            "float32",
            drift,
            None,
            f"{candidate} features drift {drift:.2g} from float32's on the first "
            f"batch (more than the tolerance {DRIFT_TOLERANCE:g}): computing in "
            "float32.",
        )
    if len(reduced_seconds) < 2:
        return PrecisionChoice(
            "float32",
            drift,
            None,
            "one batch of data: too little to time a reduced precision, "
            "computing in float32.",
        )
    speedup = sum(full_seconds[1:]) / max(sum(reduced_seconds[1:]), 1e-9)
    if speedup < SPEED_MARGIN:
        return PrecisionChoice(
            "float32",
            drift,
            speedup,
            f"{candidate} ran {speedup:.2f}x float32's speed on this hardware "
            f"(less than {SPEED_MARGIN:g}x): computing in float32.",
        )
    return PrecisionChoice(
        candidate,
        drift,
        speedup,
        f"computing in {candidate}: {speedup:.2f}x float32's speed, features "
        f"within {drift:.2g} cosine drift of float32's (tolerance "
        f"{DRIFT_TOLERANCE:g}).",
    )
