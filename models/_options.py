"""Option lookup with "did you mean" hints (after monai.utils.module.look_up_option)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UnknownOptionError(ValueError):
    """An option name that is not one of the allowed names."""


def look_up_option(kind: str, name: str, available: Iterable[str]) -> str:
    """Return ``name`` if it is one of ``available``; otherwise raise with a hint.

    Args:
        kind: what is being looked up, e.g. ``"model"`` (used in the message).
        name: the name the user gave.
        available: the allowed names.
    """
    choices = sorted(available)
    if name in choices:
        return name
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownOptionError(
        f"unknown {kind} {name!r}.{hint} Available: {', '.join(choices) or '(none)'}"
    )
