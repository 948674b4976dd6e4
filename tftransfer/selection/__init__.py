"""Choosing a backbone before training: transferability scores and rankings.

`scores` holds the estimators (LogME, LEEP, a cross-validated linear probe,
H-score); `rank()` scores candidate backbones, layers and poolings on a
sample of a dataset's frozen features and recommends one.
"""

from tftransfer.selection import scores
from tftransfer.selection.ranking import (
    Candidate,
    RankedCandidate,
    Ranking,
    Recommendation,
    as_backbone,
    rank,
)

__all__ = [
    "Candidate",
    "RankedCandidate",
    "Ranking",
    "Recommendation",
    "as_backbone",
    "rank",
    "scores",
]
