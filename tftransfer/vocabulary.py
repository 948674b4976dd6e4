"""The words tftransfer uses for one idea, written once.

Readers, backbones, recipes, recipe files and the command line all check
their arguments against these tuples, so a name means the same thing
everywhere it appears.
"""

MODALITIES = ("image", "text")
"""What a backbone takes and a dataset holds (`Backbone.modality`,
`LabeledData.modality`)."""

DATA_FORMATS = ("image_folder", "text_folder", "csv", "jsonl", "tfds", "tfrecord")
"""The `data.format` values of a recipe file, one reader each."""

POOLINGS = ("mean", "max", "first", "pooled", "attention")
"""How a backbone's spatial or token outputs become one feature vector:
`"mean"` (average, over the unmasked tokens for text), `"max"`, `"first"`
(the first token, such as BERT's `[CLS]`), `"pooled"` (the model's own
pooler, such as BERT's `pooled_output`) and `"attention"` (a learned query
attention over the unmasked positions, trained with the recipes' head; see
`tftransfer.recipes.heads.AttentionPooling`). Each source takes the ones
that apply to it: backbones pool with the fixed ones, the recipes' `pooling`
takes all but `"pooled"`."""

TASKS = ("classification", "multi_label", "regression")
"""What a model predicts (`LabeledData.task`, the recipes' `task`):
`"classification"` (one class per example), `"multi_label"` (any number of
labels per example, multi-hot) and `"regression"` (numbers)."""

PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")
"""The compute precision of a recipe's backbone pass (the recipes'
`precision`): `"auto"` (the hardware's fast reduced precision where it
keeps the features within tolerance and saves time, else float32; see
`tftransfer.precision`), `"float32"`, or a Keras mixed dtype policy."""

TASK_NAME = r"[A-Za-z][A-Za-z0-9_-]{0,99}"
"""A task's name in a multi-task export (`tftransfer.export.export_tasks`):
its signature's name and the prefix of its outputs in `serving_default`, a
letter then letters, digits, `_` and `-` (names that differ only in case
are refused: their label files would collide on some file systems)."""
