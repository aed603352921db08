"""Flow commands of the ``cidflow`` CLI (registered on the main group by :mod:`cidflow.cli`)."""

from __future__ import annotations

import json
from typing import Any

import click

from cidflow.cli import _emit_json, _store, cli
from cidflow.cli_registry import _registry, registry_option


def _resolve(ctx: click.Context, ref_or_cid: str, target: str | None) -> tuple[str, str | None]:
    """(CID, receipt CID or None) of a registry reference or a plain CID."""
    from artifacts.cid import as_cid
    from artifacts.errors import InvalidCIDError

    try:
        return str(as_cid(ref_or_cid)), None
    except InvalidCIDError:
        info = _registry(ctx, target).resolve(ref_or_cid)
        return info.cid, info.receipt


def _print_tree(tree: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.tree import Tree

    def label(node: dict[str, Any]) -> str:
        return f"[bold]{node['cid']}[/bold]"

    def add(branch: Tree, node: dict[str, Any]) -> None:
        run = node["produced_by"]
        if run is None:
            branch.add("[dim]source (no receipt: added or published from outside a flow)[/dim]")
            return
        params = json.dumps(run["parameters"], sort_keys=True)
        step = branch.add(
            f"[cyan]{run['task']}[/cyan] {params}  [dim]receipt {run['receipt'][:20]}… "
            f"on {run['node']} at {run['ended']}[/dim]"
        )
        for child in run["inputs"]:
            add(step.add(label(child)), child)

    root = Tree(label(tree))
    add(root, tree)
    Console().print(root)


@cli.command()
@click.argument("ref_or_cid", metavar="REF_OR_CID")
@click.option("--dot", "as_dot", is_flag=True, help="Print Graphviz DOT.")
@registry_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def lineage(
    ctx: click.Context, ref_or_cid: str, as_dot: bool, target: str | None, as_json: bool
) -> None:
    """Show how an artifact was made: the signed receipts back to its source data."""
    from flows.lineage import lineage as walk
    from flows.lineage import to_dot

    cid, receipt = _resolve(ctx, ref_or_cid, target)
    tree = walk(_store(ctx, read_only=True), cid, receipt=receipt)
    if as_json:
        _emit_json(tree)
    elif as_dot:
        click.echo(to_dot(tree), nl=False)
    else:
        _print_tree(tree)
