"""An in-process Flower grid for server tests: every node runs the real ClientApp functions.

No Ray and no processes: ``send_and_receive`` calls :func:`client.app.train` /
:func:`client.app.evaluate` for each message with the node config a real site would pass, and
keeps each node's ``context.state`` across rounds, as a SuperNode does within one run. Faults
are injected per test: a node that stops answering, a server that crashes after a round, an
reply rewritten on its way back (a poisoned or broken site).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

from flwr.app import Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from client import app as client_app

__all__ = ["LocalGrid", "ServerCrash"]

Tamper = Callable[[int, Message, Message], Message]  # (round, instruction, reply) -> reply


class ServerCrash(RuntimeError):
    """Raised by :class:`LocalGrid` to stop a run as a crash would."""


class LocalGrid:
    """The part of Flower's Grid that strategies and :func:`server.rounds.run_rounds` use.

    Args:
        manifest: one CSV with a ``site`` column.
        sites: the sites, one node each (node ids 101, 102, ...).
        silent: node id -> the first round from which that node no longer answers (its
            messages time out).
        crash_before_round: raise :class:`ServerCrash` when this round's first message is
            sent (the server "dies" after the previous round's checkpoint).
        tamper: rewrites a train reply (e.g. a poisoned site); None = none.
        tamper_evaluate: rewrites an evaluate reply; None = none.
    """

    def __init__(
        self,
        manifest: Path,
        sites: Sequence[str],
        *,
        silent: Mapping[int, int] | None = None,
        crash_before_round: int | None = None,
        tamper: Tamper | None = None,
        tamper_evaluate: Tamper | None = None,
    ) -> None:
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
        self.nodes = {101 + i: site for i, site in enumerate(sites)}
        self.manifest = manifest
        self.silent = dict(silent or {})
        self.crash_before_round = crash_before_round
        self.tamper = tamper
        self.tamper_evaluate = tamper_evaluate
        self.states = {node: RecordDict() for node in self.nodes}
        self.sent: list[tuple[int, str, int]] = []  # (round, message type, node)
        self._ids = itertools.count(1)

    def get_node_ids(self) -> list[int]:
        return list(self.nodes)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> list[Message]:
        replies = []
        for msg in messages:
            node = int(msg.metadata.dst_node_id)
            server_round = int(msg.content["config"]["server-round"])
            if self.crash_before_round is not None and server_round >= self.crash_before_round:
                raise ServerCrash(f"server killed before round {server_round}")
            self.sent.append((server_round, msg.metadata.message_type, node))
            if node in self.silent and server_round >= self.silent[node]:
                continue
            msg.metadata.__dict__["_message_id"] = f"m{next(self._ids)}"
            context = Context(
                run_id=1,
                node_id=node,
                node_config={"data-path": str(self.manifest), "site-id": self.nodes[node]},
                state=self.states[node],
                run_config={},
            )
            if msg.metadata.message_type == MessageType.TRAIN:
                reply = client_app.train(msg, context)
                if self.tamper is not None:
                    reply = self.tamper(server_round, msg, reply)
            else:
                reply = client_app.evaluate(msg, context)
                if self.tamper_evaluate is not None:
                    reply = self.tamper_evaluate(server_round, msg, reply)
            reply.metadata.__dict__["_src_node_id"] = node
            replies.append(reply)
        return replies
