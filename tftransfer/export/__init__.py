"""Export trained classifiers for TF Serving (and TFLite), and verify them.

`tftransfer.export` is a callable module:

- `tftransfer.export(model_or_recipe, base_path=None, version=None, ...)`
  writes the next model version (see `tftransfer.export.export`);
- `tftransfer.export.verify(path, examples, model=...)` loads it in a fresh
  TensorFlow-only process and checks it against the in-memory model.
"""

import sys
import types

from tftransfer.export.exporter import export
from tftransfer.export.serving_ops import check_serving_ops, graph_ops
from tftransfer.export.verification import verify
from tftransfer.export.writer import versions

__all__ = ["check_serving_ops", "export", "graph_ops", "verify", "versions"]


class _CallableModule(types.ModuleType):
    """Lets `tftransfer.export(...)` call `tftransfer.export.export(...)`."""

    def __call__(self, *args, **kwargs):
        return export(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
