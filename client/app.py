"""The ClientApp: translates Flower messages to :mod:`client.site` calls and back.

What a reply carries (checked by tests/client/test_message_audit.py):
- train: the model's arrays, and a MetricRecord with ``num-examples`` and training scalars;
- evaluate: a MetricRecord with ``num-examples`` and the site's ScoreSummary (score
  histograms per class and confusion counts, never per-patient values);
- both: a ConfigRecord ``site`` with the site's name.
"""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, ConfigRecord, Context, Error, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.manifest import ManifestError
from client.site import RoundSettings, SiteConfigError, SiteSettings, get_session

__all__ = ["app", "SITE_DATA_ERROR"]

_log = logging.getLogger(__name__)

# Error code for a site that cannot take part (bad manifest or node config); Flower's own
# codes are small integers, so ours start at 100.
SITE_DATA_ERROR = 100

app = ClientApp()


def _site_record(site_id: str) -> ConfigRecord:
    return ConfigRecord({"site-id": site_id})


def _refuse(msg: Message, context: Context, err: Exception) -> Message:
    site = str(context.node_config.get("site-id") or context.node_config.get("data-path") or "?")
    reason = f"site {site} cannot take part: {err}"
    _log.error("%s", reason)
    return Message(Error(code=SITE_DATA_ERROR, reason=reason), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Load the global weights, train locally, reply with the new weights."""
    try:
        settings = SiteSettings.from_node_config(context.node_config)
        rounds = RoundSettings.from_config(msg.content["config"])
        session = get_session(settings, rounds)
    except (ManifestError, SiteConfigError) as err:
        return _refuse(msg, context, err)
    session.load_global(msg.content["arrays"].to_torch_state_dict())
    result = session.train(rounds)
    metrics = MetricRecord(
        {
            "num-examples": result.num_examples,
            "train-loss": result.mean_loss,
            "train-seconds": result.seconds,
            "train-steps": result.num_steps,
        }
    )
    content = RecordDict(
        {
            "arrays": ArrayRecord(session.model.state_dict()),
            "metrics": metrics,
            "site": _site_record(session.site_id),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global weights on the site's own rows; reply with shareable counts."""
    try:
        settings = SiteSettings.from_node_config(context.node_config)
        rounds = RoundSettings.from_config(msg.content["config"])
        session = get_session(settings, rounds)
    except (ManifestError, SiteConfigError) as err:
        return _refuse(msg, context, err)
    session.load_global(msg.content["arrays"].to_torch_state_dict())
    result = session.evaluate(rounds)
    record: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": result.num_examples,
        "eval-seconds": result.seconds,
    }
    record.update(result.summary.to_record())
    content = RecordDict({"metrics": MetricRecord(record), "site": _site_record(session.site_id)})
    return Message(content=content, reply_to=msg)
