"""`tftransfer rank`: score a recipe file's candidates, and `backbone: best`.

`rank()` scores the candidates of the file's `rank:` section on its
training split and writes `rank.json` and `rank.png` into the run folder;
a recipe file whose backbone is `{handle: best}` then trains the top one
(`best_candidate()`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tftransfer.config import RunConfig
from tftransfer.errors import ConfigError

BEST = "best"
"""The `backbone.handle` that stands for the top candidate of `rank.json`."""
RANK_FILE = "rank.json"


def rank(config: RunConfig, recipe_file: str = "RECIPE") -> Path:
    """Ranks the candidates of `config.rank` on the training split, prints
    the table and the recommendation, and writes `rank.json` and `rank.png`
    into the run folder.

    Args:
        config: The recipe file's settings.
        recipe_file: Its path, for the command the output suggests.

    Returns:
        The path of `rank.json`.

    Raises:
        ConfigError: if the file lists no candidates.
    """
    from tftransfer.cli import run
    from tftransfer.selection import Candidate
    from tftransfer.selection import rank as rank_candidates

    if not config.rank.candidates:
        raise ConfigError(
            "The recipe file lists no candidates to rank: add a `rank:` section "
            "with `candidates:`, a list of mappings with a `handle` (and "
            "`options`, `features`, `pooling`, `classifier`, `name`)."
        )
    candidates = [
        Candidate(
            backbone=_backbone_arguments(item.handle, item.seq_length, item.options),
            features=item.features,
            pooling=item.pooling,
            classifier=item.classifier,
            name=item.name,
        )
        for item in config.rank.candidates
    ]
    with run.step("Data"):
        _, parts = run.read_splits(config)
    with run.step(f"Ranking {len(candidates)} candidates"):
        ranking = rank_candidates(
            candidates,
            parts.train,
            scores=config.rank.scores,
            by=config.rank.by,
            examples=config.rank.examples,
            batch_size=config.data.batch_size,
            strategy=config.distribute.strategy,
            cache_dir=config.cache_dir,
            seed=config.data.seed,
        )
    print(ranking.table())
    path = ranking.save(run.run_dir(config))
    chart = path.with_suffix(".png")
    wrote = (
        f"{path} and {chart}"
        if chart.exists()
        else f"{path} (no chart: pip install matplotlib)"
    )
    recommendation = ranking.recommendation
    print(
        f"\nBest by {ranking.by}: {ranking.best.label}. {recommendation.reason}\n"
        f"Wrote {wrote}. To train it, set "
        f"`backbone: {{handle: {BEST}}}` (and `recipe.kind: "
        f"{recommendation.recipe}`) in the recipe file, or run\n"
        f"  tftransfer run {recipe_file} --set backbone.handle={BEST} "
        f"--set recipe.kind={recommendation.recipe}"
    )
    return path


def best_candidate(config: RunConfig) -> dict[str, Any]:
    """The top candidate that `tftransfer rank` recorded for this run.

    Returns:
        The candidate's `rank.json` entry: `backbone` (a backbone config or
        arguments) and, where it sets them, `features` and `pooling`.

    Raises:
        ConfigError: if the run folder has no readable `rank.json`.
    """
    path = Path(config.runs_dir) / config.name / RANK_FILE
    try:
        return json.loads(path.read_text())["recommendation"]["candidate"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(
            f"backbone.handle: {BEST} trains the top candidate of {path}, which "
            f"cannot be read ({type(error).__name__}: {error}). Run `tftransfer "
            "rank RECIPE` first (with the same name and runs_dir), or name a "
            "backbone."
        ) from None


def build_best(config: RunConfig):
    """The `Backbone` of `best_candidate()`."""
    from tftransfer.backbones import Backbone
    from tftransfer.selection.ranking import as_backbone

    spec = best_candidate(config)["backbone"]
    if isinstance(spec, dict) and "source" in spec:
        return Backbone.from_config(spec)
    return as_backbone(spec)


def best_recipe_arguments(config: RunConfig) -> dict[str, Any]:
    """The recipe arguments (`features`, `pooling`) of `best_candidate()`."""
    candidate = best_candidate(config)
    return {key: candidate[key] for key in ("features", "pooling") if key in candidate}


def _backbone_arguments(handle: str, seq_length: int | None, options: dict) -> dict:
    arguments = {"handle": handle, **options}
    if seq_length is not None:
        arguments["seq_length"] = seq_length
    return arguments
