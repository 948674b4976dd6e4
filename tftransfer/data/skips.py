"""Reporting inputs a reader leaves out (one warning each, then a summary) and
inputs it reads by a fallback (one summary)."""

from __future__ import annotations

import warnings

from tftransfer.errors import DataError

MAX_NAMED_WARNINGS = 20


class SkippedInputWarning(UserWarning):
    """A reader left out an input it could not use (corrupt image, empty text)."""


class DecodingFallbackWarning(UserWarning):
    """A reader decoded text files with its fallback encoding."""


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


def report_fallbacks(
    fallbacks: list[tuple[str, str]],
    total: int,
    source: str,
    encoding: str,
    fallback_encoding: str | None,
) -> tuple[str, ...]:
    """Warns once about the files decoded with `fallback_encoding`.

    Args:
        fallbacks: One `(file, how it was read)` pair per such file.
        total: Number of files read.
        source: The folder read, named in the warning.
        encoding: The encoding tried first.
        fallback_encoding: The encoding those files were decoded with.

    Returns:
        `"<file>: <how it was read>"` per file, for `LabeledData.fallbacks`.
    """
    if fallbacks:
        first = fallbacks[0][0]
        warnings.warn(
            f"Read {len(fallbacks)} of {total} files in {source} as "
            f"{fallback_encoding}, as they are not valid {encoding} (first: "
            f"{first}); `LabeledData.fallbacks` lists them. Re-save them as "
            f"{encoding}, or pass `fallback_encoding=None` to skip them.",
            DecodingFallbackWarning,
            stacklevel=3,
        )
    return tuple(f"{file}: {note}" for file, note in fallbacks)
