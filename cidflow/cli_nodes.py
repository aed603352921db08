"""``cidflow nodes``: the compute nodes announced in a registry, live or stale. Registered on
the main group by :mod:`cidflow.cli`."""

from __future__ import annotations

import time
from typing import Any

import click

from cidflow.cli import _emit_json, _registry, _size, cli, json_option, registry_option

SHORT_ID = 12


def _hardware(hw: dict[str, Any]) -> str:
    """``8 CPU, 31.2 GiB, 1 GPU`` from a node's hardware report (``?`` where unknown)."""
    cpus, memory, gpus = hw.get("cpu_count"), hw.get("memory_bytes"), hw.get("gpus")
    parts = [f"{cpus} CPU" if isinstance(cpus, int) and not isinstance(cpus, bool) else "? CPU"]
    parts.append(_size(memory) if isinstance(memory, int) and not isinstance(memory, bool) else "?")
    parts.append(f"{len(gpus)} GPU" if isinstance(gpus, list) else "? GPU")
    return ", ".join(parts)


def _age(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


@cli.command()
@registry_option
@click.option(
    "--stale-after",
    type=click.FloatRange(min=0, min_open=True),
    default=180.0,
    show_default=True,
    metavar="SECONDS",
    help="A node whose last heartbeat is older is stale.",
)
@click.option(
    "--probe/--no-probe",
    default=True,
    show_default=True,
    help="Also ask each fresh node's endpoint (GET /v1/info) whether it is that node.",
)
@json_option
@click.pass_context
def nodes(
    ctx: click.Context, target: str | None, stale_after: float, probe: bool, as_json: bool
) -> None:
    """List the nodes announced in the registry, with live/stale status.

    A node is live when its last signed heartbeat is recent and, with --probe, its endpoint
    answers for its node id."""
    from registry.nodes import check_nodes

    found = _registry(ctx, target).nodes()  # type: ignore[attr-defined]
    now = time.time()
    checked = check_nodes(found, now=now, stale_after=stale_after, probe=probe)
    if as_json:
        _emit_json(
            [{**info.as_json(), "status": status, "probe": ok} for info, status, ok in checked]
        )
        return
    if not checked:
        click.echo("no nodes announced", err=True)
        return
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table("name", "node", "endpoint", "capacity", "used", "hardware", "heartbeat", "status")
    for info, status, probed in checked:
        capacity = "unlimited" if info.capacity is None else _size(info.capacity)
        table.add_row(
            info.name or "-",
            escape(info.node_id[:SHORT_ID]) + "…",
            escape(info.endpoint),  # (an IPv6 endpoint's [::1] is not markup)
            capacity,
            "-" if info.used is None else _size(info.used),
            _hardware(info.hardware),
            f"{info.timestamp} ({_age(now - info.heartbeat)})",
            "[green]live[/green]"
            if status == "live"
            else "[red]stale[/red]" + (" (probe failed)" if probed is False else ""),
        )
    Console().print(table)
