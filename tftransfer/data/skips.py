"""Reporting inputs a reader leaves out: one warning each, then a summary."""

from __future__ import annotations

import warnings

from tftransfer.errors import DataError

MAX_NAMED_WARNINGS = 20


class SkippedInputWarning(UserWarning):
    """A reader left out an input it could not use (corrupt image, empty text)."""


def report_skipped(
    skipped: list[str], total: int, source: str, what: str, strict: bool
) -> tuple[str, ...]:
    """Raises on the first skipped input if `strict`, else warns about each.

    Args:
        skipped: One `"<file or line>: <reason>"` entry per bad input.
        total: Number of inputs looked at, good and bad.
        source: The folder or file read, named in the summary.
        what: Plural noun for the inputs (`"files"`, `"rows"`).
        strict: Whether a bad input is an error instead of a skip.

    Returns:
        `skipped` as a tuple, for `LabeledData.skipped`.
    """
    if not skipped:
        return ()
    if strict:
        raise DataError(
            f"{skipped[0]}. Fix or remove it, or pass `strict=False` to skip "
            f"bad {what} with a warning ({len(skipped)} of {total} {what} in "
            f"{source} are bad)."
        )
    for entry in skipped[:MAX_NAMED_WARNINGS]:
        warnings.warn(f"Skipped {entry}", SkippedInputWarning, stacklevel=3)
    more = len(skipped) - MAX_NAMED_WARNINGS
    listed = f" ({more} more not warned about one by one)" if more > 0 else ""
    warnings.warn(
        f"Skipped {len(skipped)} of {total} {what} in {source}{listed}; "
        "`LabeledData.skipped` lists them all. Pass `strict=True` to make "
        "this an error.",
        SkippedInputWarning,
        stacklevel=3,
    )
    return tuple(skipped)
