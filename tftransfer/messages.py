"""Values as error messages show them: short, however large the value."""

from __future__ import annotations

import reprlib
from collections.abc import Sequence
from typing import Any

MAX_REPR = 80
"""The longest value an error message shows, in characters."""

_REPR = reprlib.Repr()
_REPR.maxlevel = 3
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = MAX_REPR
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6


def short_text(text: str) -> str:
    """`text` in at most `MAX_REPR` characters, ending in `...` if cut."""
    return text if len(text) <= MAX_REPR else text[: MAX_REPR - 3] + "..."


def short_repr(value: Any) -> str:
    """`repr(value)` in at most `MAX_REPR` characters, for error messages.

    Long strings, lists and mappings are elided with `...` without building
    their whole `repr`, however large they are.

    Example:

    >>> short_repr(list(range(10**6)))
    '[0, 1, 2, 3, 4, 5, ...]'
    """
    return short_text(_REPR.repr(value))


def short_list(names: Sequence, limit: int = 10) -> str:
    """`names` for a message, at most `limit` of them.

    Example:

    >>> short_list(["a", "b", "c"], limit=2)
    "'a', 'b' and 1 more"
    """
    shown = ", ".join(short_repr(str(name)) for name in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
