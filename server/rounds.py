"""The server's round loop: Flower's ``Strategy.start`` loop, able to start at any round.

Flower's ``Strategy.start`` always counts rounds from 1 and has no per-round hook. A resumed
run must continue at round ``k + 1`` with the true round number (sites derive their learning
rate schedule and seeds from it; FedAdam/FedYogi their bias correction), and the server must
checkpoint after every round. :func:`run_rounds` does exactly what ``start`` does per round
(configure/send/aggregate train, then evaluate) for any message-API strategy, wrappers such as
Flower's DP strategies included.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

__all__ = ["run_rounds", "round_seed"]

_log = logging.getLogger(__name__)

AfterRound = Callable[[int, ArrayRecord], None]


def round_seed(seed: int, server_round: int) -> int:
    """The seed of the server's node sampling in ``server_round`` (same in a resumed run)."""
    return seed * 100_003 + server_round


def run_rounds(
    strategy: Strategy,
    grid: Grid,
    *,
    arrays: ArrayRecord,
    first_round: int,
    num_rounds: int,
    timeout: float,
    train_config: ConfigRecord,
    evaluate_config: ConfigRecord,
    seed: int = 0,
    after_round: AfterRound | None = None,
) -> ArrayRecord:
    """Run rounds ``first_round`` .. ``num_rounds``; returns the final global arrays.

    Args:
        strategy: a message-API strategy (or a wrapper around one).
        grid: Flower's grid.
        arrays: the global model at the start of ``first_round``.
        first_round: the first round to run (1 for a new run, k + 1 after a checkpoint at k).
        num_rounds: the last round.
        timeout: seconds to wait for replies in each train and evaluate step; the round goes
            on with the replies that came in time.
        train_config, evaluate_config: sent to the sites with every message.
        seed: seeds Python's ``random`` (Flower's node sampling) per round. Default 0.
        after_round: called with (round, global arrays) after each round's evaluation.
    """
    if first_round < 1:
        raise ValueError(f"first_round must be >= 1, got {first_round}")
    for server_round in range(first_round, num_rounds + 1):
        _log.info("[ROUND %d/%d]", server_round, num_rounds)
        random.seed(round_seed(seed, server_round))
        replies = grid.send_and_receive(
            strategy.configure_train(server_round, arrays, train_config, grid), timeout=timeout
        )
        aggregated, _ = strategy.aggregate_train(server_round, replies)
        if aggregated is not None:
            arrays = aggregated
        replies = grid.send_and_receive(
            strategy.configure_evaluate(server_round, arrays, evaluate_config, grid),
            timeout=timeout,
        )
        strategy.aggregate_evaluate(server_round, replies)
        if after_round is not None:
            after_round(server_round, arrays)
    return arrays
