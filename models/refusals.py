"""Why a site declines a message: a code and a fixed sentence from a closed list.

A refusal leaves the site; its detail (file, row, column, exception text) does not: that goes
to the site's own log. The server keeps only the code and, when it is one of these sentences,
the sentence (strategies.screening), so no text a site chose reaches the coordinator.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Refusal", "REFUSALS", "ERROR_SENTENCES", "refusal"]


@dataclass(frozen=True)
class Refusal:
    """One entry of the closed list: a Flower error code, a short name and its sentence."""

    code: int
    name: str
    sentence: str

    @property
    def reason(self) -> str:
        """What the Error reply carries: ``name: sentence``."""
        return f"{self.name}: {self.sentence}"


# Flower's own error codes are small integers; ours start at 100.
REFUSALS: dict[str, Refusal] = {
    r.name: r
    for r in (
        Refusal(
            100, "data-invalid", "The site's data cannot be used; details are in the site's log."
        ),
        Refusal(101, "budget-exhausted", "The site's privacy budget does not allow this round."),
        Refusal(102, "plan-not-approved", "The site has not approved this training plan."),
        Refusal(103, "outside-plan", "The request is outside the training plan the site approved."),
        Refusal(104, "no-rows", "The site has no rows for this request."),
        Refusal(
            105,
            "site-config-invalid",
            "The site's configuration is invalid; details are in the site's log.",
        ),
        Refusal(199, "internal-error", "Local training failed; details are in the site's log."),
    )
}

#: Every reason a site may send, verbatim.
ERROR_SENTENCES: frozenset[str] = frozenset(
    {r.sentence for r in REFUSALS.values()}
    | {r.reason for r in REFUSALS.values()}
    | {"Local evaluation failed; details are in the site's log."}
)


def refusal(name: str) -> Refusal:
    """The closed-list entry called ``name`` (KeyError for an unknown name: a bug)."""
    return REFUSALS[name]
