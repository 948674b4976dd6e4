"""Transfer-learning recipes: feature extraction and fine-tuning, for
classification, multi-label and regression tasks."""

from tftransfer.recipes.feature_extraction import FeatureExtraction
from tftransfer.recipes.fine_tuning import FineTuning, fine_tune
from tftransfer.recipes.heads import AttentionPooling, FeaturePooling, build_head
from tftransfer.recipes.metrics import (
    classification_metrics,
    multi_label_metrics,
    regression_metrics,
)
from tftransfer.recipes.tasks import get_task, task_metrics

__all__ = [
    "AttentionPooling",
    "FeatureExtraction",
    "FeaturePooling",
    "FineTuning",
    "build_head",
    "classification_metrics",
    "fine_tune",
    "get_task",
    "multi_label_metrics",
    "regression_metrics",
    "task_metrics",
]
