"""Runs an exported model's signatures in a TensorFlow-only process.

Started by `tftransfer.export.verify()` as `python -I _serving_check.py
<saved_model_dir> <request.json> <result.json>`; `-I` keeps the script's
folder and the user's paths off `sys.path`, so nothing of tftransfer can be
imported. The request holds the raw examples (base64) for
`serving_default`, whether the graph needs `tensorflow_text`, and which
other signatures to run on which arrays of `inputs.npz` (beside the
request). The result holds the names of the signatures loaded, every output
of each signature run, and which packages were imported. Finally it prints
`saved_model_cli show --all`.
"""

import base64
import json
import os
import sys

import numpy as np
import tensorflow as tf


def main(saved_model_dir: str, request_file: str, result_file: str) -> None:
    with open(request_file, encoding="utf-8") as file:
        request = json.load(file)
    if request["needs_tensorflow_text"]:
        import tensorflow_text  # noqa: F401  (registers the TF Text ops)
    examples = [base64.b64decode(example) for example in request["examples"]]
    loaded = tf.saved_model.load(saved_model_dir)
    serving = loaded.signatures["serving_default"]
    (input_name,) = serving.structured_input_signature[1]
    outputs = serving(**{input_name: tf.constant(examples)})
    signature_outputs = {}
    if request["signature_inputs"]:
        arrays = np.load(
            os.path.join(os.path.dirname(request_file), "inputs.npz"),
            allow_pickle=True,
        )
        for name, feed in request["signature_inputs"].items():
            signature_outputs[name] = _described(
                loaded.signatures[name](
                    **{key: tf.constant(arrays[array]) for key, array in feed.items()}
                )
            )
    result = {
        "input_name": input_name,
        "signatures": sorted(loaded.signatures),
        "outputs": _described(outputs),
        "signature_outputs": signature_outputs,
        "imported": sorted(
            name
            for name in ("tftransfer", "keras", "tensorflow_text")
            if name in sys.modules
        ),
    }
    with open(result_file, "w", encoding="utf-8") as file:
        json.dump(result, file)
    from tensorflow.python.tools import saved_model_cli

    sys.argv = ["saved_model_cli", "show", "--dir", saved_model_dir, "--all"]
    saved_model_cli.main()


def _described(outputs: dict) -> dict:
    return {
        name: {
            "dtype": value.dtype.name,
            "shape": value.shape.as_list(),
            "values": _jsonable(value.numpy()),
        }
        for name, value in outputs.items()
    }


def _jsonable(value):
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    return value.decode("utf-8") if isinstance(value, bytes) else value


if __name__ == "__main__":
    main(*sys.argv[1:4])
