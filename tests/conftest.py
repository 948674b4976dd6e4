"""Shared fixtures: tiny TF Hub-format SavedModels, built once per session."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hub_fixtures  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from tftransfer import precision  # noqa: E402

# Two logical CPU devices, so that MirroredStrategy tests have two replicas.
# This must happen before TensorFlow initialises its devices, hence here.
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0],
    [tf.config.LogicalDeviceConfiguration()] * 2,
)


@pytest.fixture(scope="session", autouse=True)
def no_fast_reduced_precision():
    """Tests (and the session's shared fixtures) run as on a machine with
    no fast reduced precision (no GPU, no CPU bfloat16 units), where
    `precision="auto"` computes in float32: features then do not depend on
    timings. The tests of the guard (tests/test_precision.py) turn it on."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(precision, "local_policy", lambda: "float32")
        yield


@pytest.fixture(scope="session")
def hub_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hub_models")


@pytest.fixture(scope="session")
def image_model_path(hub_dir):
    """An 8x8 image feature vector (conv, BatchNorm, regularizer), 4 features."""
    return hub_fixtures.save_image_feature_vector(str(hub_dir / "image"))


@pytest.fixture(scope="session")
def text_embedding_path(hub_dir):
    """A string -> 6-d embedding model whose call takes no `training`."""
    return hub_fixtures.save_text_embedding(str(hub_dir / "text_embedding"))


@pytest.fixture(scope="session")
def bert_paths(hub_dir):
    """(preprocessor, encoder) paths of a tiny BERT-style TF Hub pair."""
    return hub_fixtures.save_bert_pair(str(hub_dir / "bert"))


@pytest.fixture(scope="session")
def signature_only_path(hub_dir):
    """A SavedModel reachable only through its `serving_default` signature."""
    return hub_fixtures.save_signature_only(str(hub_dir / "signature_only"))
