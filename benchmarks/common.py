"""What several benchmarks share: the backbone they time, and how they
run a recipe.

Benchmarks run as scripts (`python benchmarks/NAME.py`), so this folder is on
`sys.path` and they import this module as `common`.
"""

import keras


def random_mobilenet_v3_small(size: int) -> keras.Model:
    """MobileNetV3Small without its top, random weights (timing ignores them).

    Seeded, so every call builds the same network.

    Example:

    >>> random_mobilenet_v3_small(64).output_shape
    (None, 576)
    """
    keras.utils.set_random_seed(0)
    return keras.applications.MobileNetV3Small(
        input_shape=(size, size, 3),
        include_top=False,
        weights=None,
        pooling="avg",
        include_preprocessing=False,
    )


def timed_recipe_options(work: str, batch_size: int) -> dict:
    """The recipe arguments every benchmark run shares: a fixed number of
    epochs (no early stopping), the cache and run folders in `work`, one
    device, no progress output.

    Example:

    >>> FeatureExtraction(backbone, head_epochs=10,
    ...                   **timed_recipe_options(work, batch_size=64))
    """
    return {
        "patience": None,
        "batch_size": batch_size,
        "cache_dir": f"{work}/cache",
        "run_dir": f"{work}/run",
        "strategy": "default",
        "verbose": 0,
    }
