"""Checks of a run configuration that go beyond one value's range (no Flower import).

Range, name and combination checks of the settings live with the training plan
(:mod:`models.plan_checks`); here is what only the server can know: whether a federation of
given sites can ever meet the node minimums.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING

from models.plan_checks import misspelt_keys

if TYPE_CHECKING:
    from server.config import RunConfig

__all__ = ["federation_size_problems", "misspelt_keys"]


def federation_size_problems(config: RunConfig, sites: Collection[str]) -> list[str]:
    """Node minimums a federation of exactly ``sites`` can never meet (the server would wait
    for more sites forever), e.g. in a simulation whose sites are known in advance."""
    problems = []
    names = ", ".join(sorted(sites)) or "none"
    for key, value in (
        ("min-train-nodes", config.min_train_nodes),
        ("min-available-nodes", config.min_available_nodes),
    ):
        if value > len(sites):
            problems.append(
                f"{key} is {value} but the federation has {len(sites)} site(s) ({names}): the "
                f"server would wait forever; use at most {len(sites)}"
            )
    return problems
