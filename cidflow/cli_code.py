"""``cidflow code``: code artifacts (user model code pinned by a CID) and the home's
allow-list of trusted code (see :mod:`flows.code`)."""

from __future__ import annotations

from pathlib import Path

import click

from cidflow.cli import _emit_json, _home, _store, cli


@cli.group("code")
def code_group() -> None:
    """User model code as artifacts, and which code this home trusts to build models.

    \b
    A model artifact may name a zoo model (logreg, mlp, cnn) or module:factory in a code
    artifact; code is built only when you trust it (--trust-code CID for one run, or
    cidflow code trust CID for this home). Nothing else is ever imported.
    """


@code_group.command("add")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def code_add(ctx: click.Context, folder: Path, as_json: bool) -> None:
    """Store FOLDER (.py files and sub-packages only) as a code artifact; print its CID.

    The artifact is pinned; train with it by `cidflow train --code CID --model module:factory`.
    """
    from flows.code import code_files, put_code

    store = _store(ctx)
    cid = put_code(store, folder)
    files = code_files(store, cid)
    if as_json:
        _emit_json({"cid": cid, "files": files, "bytes": store.open_artifact(cid).attrs["bytes"]})
    else:
        click.echo(cid)


@code_group.command("trust")
@click.argument("cid", metavar="CODE_CID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def code_trust(ctx: click.Context, cid: str, as_json: bool) -> None:
    """Add CODE_CID to this home's allow-list (HOME/trusted-code.json): models naming it are
    built without --trust-code. A CID in the store must be a code artifact."""
    from artifacts.cid import as_cid
    from flows.code import code_files, trust_code

    home = _home(ctx)
    cid = str(as_cid(cid))
    store = _store(ctx, read_only=True) if home.is_dir() else None
    if store is not None and store.blobs.has(cid):  # absent: it may come later, pinned by CID
        code_files(store, cid)
    changed = trust_code(home, cid)
    if as_json:
        _emit_json({"cid": cid, "trusted": True, "changed": changed})
    else:
        click.echo(f"trusted {cid}" if changed else f"{cid} was already trusted")


@code_group.command("untrust")
@click.argument("cid", metavar="CODE_CID")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def code_untrust(ctx: click.Context, cid: str, as_json: bool) -> None:
    """Take CODE_CID off this home's allow-list."""
    from flows.code import untrust_code

    changed = untrust_code(_home(ctx), cid)
    if as_json:
        _emit_json({"cid": cid, "trusted": False, "changed": changed})
    else:
        click.echo(f"untrusted {cid}" if changed else f"{cid} was not trusted")


@code_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def code_list(ctx: click.Context, as_json: bool) -> None:
    """The code CIDs this home trusts, and whether each is in the store."""
    from flows.code import read_trusted

    home = _home(ctx)
    cids = sorted(read_trusted(home))
    store = _store(ctx, read_only=True) if home.is_dir() and cids else None
    rows = [{"cid": c, "present": bool(store and store.blobs.has(c))} for c in cids]
    if as_json:
        _emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['cid']}  {'present' if row['present'] else 'not in this store'}")
