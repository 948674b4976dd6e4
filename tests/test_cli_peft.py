"""`tftransfer run` and `tftransfer export` with LoRA on a tiny KerasHub BERT."""

import json

import numpy as np
import pytest
import tensorflow as tf
import yaml
from data_fixtures import tiny_bert_preset
from test_cli import TEXTS, run_recipe

from tftransfer import cli

# The words of the test texts, so that the tokenizer knows them.
VOCABULARY = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(
    {word for texts in TEXTS.values() for text in texts for word in text.split()}
)
EXAMPLES = ["the team won the match", "software on the phone"]


def _predict(version):
    """The exported model's class probabilities for `EXAMPLES`, and the
    values of its variables."""
    loaded = tf.saved_model.load(str(version))
    outputs = loaded.signatures["serving_default"](text=tf.constant(EXAMPLES))
    reader = tf.train.load_checkpoint(str(version / "variables" / "variables"))
    names = [n for n in reader.get_variable_to_shape_map() if "VARIABLE" in n]
    return outputs["probabilities"].numpy(), [reader.get_tensor(n) for n in names]


@pytest.mark.slow
def test_run_and_export_train_and_restore_a_lora_run(tmp_path, capsys):
    keras_hub = pytest.importorskip("keras_hub")
    preset = tiny_bert_preset(
        str(tmp_path / "bert"),
        VOCABULARY,
        seed=0,
        num_layers=1,
        num_heads=1,
        hidden_dim=8,
        intermediate_dim=16,
    )
    base = tmp_path / "saved_models" / "topics"
    lora = {"method": "lora", "lora_rank": 2, "head_weight_decay": 0.0}
    path = run_recipe(
        tmp_path,
        bert_paths=(None, None),  # The backbone is the KerasHub preset below.
        backbone={"handle": f"keras_hub:{preset}", "seq_length": 16},
        recipe={
            "kind": "fine_tuning",
            "head_epochs": 2,
            "fine_tune_epochs": 2,
            "learning_rate": 0.01,
            "fine_tune_learning_rate": 0.01,
            "patience": None,
            "options": lora,
        },
        export={"base_path": str(base), "verify": False},
    )
    assert cli.main(["run", path]) == 0
    assert "Training: fine tuning" in capsys.readouterr().out
    folder = tmp_path / "runs" / "topics"
    recorded = yaml.safe_load((folder / "recipe.yaml").read_text())
    assert recorded["recipe"]["options"] == lora
    assert list((folder / "checkpoints").glob("fine_tune-*/state.npz"))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["chosen"] in ("fine_tuned", "frozen")
    card = json.loads((base / "1" / "model_card.json").read_text())
    assert card["recipe_settings"]["method"] == "lora"
    assert card["recipe_settings"]["lora_rank"] == 2
    options = card["recipe_settings"]["recipe_file"]["recipe"]["options"]
    assert options["method"] == "lora"
    assert card["metrics"]["chosen"] == metrics["chosen"]
    probabilities, exported = _predict(base / "1")
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    # The export holds the backbone's weights and the head's (8 x 2 + 2),
    # not the LoRA factors: the kept model's are merged into the query and
    # value kernels, the only weights not exported as the preset has them.
    backbone = keras_hub.models.BertBackbone.from_preset(preset)
    assert sum(w.size for w in exported) == backbone.count_params() + 8 * 2 + 2
    changed = [
        w.path
        for w in backbone.weights
        if not any(np.array_equal(w.numpy(), e) for e in exported)
    ]
    assert changed == (
        [
            "transformer_layer_0/self_attention_layer/query/kernel",
            "transformer_layer_0/self_attention_layer/value/kernel",
        ]
        if metrics["chosen"] == "fine_tuned"
        else []
    )

    # `export` restores the run from its checkpoints (it refuses to train)
    # and exports the same model again.
    assert cli.main(["export", str(folder)]) == 0
    assert "Restoring: fine tuning" in capsys.readouterr().out
    again, _ = _predict(base / "2")
    np.testing.assert_allclose(again, probabilities, atol=1e-6)
