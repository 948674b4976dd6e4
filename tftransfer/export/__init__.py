"""Export trained models for TF Serving (and TFLite), and verify them.

`tftransfer.export` is a callable module:

- `tftransfer.export(model_or_recipe, base_path=None, version=None, ...)`
  writes the next model version (see `tftransfer.export.export`);
- `tftransfer.export.ServingArchive(model_or_recipe)` holds the serving
  signatures, the default ones and those added by `add_signature()`;
  pass it to `tftransfer.export()` to write it;
- `tftransfer.export.TFLiteOptions` and `tftransfer.export.ModelCardInfo`
  group the TFLite and model card arguments of `tftransfer.export()`;
- `tftransfer.export.verify(path, examples, model=...)` loads it in a fresh
  TensorFlow-only process and checks it against the in-memory model;
- `tftransfer.export.export_tasks(tasks, base_path)` writes several tasks
  fine-tuned from one backbone as one SavedModel (a `MultiTaskArchive`),
  the backbone stored once; `tftransfer.export.verify_tasks()` checks it;
- `tftransfer.export.explain_signature` adds the optional `explain`
  signature (`tftransfer.export(..., explain=True)`).
"""

import sys
import types

from tftransfer.export import explain_signature
from tftransfer.export.archive import ServingArchive
from tftransfer.export.exporter import export
from tftransfer.export.model_card import ModelCardInfo
from tftransfer.export.multi_task import MultiTaskArchive, export_tasks
from tftransfer.export.tflite import TFLiteOptions
from tftransfer.export.verification import verify, verify_tasks
from tftransfer.export.writer import versions
from tftransfer.serving_ops import check_serving_ops, graph_ops

__all__ = [
    "ModelCardInfo",
    "MultiTaskArchive",
    "ServingArchive",
    "TFLiteOptions",
    "check_serving_ops",
    "explain_signature",
    "export",
    "export_tasks",
    "graph_ops",
    "verify",
    "verify_tasks",
    "versions",
]


class _CallableModule(types.ModuleType):
    """Lets `tftransfer.export(...)` call `tftransfer.export.export(...)`."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
