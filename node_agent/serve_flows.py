"""``python -m node_agent.serve_flows --name NODE [--warm]``: serve the node-side flows as
Prefect deployments ``FLOW/NODE`` (started and stopped by :class:`node_agent.agent.NodeAgent`).

Runs against ``PREFECT_API_URL`` with ``CIDFLOW_HOME`` set to the node's home, so a run's store
is the node's cache in front of the cluster. Two kinds of child, one of each per node:

- the default serves the other node flows with Prefect's runner: a subprocess per flow run, so
  a run of user code (a ``module:factory`` model, say) cannot take the node's server down;
- ``--warm`` runs the :data:`WARM` flows (the federated client's round: cidflow's own code, a
  few milliseconds of training on a small model) one after another *in this process*, whose
  imports of torch and Prefect are paid once. A new process per round cost ~9 s of a ~10 s
  round on a 3-node cluster (bench/RESULTS.md, section 10). It polls the API for scheduled
  runs of its deployments, proposes Pending, and runs each with Prefect's flow engine, which
  reports Running/Completed/Failed and persists the result as for any deployment run.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from datetime import timedelta
from typing import Any

#: The node flows' names (``flows.remote.node_flows``; kept here free of Prefect imports so
#: that ``cluster up`` can wait for every deployment ``FLOW/NODE`` before it returns).
NODE_FLOW_NAMES: tuple[str, ...] = ("train", "evaluate", "infer", "fed-client")
#: Flows run warm (in the serving process); every other node flow gets a process per run.
WARM: frozenset[str] = frozenset({"fed-client"})

log = logging.getLogger("cidflow.node.flows")


def _deployments(name: str, flows: dict[str, Any]) -> list[Any]:
    return [fn.to_deployment(name=name, tags=["cidflow", f"node:{name}"]) for fn in flows.values()]


def serve_cold(name: str, limit: int) -> None:
    """Prefect's runner for the node flows not in :data:`WARM` (a subprocess per run)."""
    from prefect import serve

    from flows.remote import node_flows

    cold = {k: fn for k, fn in node_flows().items() if k not in WARM}
    serve(*_deployments(name, cold), limit=limit, print_starting_message=False)


def serve_warm(name: str, poll: float, stop: threading.Event) -> None:
    """Run the :data:`WARM` flows' scheduled runs in this process until ``stop`` is set."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import Abort
    from prefect.flow_engine import run_flow
    from prefect.states import Pending
    from prefect.types._datetime import now
    from prefect.utilities.engine import propose_state_sync

    from flows.remote import node_flows

    warm = {k: fn for k, fn in node_flows().items() if k in WARM}
    by_deployment = {dep.apply(): warm[key] for key, dep in zip(warm, _deployments(name, warm),
                                                                 strict=True)}  # fmt: skip
    with get_client(sync_client=True) as client:
        while not stop.is_set():
            try:
                soon = now("UTC") + timedelta(seconds=1)
                runs = client.get_scheduled_flow_runs_for_deployments(
                    deployment_ids=list(by_deployment), scheduled_before=soon
                )
            except Exception as exc:  # the API restarting, say: try again at the next poll
                log.warning("polling for flow runs failed: %s", exc)
                runs = []
            runs.sort(key=lambda r: r.next_scheduled_start_time or r.expected_start_time or 0)
            for run in runs:
                if stop.is_set():
                    break
                try:
                    state = propose_state_sync(client, Pending(), flow_run_id=run.id)
                except Abort:  # another runner took it, or it was cancelled
                    continue
                if not state.is_pending():
                    continue
                flow = by_deployment[run.deployment_id]
                try:  # the engine records the outcome (Failed, with the error) on the run
                    run_flow(flow, flow_run=client.read_flow_run(run.id), return_type="state")
                except Exception as exc:
                    log.error("flow run %s failed outside its flow: %s", run.id, exc)
            stop.wait(poll)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="node_agent.serve_flows")
    parser.add_argument("--name", required=True, help="Node name: the deployments' name.")
    parser.add_argument("--limit", type=int, default=1, help="Flow runs at once on this node.")
    parser.add_argument(
        "--warm",
        action="store_true",
        help="Run the warm flows in this process (see the module docstring).",
    )
    parser.add_argument("--poll", type=float, default=0.2, help="Seconds between polls (--warm).")
    args = parser.parse_args(argv)
    if not args.warm:
        serve_cold(args.name, args.limit)
        return
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    serve_warm(args.name, args.poll, stop)


if __name__ == "__main__":
    main()
