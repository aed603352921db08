"""Node-side flows and how a coordinator runs them.

A node agent serves :func:`node_flows` as Prefect deployments named ``FLOW/NODE`` (``train/
node-1``); a coordinator calls :func:`run_on_node`, which uses ``run_deployment`` and waits.
Nothing travels but JSON and CIDs (DESIGN invariant 4): the node reads its inputs from the
cluster's store (or from its private datasets), writes its outputs back to the cluster (its
home's store is a local cache in front of the cluster, see :mod:`artifacts.cluster`), and
reports its result as a Prefect markdown artifact holding the JSON (key ``cidflow-result``),
which the coordinator parses strictly. No result pickles, no shared filesystem.

Private datasets: a node started with ``--private NAME=PATH`` stores ``PATH`` as a dataset in
its own home only and lists it in ``HOME/private.json``; node-side flows accept
``private:NAME`` wherever a dataset CID goes and resolve it there, on the node. Its blobs are
never served or replicated.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prefect import flow

from artifacts.canonical import canonical_json, loads_strict
from artifacts.cid import as_cid
from flows.errors import FlowError, one_line
from flows.pipelines import evaluate, infer, train
from flows.tasks import current_runtime

__all__ = [
    "PRIVATE_FILE",
    "RESULT_KEY",
    "evaluate_on_node",
    "infer_on_node",
    "load_private",
    "node_flows",
    "resolve_dataset",
    "run_on_node",
    "run_result",
    "save_private",
    "start_on_node",
    "train_on_node",
    "wait_for_runs",
]

PRIVATE_FILE = "private.json"
RESULT_KEY = "cidflow-result"
PRIVATE_PREFIX = "private:"


class RemoteRunError(FlowError, RuntimeError):
    """A flow run on a node that failed, timed out, or answered something unusable."""


# -- private datasets ---------------------------------------------------------------------------


def load_private(home: str | os.PathLike[str]) -> dict[str, str]:
    """Private dataset name → CID of the node whose home is ``home``."""
    path = Path(home) / PRIVATE_FILE
    try:
        doc = loads_strict(path.read_bytes())
    except FileNotFoundError:
        return {}
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise FlowError(f"{path} is not a JSON object of dataset name -> CID")
    return {str(k): str(as_cid(v)) for k, v in doc.items()}


def save_private(home: str | os.PathLike[str], datasets: dict[str, str]) -> None:
    path = Path(home) / PRIVATE_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(canonical_json(datasets))
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def resolve_dataset(dataset: str) -> str:
    """``private:NAME`` → the CID this node holds under that name; a CID stays as it is."""
    if not dataset.startswith(PRIVATE_PREFIX):
        return dataset
    name = dataset.removeprefix(PRIVATE_PREFIX)
    home = current_runtime().store.home
    private = load_private(home)
    if name not in private:
        known = ", ".join(sorted(private)) or "none"
        raise FlowError(f"this node holds no private dataset {name!r} (it holds: {known})")
    return private[name]


# -- node-side flows ----------------------------------------------------------------------------


def _report(result: dict[str, Any]) -> dict[str, Any]:
    """Attach the result to the flow run as JSON the coordinator can read back."""
    from prefect.artifacts import create_markdown_artifact

    text = canonical_json(result).decode("utf-8")
    create_markdown_artifact(
        markdown=f"```json\n{text}\n```", key=RESULT_KEY, description="cidflow result (CIDs)"
    )
    return result


def _finish(state: Any) -> dict[str, Any]:
    result: dict[str, Any] = dict(state.result())
    result["cached"] = state.name == "Cached"
    result["node_id"] = current_runtime().identity.id
    return _report(result)


def _log_note(note: str) -> None:
    """The coordinator's word on why this run is on this node, in the run's own log."""
    if note:
        from prefect.logging import get_run_logger

        get_run_logger().info("scheduling: %s", note)


@flow(name="train", log_prints=False)
def train_on_node(
    dataset: str,
    model: str = "mlp",
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    model_kwargs: dict[str, Any] | None = None,
    note: str = "",
) -> dict[str, Any]:
    """``train`` on this node (``dataset`` may be ``private:NAME``)."""
    _log_note(note)
    return _finish(train(
        dataset=resolve_dataset(dataset), model=model, epochs=epochs, seed=seed,
        batch_size=batch_size, lr=lr, model_kwargs=model_kwargs, return_state=True,
    ))  # fmt: skip


@flow(name="evaluate", log_prints=False)
def evaluate_on_node(
    model: str, dataset: str, batch_size: int = 256, note: str = ""
) -> dict[str, Any]:
    """``evaluate`` on this node (``dataset`` may be ``private:NAME``)."""
    _log_note(note)
    return _finish(evaluate(
        model=model, dataset=resolve_dataset(dataset), batch_size=batch_size, return_state=True,
    ))  # fmt: skip


@flow(name="infer", log_prints=False)
def infer_on_node(
    model: str, dataset: str, split: str = "test", batch_size: int = 1024, note: str = ""
) -> dict[str, Any]:
    """``infer`` on this node (``dataset`` may be ``private:NAME``)."""
    _log_note(note)
    return _finish(infer(
        model=model, dataset=resolve_dataset(dataset), split=split, batch_size=batch_size,
        return_state=True,
    ))  # fmt: skip


def node_flows() -> dict[str, Any]:
    """The node-side flows, by the name their deployments carry (``FLOW/NODE``)."""
    from flows.federated.remote import fed_client_on_node

    return {"train": train_on_node, "evaluate": evaluate_on_node, "infer": infer_on_node,
            "fed-client": fed_client_on_node}  # fmt: skip


# -- coordinator side ---------------------------------------------------------------------------


@contextlib.contextmanager
def _api(api_url: str | None) -> Iterator[None]:
    """Prefect calls inside go to ``api_url`` (default: the configured API)."""
    if api_url is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}):
        yield


def start_on_node(
    flow: str, node: str, parameters: dict[str, Any], *, api_url: str | None = None
) -> str:
    """Start deployment ``FLOW/NODE`` with ``parameters``; return the flow run's id at once."""
    from prefect.deployments import run_deployment

    name = f"{flow}/{node}"
    try:
        with _api(api_url):
            run: Any = run_deployment(name, parameters=parameters, timeout=0, as_subflow=False)
    except Exception as exc:  # Prefect raises its own types: ObjectNotFound, httpx errors...
        raise RemoteRunError(f"cannot run {name}: {type(exc).__name__}: {one_line(exc)}") from None
    return str(run.id)


def wait_for_runs(
    run_ids: Sequence[str],
    timeout: float,
    *,
    poll_interval: float = 0.5,
    api_url: str | None = None,
) -> dict[str, Any]:
    """Wait up to ``timeout`` s for the flow runs to reach a final state; return run id →
    final state for those that did (a run still going is left out)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + timeout
    final: dict[str, Any] = {}
    with _api(api_url), get_client(sync_client=True) as client:
        while True:
            waiting = [uuid.UUID(i) for i in run_ids if i not in final]
            if waiting:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=waiting))
                )
                final.update({str(r.id): r.state for r in runs if r.state and r.state.is_final()})
            if len(final) == len(run_ids) or time.monotonic() >= deadline:
                return final
            time.sleep(min(poll_interval, max(0.0, deadline - time.monotonic())))


def run_result(
    run_id: str, state: Any, where: str, *, api_url: str | None = None
) -> dict[str, Any]:
    """The JSON result of a finished flow run (its ``cidflow-result`` artifact); a run that did
    not complete is a :class:`RemoteRunError` with its state and message."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowRunFilter,
        FlowRunFilterId,
    )

    if not state.is_completed():
        raise RemoteRunError(f"{where}: flow run {run_id} {state.name}: {state.message or ''}")
    with _api(api_url), get_client(sync_client=True) as client:
        found = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(run_id)])),
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[RESULT_KEY])),
        )
    if not found:
        raise RemoteRunError(f"{where}: flow run {run_id} reported no result")
    return _parse_result(str(found[-1].data), where)


def run_on_node(
    flow: str,
    node: str,
    parameters: dict[str, Any],
    *,
    timeout: float = 3600.0,
    poll_interval: float = 0.5,
    api_url: str | None = None,
) -> dict[str, Any]:
    """Run deployment ``FLOW/NODE`` with ``parameters`` on the Prefect API at ``api_url``
    (default: the configured one), wait for it, and return its JSON result."""
    run_id = start_on_node(flow, node, parameters, api_url=api_url)
    states = wait_for_runs([run_id], timeout, poll_interval=poll_interval, api_url=api_url)
    name = f"{flow}/{node}"
    if run_id not in states:
        raise RemoteRunError(f"{name}: flow run {run_id} did not finish within {timeout:g}s")
    return run_result(run_id, states[run_id], name, api_url=api_url)


def _parse_result(markdown: str, where: str) -> dict[str, Any]:
    text = markdown.strip().removeprefix("```json").removesuffix("```").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        raise RemoteRunError(f"{where}: the result is not JSON") from None
    if not isinstance(doc, dict):
        raise RemoteRunError(f"{where}: the result is not a JSON object")
    return doc
