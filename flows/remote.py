"""Node-side flows and how a coordinator runs them.

A node agent serves :func:`node_flows` as Prefect deployments named ``FLOW/NODE`` (``train/
node-1``); a coordinator calls :func:`run_on_node`, which uses ``run_deployment`` and waits.
Nothing travels but JSON and CIDs (DESIGN invariant 4): the node reads its inputs from the
cluster's store (or from its private datasets), writes its outputs back to the cluster (its
home's store is a local cache in front of the cluster, see :mod:`artifacts.cluster`), and
reports its result as a Prefect markdown artifact holding the JSON (key ``cidflow-result``),
which the coordinator parses strictly. No result pickles, no shared filesystem.

Who may start work: every node flow first checks its ``request`` parameter, a run request
signed by a coordinator on the node operator's allow-list (:func:`admit`,
:mod:`flows.run_requests`); the cluster's Prefect API also needs credentials. Private datasets
(``private:NAME``) are resolved on the node under their owner's output policy
(:mod:`flows.private`). The coordinator (:class:`Coordinator`) signs the requests and trusts
nothing in an answer (:func:`verify_answer`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect import flow

from artifacts.canonical import canonical_json
from artifacts.cid import cids_in
from artifacts.store import ArtifactStore
from flows.errors import FlowError, one_line
from flows.pipelines import evaluate, infer, train
from flows.private import PRIVATE_PREFIX, Use, resolve_private
from flows.receipts import Receipt, parse_time
from flows.run_requests import (
    CLOCK_SKEW,
    COORDINATOR_KEY,
    NonceStore,
    allowed_coordinators,
    sign_request,
    verify_request,
)
from flows.tasks import current_runtime
from registry.errors import RegistryError
from registry.identity import Identity

__all__ = [
    "COORDINATOR_KEY",
    "PRIVATE_PREFIX",
    "RESULT_KEY",
    "Coordinator",
    "RemoteRunError",
    "admit",
    "evaluate_on_node",
    "finish",
    "infer_on_node",
    "log_note",
    "node_flows",
    "node_policy",
    "run_on_node",
    "run_result",
    "start_on_node",
    "train_on_node",
    "verify_answer",
    "wait_for_runs",
]

RESULT_KEY = "cidflow-result"


class RemoteRunError(FlowError, RuntimeError):
    """A flow run on a node that failed, timed out, or answered something unusable."""


def admit(flow: str, fn: Any, parameters: dict[str, Any]) -> None:
    """Refuse the run of node flow ``fn`` (:class:`~flows.errors.RunRequestError`) unless its
    ``request`` is a fresh request for exactly these parameters (those it does not name at
    their defaults), signed by a coordinator this node's operator allowed
    (:mod:`flows.run_requests`). Every node flow calls it before anything else."""
    rt = current_runtime()
    home = rt.store.home
    defaults = {
        name: p.default
        for name, p in inspect.signature(fn).parameters.items()
        if p.default is not inspect.Parameter.empty
    }
    verify_request(
        parameters.get("request"),
        flow=flow,
        node_id=rt.identity.id,
        parameters=parameters,
        allowed=allowed_coordinators(home),
        nonces=NonceStore.for_home(home),
        defaults=defaults,
    )


# -- node-side flows ----------------------------------------------------------------------------


def _report(result: dict[str, Any]) -> dict[str, Any]:
    """Attach the result to the flow run as JSON the coordinator can read back."""
    from prefect.artifacts import create_markdown_artifact

    text = canonical_json(result).decode("utf-8")
    create_markdown_artifact(
        markdown=f"```json\n{text}\n```", key=RESULT_KEY, description="cidflow result (CIDs)"
    )
    return result


def finish(state: Any) -> dict[str, Any]:
    """The node flow's answer: its step's result, whether it was cached, and this node's id,
    reported to the coordinator."""
    result: dict[str, Any] = dict(state.result())
    result["cached"] = state.name == "Cached"
    result["node_id"] = current_runtime().identity.id
    return _report(result)


def log_note(note: str) -> None:
    """The coordinator's word on why this run is on this node, in the run's own log."""
    if note:
        from prefect.logging import get_run_logger

        get_run_logger().info("scheduling: %s", note)


@contextlib.contextmanager
def node_policy(dataset: str, use: Use, code: str | None = None) -> Iterator[str]:
    """Resolve ``dataset`` for ``use`` (a ``private:NAME`` under its owner's policy and, for
    user code, the owner's approval of ``code``) and run the block under this node's code
    policy: the zoo, and the code artifacts its operator allowed (``cidflow node allow``),
    which run only in the sandbox (:mod:`flows.sandbox_jobs`); never a local module."""
    from flows.code import CodeTrust, read_trusted, trusting

    home = current_runtime().store.home
    policy = CodeTrust.for_node(read_trusted(home))
    if code is not None:
        policy.check_code(code)  # the operator's word first: nothing about the data is said
    data = resolve_private(home, dataset, use, code)
    with trusting(policy):
        yield data


@flow(name="train", log_prints=False)
def train_on_node(
    dataset: str,
    model: str = "mlp",
    epochs: int = 10,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 1e-3,
    model_kwargs: dict[str, Any] | None = None,
    code: str | None = None,
    note: str = "",
    request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``train`` on this node (``dataset`` may be ``private:NAME``; ``code``: a code artifact
    this node's operator allowed, run sandboxed)."""
    admit("train", train_on_node, dict(locals()))
    log_note(note)
    with node_policy(dataset, "train", code) as data:
        return finish(
            train(
                dataset=data,
                model=model,
                epochs=epochs,
                seed=seed,
                batch_size=batch_size,
                lr=lr,
                model_kwargs=model_kwargs,
                code=code,
                return_state=True,
            )
        )


@flow(name="evaluate", log_prints=False)
def evaluate_on_node(
    model: str,
    dataset: str,
    batch_size: int = 256,
    code: str | None = None,
    note: str = "",
    request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``evaluate`` on this node (``dataset`` may be ``private:NAME``; ``code``: the model's
    code artifact, which must be allowed here)."""
    admit("evaluate", evaluate_on_node, dict(locals()))
    log_note(note)
    with node_policy(dataset, "evaluate", code) as data:
        step = evaluate(
            model=model, dataset=data, batch_size=batch_size, code=code, return_state=True
        )
        return finish(step)


@flow(name="infer", log_prints=False)
def infer_on_node(
    model: str,
    dataset: str,
    split: str = "test",
    batch_size: int = 1024,
    code: str | None = None,
    note: str = "",
    request: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``infer`` on this node (``dataset`` may be ``private:NAME``, if its policy lets
    predictions, which are rows, leave)."""
    admit("infer", infer_on_node, dict(locals()))
    log_note(note)
    with node_policy(dataset, "infer", code) as data:
        step = infer(
            model=model,
            dataset=data,
            split=split,
            batch_size=batch_size,
            code=code,
            return_state=True,
        )
        return finish(step)


def node_flows() -> dict[str, Any]:
    """The node-side flows, by the name their deployments carry (``FLOW/NODE``)."""
    from flows.federated.remote import fed_client_on_node

    return {
        "train": train_on_node,
        "evaluate": evaluate_on_node,
        "infer": infer_on_node,
        "fed-client": fed_client_on_node,
    }


# -- coordinator side ---------------------------------------------------------------------------


@contextlib.contextmanager
def _api(api_url: str | None) -> Iterator[None]:
    """Prefect calls inside go to ``api_url`` (default: the configured API), with the cluster's
    credentials (``PREFECT_API_AUTH_STRING``, set in the environment from the cluster's 0600
    file, never on a command line) when there are any."""
    if api_url is None:
        yield
        return
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    updates: dict[Any, Any] = {PREFECT_API_URL: api_url}
    if os.environ.get("PREFECT_API_AUTH_STRING"):
        updates[PREFECT_API_AUTH_STRING] = os.environ["PREFECT_API_AUTH_STRING"]
    with temporary_settings(updates=updates):
        yield


@dataclass(frozen=True)
class Coordinator:
    """The coordinator's side of a cluster: its key (``HOME/keys/coordinator.pem``), which
    signs every run request, and each node's id, which every answer must be signed by.

    A node's id comes from the cluster's own record (``cluster.json``, written by ``cluster
    up`` from the keys it made), and must also be the id of the node's signed announcement
    in the cluster's registry (:meth:`node_id`): an answer is accepted only when signed by the
    key the node registered."""

    identity: Identity
    node_ids: dict[str, str]
    registry: str | None = None
    home: str = ""
    _registered: set[str] = field(default_factory=set, compare=False, repr=False)

    @classmethod
    def for_home(cls, home: str | os.PathLike[str]) -> Coordinator:
        path = Path(home) / "cluster.json"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise FlowError(f"{path}: no readable cluster record ({exc})") from None
        ids = doc.get("node_ids") if isinstance(doc, dict) else None
        if not isinstance(ids, dict) or not all(isinstance(v, str) for v in ids.values()):
            raise FlowError(f"{path} names no node ids: start the cluster with this version")
        try:
            identity = Identity.load(home, COORDINATOR_KEY)
        except (OSError, RegistryError) as exc:
            raise FlowError(f"no coordinator key in {home}: {one_line(exc)}") from None
        registry = doc.get("registry")
        return cls(identity, dict(ids), registry if isinstance(registry, str) else None, str(home))

    def node_id(self, node: str) -> str:
        """The id of ``node``: the cluster's record, checked against the registry."""
        expected = self.node_ids.get(node)
        if expected is None:
            raise RemoteRunError(f"no node {node!r} in this cluster")
        if self.registry is not None and node not in self._registered:
            from registry.local import open_target

            found = [
                n for n in open_target(self.registry, self.home).nodes() if n.node_id == expected
            ]
            if not found or found[-1].name != node:
                raise RemoteRunError(
                    f"{node}: no announcement signed by its key {expected} in the registry"
                )
            self._registered.add(node)  # once per node and coordinator (a run, a command)
        return expected

    def request(self, flow: str, node: str, parameters: dict[str, Any]) -> dict[str, Any]:
        """``parameters`` plus a run request for them, signed by this coordinator."""
        plain = {k: v for k, v in parameters.items() if k != "request"}
        signed = sign_request(
            self.identity, flow=flow, node_id=self.node_id(node), parameters=plain
        )
        return {**plain, "request": signed}


def start_on_node(
    flow: str,
    node: str,
    parameters: dict[str, Any],
    *,
    api_url: str | None = None,
    coordinator: Coordinator | None = None,
) -> str:
    """Start deployment ``FLOW/NODE`` with ``parameters`` (plus a run request signed by
    ``coordinator``, without which the node refuses to run); return the flow run's id."""
    from prefect.deployments import run_deployment

    name = f"{flow}/{node}"
    if coordinator is not None:
        parameters = coordinator.request(flow, node, parameters)
    try:
        with _api(api_url):
            run: Any = run_deployment(name, parameters=parameters, timeout=0, as_subflow=False)
    except Exception as exc:  # Prefect raises its own types: ObjectNotFound, httpx errors...
        raise RemoteRunError(f"cannot run {name}: {type(exc).__name__}: {one_line(exc)}") from None
    return str(run.id)


def _made_by(attrs: dict[str, Any], parameters: dict[str, Any]) -> bool:
    """Whether an output's own attributes agree with the run (its receipt's ``parameters``)
    that claims it: a federated update's round, base model and data (``cidflow.federated``),
    a trained model's spec (``cidflow.model``: model, seed, dataset), a metrics or predictions
    artifact's model and dataset. A receipt can name any CID; the artifact says what made it."""
    fed, spec = attrs.get("cidflow.federated"), attrs.get("cidflow.model")
    pairs = [(k, attrs.get(k)) for k in ("model", "dataset")]
    if isinstance(fed, dict) and "update_of" in fed:
        pairs = [
            (k, fed.get(f))
            for k, f in (("global_model", "update_of"), ("round", "round"), ("data", "data"))
        ]
    elif isinstance(spec, dict):
        pairs += [(k, spec.get(k)) for k in ("model", "seed", "dataset")]
    return all(parameters[k] == v for k, v in pairs if v is not None and k in parameters)


def verify_answer(
    store: ArtifactStore,
    coordinator: Coordinator,
    node: str,
    task: str,
    parameters: dict[str, Any],
    result: dict[str, Any],
    *,
    sent: float,
    private: Iterable[str] = (),
) -> Receipt:
    """Trust nothing in ``result``, the answer of ``node`` to a run of ``task`` with
    ``parameters`` started at ``sent`` (the coordinator's clock): its receipt must be stored
    intact, signed by the key ``node`` registered, for this task and these parameters
    (``private``: the parameters that named a ``private:NAME`` dataset, resolved on the node),
    claim exactly the outputs the answer names, and lie neither about when it ran (not ended
    in the future; started after the request unless served from the node's cache) nor about
    them (each output artifact's manifest is fetched and verified). Records the receipt in
    this home, where ``lineage`` orders it by when it was recorded."""
    from flows.receipts import load_receipt, record_receipt

    where = f"{task}/{node}"
    receipt_cid = result.get("receipt")
    if not isinstance(receipt_cid, str):
        raise RemoteRunError(f"{where} answered without a receipt")
    receipt = load_receipt(store, receipt_cid)  # fetched, re-hashed, signature checked
    expected = coordinator.node_id(node)
    if receipt.node != expected or result.get("node_id") != expected:
        raise RemoteRunError(f"{where}: the answer is not signed by {node}'s registered key")
    body = receipt.body
    skip = set(private)
    changed = sorted(
        k
        for k, v in parameters.items()
        if k in body["parameters"] and k not in skip and body["parameters"][k] != v
    )
    if changed:
        raise RemoteRunError(f"{where}: the receipt is for other parameters ({', '.join(changed)})")
    named = set(cids_in({k: v for k, v in result.items() if k != "receipt"}))
    if set(receipt.outputs) != named:
        raise RemoteRunError(f"{where}: the receipt's outputs are not the outputs it answered")
    try:
        started, ended = parse_time(body["started"]), parse_time(body["ended"])
    except ValueError:
        raise RemoteRunError(f"{where}: the receipt's times are not ISO times") from None
    now = time.time()
    if ended > now + CLOCK_SKEW or started > ended + 1:
        raise RemoteRunError(f"{where}: the receipt claims a time in the future")
    if not result.get("cached") and started < sent - CLOCK_SKEW:
        raise RemoteRunError(f"{where}: the receipt says it ran before it was asked to")
    for cid in sorted(named):
        art = store.open_artifact(cid)  # manifest fetched and verified
        art.metadata()
        if not _made_by(art.attrs, body["parameters"]):
            raise RemoteRunError(f"{where}: output {cid} was not made by this run")
    store.put_record(store.get_record(receipt_cid))
    record_receipt(store, receipt.cid)
    return receipt


def run_on_node(
    flow: str,
    node: str,
    parameters: dict[str, Any],
    *,
    timeout: float = 3600.0,
    poll_interval: float = 0.5,
    api_url: str | None = None,
    coordinator: Coordinator | None = None,
) -> dict[str, Any]:
    """Run deployment ``FLOW/NODE`` with ``parameters`` on the Prefect API at ``api_url``
    (default: the configured one), wait for it, and return its JSON result."""
    run_id = start_on_node(flow, node, parameters, api_url=api_url, coordinator=coordinator)
    states = wait_for_runs([run_id], timeout, poll_interval=poll_interval, api_url=api_url)
    name = f"{flow}/{node}"
    if run_id not in states:
        raise RemoteRunError(f"{name}: flow run {run_id} did not finish within {timeout:g}s")
    return run_result(run_id, states[run_id], name, api_url=api_url)


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


def _parse_result(markdown: str, where: str) -> dict[str, Any]:
    text = markdown.strip().removeprefix("```json").removesuffix("```").strip()
    try:
        doc = json.loads(text)
    except ValueError:
        raise RemoteRunError(f"{where}: the result is not JSON") from None
    if not isinstance(doc, dict):
        raise RemoteRunError(f"{where}: the result is not a JSON object")
    return doc
