"""Which ops a serving graph uses, and whether stock TF Serving loads them.

`tensorflow_model_server` links core TensorFlow and one bundled release of
TF Text (2.12.1 at the time of writing). A SavedModel that uses an op outside
those fails to load there with "Op type not registered", long after export.
`check_serving_ops()` catches that at export time. The allowed TF Text ops and
the known-bad ops are data, with their sources, in `serving_ops.json`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path

import tensorflow as tf

from tftransfer.errors import ExportError

_DATA_FILE = Path(__file__).with_name("serving_ops.json")


@functools.cache
def serving_op_data() -> dict:
    """Returns the parsed `serving_ops.json` (TF Text ops, known-bad ops)."""
    return json.loads(_DATA_FILE.read_text())


def graph_ops(functions: Iterable[tf.types.experimental.ConcreteFunction]) -> set:
    """Lists the op types that concrete functions run, nested functions too.

    Args:
        functions: Concrete functions, for example a serving module's
            signatures.

    Returns:
        The set of op type names (`"MatMul"`, `"DecodeImage"`, ...), from the
        functions' graphs and every function in their libraries.
    """
    return _graph_def_ops(function.graph.as_graph_def() for function in functions)


def saved_model_ops(path: str) -> set:
    """Lists the op types of a SavedModel on disk, its functions' ops too.

    Example:

    >>> unsupported_ops(saved_model_ops("/tmp/bert_preprocessor"))
    {}
    """
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with tf.io.gfile.GFile(f"{path}/saved_model.pb", "rb") as f:
        proto.ParseFromString(f.read())
    return _graph_def_ops(meta_graph.graph_def for meta_graph in proto.meta_graphs)


def _graph_def_ops(graph_defs) -> set:
    """Op types of graphs and their function libraries, less function calls."""
    ops, library_names = set(), set()
    for graph_def in graph_defs:
        ops.update(node.op for node in graph_def.node)
        for function in graph_def.library.function:
            library_names.add(function.signature.name)
            ops.update(node.op for node in function.node_def)
    return ops - library_names


def needs_tf_text(ops: Iterable[str]) -> bool:
    """Whether some op is outside core TF, so loading needs `tensorflow_text`."""
    return any(op not in _core_ops() for op in ops)


@functools.cache
def _core_ops() -> frozenset:
    return frozenset(name for name in dir(tf.raw_ops) if not name.startswith("_"))


def unsupported_ops(ops: Iterable[str], allow_ops: Iterable[str] = ()) -> dict:
    """Finds the ops that stock TF Serving cannot load.

    An op is supported when it is registered in core TensorFlow or in the
    bundled TF Text release, and is not listed as known-bad.

    Args:
        ops: Op type names, as `graph_ops()` returns them.
        allow_ops: Op names to accept anyway (for a server built with them).

    Returns:
        A dict from each unsupported op name to the reason, sorted by name.
    """
    data = serving_op_data()
    known_bad = data["known_unsupported"]
    tf_text = data["tf_text"]
    text_ops = set(tf_text["ops"])
    allowed = set(allow_ops)
    reasons = {}
    for op in sorted(set(ops) - allowed):
        if op in known_bad:
            reasons[op] = known_bad[op]
        elif op not in _core_ops() and op not in text_ops:
            reasons[op] = (
                "not a core TensorFlow op and not in TF Text "
                f"{tf_text['version']}, the release bundled with TF Serving "
                "(a newer TF Text op or a custom op)"
            )
    return reasons


def check_serving_ops(ops: Iterable[str], allow_ops: Iterable[str] = ()) -> None:
    """Raises if stock TF Serving cannot load one of the ops.

    Args:
        ops: Op type names, as `graph_ops()` returns them.
        allow_ops: Op names to accept anyway.

    Raises:
        ExportError: naming each unsupported op, why, and how to proceed.
    """
    reasons = unsupported_ops(ops, allow_ops)
    if not reasons:
        return
    version = serving_op_data()["tf_text"]["version"]
    lines = "\n".join(f"  - {op}: {reason}" for op, reason in reasons.items())
    raise ExportError(
        "The serving graph uses ops that the stock TF Serving build (with TF "
        f"Text {version}) cannot load:\n{lines}\n"
        "Build the preprocessing from ops it ships (for BERT inputs, "
        "`text.BertTokenizer` + `tf.strings`/`tf.concat` packing instead of "
        "`text.RoundRobinTrimmer`), or, for a server built with these ops, "
        f"pass `allow_ops={sorted(reasons)!r}` to `tftransfer.export`."
    )


def summary(ops: Iterable[str], allow_ops: Iterable[str] = ()) -> dict:
    """Describes a checked serving graph's ops, for the model card."""
    ops = set(ops)
    return {
        "tf_text_version": serving_op_data()["tf_text"]["version"],
        "ops": sorted(ops),
        "allowed_by_override": sorted(set(allow_ops) & ops),
        "needs_tensorflow_text": needs_tf_text(ops),
    }
