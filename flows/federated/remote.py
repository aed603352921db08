"""Federated clients on node agents (cluster mode).

Node side: :func:`fed_client_on_node` is served by every node agent as deployment
``fed-client/NODE``. It runs the very same :func:`~flows.federated.flow.client_round` step as
simulation mode, on the node's private dataset (``private:NAME``, resolved there): the data
never leaves the node, only the update artifact (and its receipt) goes to the cluster.

Coordinator side: :class:`NodeClients` starts one ``fed-client`` run per node for a round,
waits up to the round's timeout, and trusts nothing in the answers: each receipt is fetched and
verified (hash, signature, signer = the answering node, the update among its outputs), and the
update must be for this round's global model. A node that does not answer in time is left out
of the round (the round goes on if at least ``min_clients`` answered) and is not sent new work
while its old run is still going; when that run finishes later, its update is for a finished
round and is discarded, recorded in the round's ``late`` list.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from prefect import flow

from flows.errors import FlowError, one_line
from flows.federated.flow import client_round
from flows.remote import (
    PRIVATE_PREFIX,
    Coordinator,
    RemoteRunError,
    admit,
    finish,
    log_note,
    node_policy,
    run_result,
    start_on_node,
    verify_answer,
    wait_for_runs,
)
from flows.tasks import current_runtime

__all__ = ["ClientAnswers", "NodeClients", "fed_client_on_node"]


@flow(name="fed-client", log_prints=False)
def fed_client_on_node(
    global_model: str,
    dataset: str,
    round: int,
    epochs: int = 1,
    lr: float = 5e-3,
    batch_size: int = 32,
    seed: int = 0,
    proximal_mu: float = 0.0,
    secure: dict[str, Any] | None = None,
    dp: dict[str, Any] | None = None,
    note: str = "",
    request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One federated round on this node: train from ``global_model`` on ``dataset`` (usually
    ``private:NAME``); only the update travels."""
    admit("fed-client", fed_client_on_node, dict(locals()))
    log_note(note)
    with node_policy(dataset, "federated") as data:  # user code: refused (no sandbox here yet)
        return finish(
            client_round(
                global_model=global_model,
                data=data,
                round=round,
                epochs=epochs,
                lr=lr,
                batch_size=batch_size,
                seed=seed,
                proximal_mu=proximal_mu,
                secure=secure,
                dp=dp,
                return_state=True,
            )
        )


@dataclass
class ClientAnswers:
    """What a round got back: answers (client label → the node's verified result), who was
    missing and why, and late updates for earlier rounds (discarded)."""

    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    missing: list[tuple[str, str]] = field(default_factory=list)
    late: list[dict[str, Any]] = field(default_factory=list)


class NodeClients:
    """The coordinator's handle on ``fed-client`` runs on cluster nodes (see module doc)."""

    def __init__(
        self,
        clients: list[tuple[str, str]],
        api_url: str | None,
        timeout: float,
        coordinator: Coordinator,
    ) -> None:
        labels = [node for node, _ in clients]
        if len(set(labels)) != len(labels):
            raise FlowError("each node can be one client only")
        self.clients = dict(clients)
        self.api_url = api_url
        self.timeout = timeout
        self.coordinator = coordinator
        # node → (flow run id, round, parameters, when sent)
        self.pending: dict[str, tuple[str, int, dict[str, Any], float]] = {}

    def run_round(
        self, rnd: int, global_model: str, params: dict[str, dict[str, Any]]
    ) -> ClientAnswers:
        """Run the round on every client in ``params`` (label → its parameters)."""
        out = ClientAnswers()
        self._collect_late(out)
        started: dict[str, tuple[str, dict[str, Any], float]] = {}
        for node, extra in params.items():
            if node in self.pending:
                out.missing.append((node, f"still busy with round {self.pending[node][1]}"))
                continue
            sent = {
                "global_model": global_model,
                "dataset": self.clients[node],
                "round": rnd,
                **extra,
            }
            try:
                when = time.time()
                run_id = start_on_node(
                    "fed-client", node, sent, api_url=self.api_url, coordinator=self.coordinator
                )
            except (RemoteRunError, FlowError) as exc:
                out.missing.append((node, one_line(exc)))
                continue
            started[node] = (run_id, sent, when)
        runs = [run_id for run_id, _, _ in started.values()]
        states = wait_for_runs(runs, self.timeout, api_url=self.api_url)
        for node, (run_id, sent, when) in started.items():
            if run_id not in states:
                self.pending[node] = (run_id, rnd, sent, when)
                out.missing.append((node, f"no answer within {self.timeout:g}s"))
                continue
            try:
                result = self._verified(node, run_id, states[run_id], sent, when)
            except FlowError as exc:
                out.missing.append((node, one_line(exc)))
                continue
            out.answers[node] = result
        return out

    def _collect_late(self, out: ClientAnswers) -> None:
        if not self.pending:
            return
        runs = {run_id: node for node, (run_id, *_) in self.pending.items()}
        states = wait_for_runs(list(runs), 0.0, api_url=self.api_url)
        for run_id, state in states.items():
            node = runs[run_id]
            _, old, sent, when = self.pending.pop(node)
            late: dict[str, Any] = {"client": node, "round": old, "state": state.name}
            if state.is_completed():
                try:
                    late["update"] = self._verified(node, run_id, state, sent, when)["update"]
                except FlowError as exc:
                    late["error"] = one_line(exc)
            out.late.append(late)

    def _verified(
        self, node: str, run_id: str, state: Any, sent: dict[str, Any], when: float
    ) -> dict[str, Any]:
        """The run's answer, if :func:`~flows.remote.verify_answer` accepts it (signed by the
        node's registered key, for these parameters, the update among its outputs)."""
        where = f"fed-client/{node}"
        result = run_result(run_id, state, where, api_url=self.api_url)
        if not isinstance(result.get("update"), str | None):
            raise RemoteRunError(f"{where} answered an update that is not a CID")
        private = ["data"] if str(sent["dataset"]).startswith(PRIVATE_PREFIX) else []
        task_params = {("data" if k == "dataset" else k): v for k, v in sent.items()}
        verify_answer(
            current_runtime().store,
            self.coordinator,
            node,
            "fed-client",
            task_params,
            result,
            sent=when,
            private=private,
        )
        return result
