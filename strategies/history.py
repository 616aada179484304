"""What a federated run produced, round by round (no Flower types, JSON-ready)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["RoundRecord", "RunHistory", "SiteFailure", "json_safe", "round_from_dict"]

Metrics = dict[str, Any]


@dataclass
class SiteFailure:
    """A site that was asked but did not contribute in a round."""

    round: int
    stage: str  # "train" or "evaluate"
    node_id: int
    reason: str
    site: str = ""  # the site's name when known from an earlier reply, else ""


@dataclass
class RoundRecord:
    """One round: global metrics (from the summed site summaries) and per-site metrics."""

    round: int
    global_metrics: Metrics = field(default_factory=dict)
    sites: dict[str, Metrics] = field(default_factory=dict)
    train: dict[str, Metrics] = field(default_factory=dict)
    failures: list[SiteFailure] = field(default_factory=list)
    # The summed, shareable ScoreSummary record (histograms + counts), for ROC plots.
    global_summary: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    # Why the global model did not change this round (e.g. too few usable updates); "" = it did.
    note: str = ""

    def to_results(self) -> dict[str, Any]:
        """The DESIGN.md ``rounds[]`` entry."""
        return {
            "round": self.round,
            "global": json_safe(self.global_metrics),
            "sites": json_safe(self.sites),
            "train": json_safe(self.train),
            "failures": [asdict(f) for f in self.failures],
            "seconds": self.seconds,
            **({"note": self.note} if self.note else {}),
        }


@dataclass
class RunHistory:
    rounds: list[RoundRecord] = field(default_factory=list)

    def round(self, server_round: int) -> RoundRecord:
        for record in self.rounds:
            if record.round == server_round:
                return record
        record = RoundRecord(round=server_round)
        self.rounds.append(record)
        return record

    @property
    def last(self) -> RoundRecord | None:
        return self.rounds[-1] if self.rounds else None


def json_safe(value: Any) -> Any:
    """NaN/inf become None so that the JSON is standard (json.dumps would write NaN)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return json_safe(value.item())
    return value


def round_from_dict(data: dict[str, Any]) -> RoundRecord:
    """A :class:`RoundRecord` back from ``dataclasses.asdict`` (a resumed run's history)."""
    fields = dict(data)
    fields["failures"] = [SiteFailure(**f) for f in fields.get("failures") or []]
    return RoundRecord(**fields)
