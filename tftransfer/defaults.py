"""The recipes' default settings, in one place.

`FeatureExtraction`, `FineTuning`, `fine_tune()`, recipe files
(`tftransfer.config.RecipeConfig`) and the `tftransfer` command all read
their defaults here, so the Python API, YAML and the CLI train the same way
when a setting is left out.

`"auto"` learning rates and weight decay are chosen from the data (see
`tftransfer.recipes.learning_rates`); `epochs` are maxima: every phase stops
early when its validation loss (the training loss, where no validation data
can be held out) stops improving and keeps its best weights.
"""

AUTO = "auto"

# Both recipes: the head on cached frozen features.
HEAD_EPOCHS = 100
HEAD_LEARNING_RATE = AUTO
HEAD_WEIGHT_DECAY = AUTO
DROPOUT = 0.2
PATIENCE = 5
BATCH_SIZE = 32
# The backbone pass's compute precision: the hardware's reduced precision
# where it keeps the features and saves time (see `tftransfer.precision`).
PRECISION = AUTO
# The candidates an "auto" head learning rate / weight decay is chosen from.
HEAD_LEARNING_RATES = (1e-3, 3e-3, 1e-2, 3e-2)
HEAD_WEIGHT_DECAYS = (0.0, 1e-4, 1e-3)
# The "auto" head learning rate where no validation data can be held out.
HEAD_LEARNING_RATE_WITHOUT_VALIDATION = 3e-3

# Fraction of the training data held out for validation when none is given.
HOLD_OUT = 0.1

# FineTuning, phase 2: backbone and head together.
FINE_TUNE_EPOCHS = 10
FINE_TUNE_LEARNING_RATE = AUTO
BACKBONE_LR_SCALE = 0.3
WARMUP_FRACTION = 0.1
FINE_TUNE_WEIGHT_DECAY = 1e-2  # AdamW, phase 2
CLIPNORM = 1.0

# `tftransfer.rank()` / `tftransfer rank`: the estimators computed, the one
# that orders the candidates, and the size of the stratified sample scored.
RANK_SCORES = ("logme", "linear_probe", "leep")
RANK_BY = "logme"
RANK_EXAMPLES = 300

# FineTuning, phase 2: what it trains of the backbone (`tftransfer.recipes.peft`).
FINE_TUNE_METHOD = "full"  # "full", "lora", "bitfit" or "head"
LORA_RANK = AUTO  # 8; 4 on convolutions (see recipes.peft.lora_rank)
LORA_ALPHA = None  # None: the rank (the product scaled by 1)
LORA_TARGETS = AUTO  # attention query/value where present, else every LoRA layer
