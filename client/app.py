"""The ClientApp: translates Flower messages to :mod:`client.site` calls and back.

What a reply carries (checked by tests/client/test_message_audit.py):
- train: the model's arrays, and a MetricRecord with ``num-examples`` and training scalars;
- evaluate: a MetricRecord with ``num-examples`` and the site's ScoreSummary (score
  histograms per class and confusion counts, never per-patient values);
- both: a ConfigRecord ``site`` with the site's name.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from client.manifest import ManifestError
from client.privacy import BudgetExhausted, PrivacyConfigError, PrivacyLedger
from client.site import RoundSettings, SiteConfigError, SiteSettings, get_session
from models.array_codec import array_from_numpy, tensor_views
from models.refusals import refusal
from models.tasks import TaskDefinitionError

__all__ = [
    "app",
    "TRAIN_MODS",
    "SITE_DATA_ERROR",
    "PRIVACY_BUDGET_EXHAUSTED",
    "state_from_record",
    "record_from_state",
    "encode_update",
]

_log = logging.getLogger(__name__)

# Error codes for a site that cannot take part; Flower's own codes are small integers.
SITE_DATA_ERROR = refusal("data-invalid").code  # bad manifest or node config
PRIVACY_BUDGET_EXHAUSTED = refusal("budget-exhausted").code  # would overspend the DP budget
_LEDGER_KEY = "dp-ledger"
_LOCAL_NORM_KEY = "fedbn-local-norm"  # context.state record: this site's norm layers (FedBN)
_DP_KEYS = (
    "dp-epsilon-spent",
    "dp-epsilon-budget",
    "dp-delta",
    "dp-noise-multiplier",
    "dp-max-grad-norm",
)  # context.state record: the site's DP-SGD history for this run

app = ClientApp()


def central_dp_clipping_mod(
    msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """Flower's ``fixedclipping_mod`` when the server runs central DP, else a pass-through
    (the plain mod refuses messages without a clipping norm)."""
    config = msg.content.config_records.get("config", {})
    if KEY_CLIPPING_NORM in config:
        return fixedclipping_mod(msg, context, call_next)
    return call_next(msg, context)


def state_from_record(record: ArrayRecord) -> dict[str, torch.Tensor]:
    """The record's arrays as read-only tensor views (see models.array_codec.tensor_views)."""
    return tensor_views(record)


def record_from_state(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """``ArrayRecord(state)`` with one copy of each tensor's data instead of two."""
    return ArrayRecord(
        {key: array_from_numpy(t.detach().cpu().contiguous().numpy()) for key, t in state.items()}
    )


def encode_update(
    state: Mapping[str, torch.Tensor], received: Mapping[str, torch.Tensor], update_dtype: str
) -> ArrayRecord:
    """A train reply's arrays: the weights (``float32``), or for ``float16`` each floating
    array's difference from the global weights received, in half precision (float32 for a
    difference beyond float16's range; integer arrays, e.g. BatchNorm's
    ``num_batches_tracked``, travel as they are). The server adds the mean
    difference back to its global weights (``strategies.streaming``)."""
    if update_dtype == "float32":
        return record_from_state(state)
    if update_dtype != "float16":
        raise ValueError(f"update-dtype must be float32 or float16, got {update_dtype!r}")
    encoded = {}
    for key, value in state.items():
        if not value.is_floating_point():
            encoded[key] = value
            continue
        difference = value - received[key]
        half = difference.half()
        # a difference beyond float16's range (65504; e.g. BatchNorm variances of an
        # untrained network) travels at full precision rather than as inf
        encoded[key] = half if bool(torch.isfinite(half).all()) else difference
    return record_from_state(encoded)


def _site_record(site_id: str) -> ConfigRecord:
    return ConfigRecord({"site-id": site_id})


def _local_norm(context: Context, rounds: RoundSettings) -> dict | None:
    """This site's own normalisation layers under FedBN (None before its first round)."""
    if not rounds.keep_local_norm or _LOCAL_NORM_KEY not in context.state.array_records:
        return None
    return state_from_record(context.state.array_records[_LOCAL_NORM_KEY])


def _refuse(msg: Message, context: Context, err: Exception) -> Message:
    """An Error reply with a code and a fixed sentence (models.refusals); the detail, which
    may name files, rows or labels, stays in the site's log."""
    if isinstance(err, BudgetExhausted):
        entry = refusal("budget-exhausted")
    elif isinstance(err, ManifestError):
        entry = refusal("data-invalid")
    elif isinstance(err, SiteConfigError | PrivacyConfigError | TaskDefinitionError):
        entry = refusal("site-config-invalid")
    else:
        entry = refusal("internal-error")
    site = str(context.node_config.get("site-id") or context.node_config.get("data-path") or "?")
    _log.error("site %s declines the message (%s): %s", site, entry.name, err)
    return Message(Error(code=entry.code, reason=entry.reason), reply_to=msg)


# Mods of the train function; a wrapper ClientApp (simulation) must register the same ones.
TRAIN_MODS = [central_dp_clipping_mod]


@app.train(mods=TRAIN_MODS)
def train(msg: Message, context: Context) -> Message:
    """Load the global weights, train locally, reply with the new weights (or a refusal from
    the closed list: an exception's text never leaves the site)."""
    try:
        return _train(msg, context)
    except Exception as err:  # noqa: BLE001  # Flower would send str(err) to the server
        return _refuse(msg, context, err)


def _train(msg: Message, context: Context) -> Message:
    try:
        settings = SiteSettings.from_node_config(context.node_config)
        rounds = RoundSettings.from_config(msg.content["config"])
        session = get_session(settings, rounds)
        budget = session.privacy_budget(rounds)
        received = state_from_record(msg.content["arrays"])
        session.load_global(received, local_norm=_local_norm(context, rounds))
        # Every site sends the same keys (Flower's FedAvg requires it); NaN = no DP here.
        values: dict[str, int | float] = dict.fromkeys(_DP_KEYS, math.nan)
        if budget is None:
            result = session.train(rounds)
        else:
            ledger = PrivacyLedger.from_record(context.state.config_records.get(_LEDGER_KEY))
            result, report, ledger = session.train_private(rounds, budget, ledger)
            context.state[_LEDGER_KEY] = ConfigRecord(ledger.to_record())
            values = {
                "dp-epsilon-spent": report.epsilon_spent,
                "dp-epsilon-budget": report.epsilon_budget,
                "dp-delta": report.delta,
                "dp-noise-multiplier": report.noise_multiplier,
                "dp-max-grad-norm": report.max_grad_norm,
            }
    except (
        ManifestError,
        SiteConfigError,
        TaskDefinitionError,
        PrivacyConfigError,
        BudgetExhausted,
    ) as err:
        return _refuse(msg, context, err)
    metrics = MetricRecord(
        {
            "num-examples": result.num_examples,
            "train-loss": result.mean_loss,
            "train-seconds": result.seconds,
            "train-steps": result.num_steps,
            "skipped-files": result.skipped_files,  # unreadable images skipped this round
            "unit-weight": 1,  # lets the server average uniformly (central DP)
            **values,
        }
    )
    sent, kept = session.shareable_state(keep_local_norm=rounds.keep_local_norm)
    if kept:
        context.state[_LOCAL_NORM_KEY] = record_from_state(kept)
    content = RecordDict(
        {
            "arrays": encode_update(sent, received, rounds.update_dtype),
            "metrics": metrics,
            "site": _site_record(session.site_id),
        }
    )
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the global weights on the site's own rows; reply with shareable counts (or a
    refusal from the closed list)."""
    try:
        return _evaluate(msg, context)
    except Exception as err:  # noqa: BLE001
        return _refuse(msg, context, err)


def _evaluate(msg: Message, context: Context) -> Message:
    try:
        settings = SiteSettings.from_node_config(context.node_config)
        rounds = RoundSettings.from_config(msg.content["config"])
        session = get_session(settings, rounds)
    except (ManifestError, SiteConfigError, TaskDefinitionError, PrivacyConfigError) as err:
        return _refuse(msg, context, err)
    session.load_global(
        state_from_record(msg.content["arrays"]), local_norm=_local_norm(context, rounds)
    )
    result = session.evaluate(rounds)
    record: dict[str, int | float | list[int] | list[float]] = {
        "num-examples": result.num_examples,
        "eval-seconds": result.seconds,
        "skipped-files": result.skipped_files,
    }
    record.update(result.summary.to_record())
    content = RecordDict({"metrics": MetricRecord(record), "site": _site_record(session.site_id)})
    return Message(content=content, reply_to=msg)
