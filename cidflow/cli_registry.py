"""Registry commands of the ``cidflow`` CLI: keys, publish, pull, info, versions, search, yank,
log, and ``registry verify/export/sync``. Registered on the main group by :mod:`cidflow.cli`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from cidflow.cli import (
    _emit_json,
    _home,
    _progress,
    _registry,
    _size,
    _store,
    cli,
    json_option,
    registry_option,
)

if TYPE_CHECKING:
    pass

at_option = click.option(
    "--at", type=click.IntRange(min=0), default=None, help="Answer as of registry version SEQ."
)


def _identity(ctx: click.Context, name: str | None = None) -> Any:
    from registry.identity import Identity
    from registry.settings import RegistrySettings

    return Identity.load(_home(ctx), name or RegistrySettings().key)


def _print_info(info: Any) -> None:
    price = info.price
    cost = "free" if price["amount"] in ("0", "0.0") else f"{price['amount']} {price['currency']}"
    click.echo(f"{info.name}@{info.version}{'  (yanked)' if info.yanked else ''}")
    click.echo(f"  cid:        {info.cid}")
    click.echo(f"  kind:       {info.kind}   size: {_size(info.size)}   license: {info.license}")
    click.echo(f"  price:      {cost}")
    click.echo(f"  publisher:  {info.publisher}   published: {info.timestamp} (seq {info.seq})")
    if info.description:
        click.echo(f"  about:      {info.description}")
    if info.tags:
        click.echo(f"  tags:       {', '.join(info.tags)}")
    if info.receipt:
        click.echo(f"  receipt:    {info.receipt}")


# -- keys ---------------------------------------------------------------------------------------


@cli.group()
def key() -> None:
    """Publisher keys (ed25519), kept in HOME/keys with mode 0600."""


@key.command("new")
@click.option("--name", default="default", show_default=True, help="Key name.")
@click.option("--force", is_flag=True, help="Replace an existing key of that name.")
@json_option
@click.pass_context
def key_new(ctx: click.Context, name: str, force: bool, as_json: bool) -> None:
    """Create a signing key; print its public part (never the private key)."""
    from registry.identity import Identity

    identity = Identity.create(_home(ctx), name, overwrite=force)
    _show_key(identity, name, as_json)


@key.command("show")
@click.option("--name", default=None, help="Key name (default: CIDFLOW_KEY or 'default').")
@json_option
@click.pass_context
def key_show(ctx: click.Context, name: str | None, as_json: bool) -> None:
    """Print the publisher id and public key."""
    _show_key(_identity(ctx, name), name or "default", as_json)


def _show_key(identity: Any, name: str, as_json: bool) -> None:
    if as_json:
        _emit_json({"name": name, "publisher": identity.id, "public_key": identity.public_key})
    else:
        click.echo(f"{name}: publisher {identity.id}\n  public key {identity.public_key}")


# -- publish / pull -------------------------------------------------------------------------------


@cli.command()
@click.argument("source", metavar="PATH_OR_CID")
@click.option("--name", required=True, metavar="NS/NAME", help="Asset name, e.g. alice/digits.")
@click.option("--version", "version", required=True, metavar="V", help="Semver, e.g. 1.0.0.")
@click.option("--license", "license_", default="NOASSERTION", show_default=True, help="SPDX id.")
@click.option("--price", default=None, metavar="AMOUNT [CUR]", help="e.g. '12.50 EUR' (free).")
@click.option("--description", default="", help="What it is (at most 4096 characters).")
@click.option("--tag", "tags", multiple=True, help="A tag (repeatable).")
@click.option("--receipt", default=None, metavar="CID", help="Receipt of the run that made it.")
@click.option("--key", "key_name", default=None, help="Publisher key name.")
@registry_option
@json_option
@click.pass_context
def publish(
    ctx: click.Context,
    source: str,
    name: str,
    version: str,
    license_: str,
    price: str | None,
    description: str,
    tags: tuple[str, ...],
    receipt: str | None,
    key_name: str | None,
    target: str | None,
    as_json: bool,
) -> None:
    """Publish a path or a stored artifact as NS/NAME@VERSION, signed with your key."""
    from registry.publish import parse_price
    from registry.publish import publish as do_publish

    identity = _identity(ctx, key_name)
    registry = _registry(ctx, target)
    if receipt is not None:
        from flows.receipts import load_receipt  # a receipt must verify and name what it made

        made = load_receipt(_store(ctx, read_only=True), receipt)
        if not Path(source).exists() and source not in made.outputs:
            raise ValueError(f"receipt {receipt} did not produce {source}")
    if source.split(":", 1)[0] in ("sklearn", "dvc") and not Path(source).exists():
        from flows.datasets import put_dataset  # a dataset source: load it, store it as arrays

        source = str(put_dataset(_store(ctx), source))
    with _progress("adding", None, not as_json) as advance:
        result, body = do_publish(
            _store(ctx), registry, identity, source, name=name, version=version,
            license=license_, price=parse_price(price), description=description, tags=tags,
            receipt=receipt, progress=advance,
        )  # fmt: skip
    out = {"name": body["asset"], "version": body["version"], "cid": body["cid"]}
    out.update({"seq": result.seq, "existing": result.existing, "publisher": identity.id})
    if as_json:
        _emit_json(out)
    else:
        note = " (already published: nothing changed)" if result.existing else ""
        click.echo(
            f"published {out['name']}@{out['version']} -> {out['cid']} (seq {result.seq}){note}"
        )


@cli.command()
@click.argument("ref", metavar="NS/NAME[@V]")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Merge into a non-empty OUT.")
@at_option
@registry_option
@click.pass_context
def pull(
    ctx: click.Context, ref: str, out: str, force: bool, at: int | None, target: str | None
) -> None:
    """Resolve REF, verify its blobs and export it into folder OUT."""
    from registry.publish import pull as do_pull

    store = _store(ctx, read_only=True)
    with _progress("pulling", None, True) as advance:
        info = do_pull(
            store, _registry(ctx, target), ref, out, at=at, overwrite=force, progress=advance
        )
    click.echo(f"pulled {info.name}@{info.version} ({info.cid}) into {out}", err=True)


# -- queries --------------------------------------------------------------------------------------


@cli.command()
@click.argument("ref", metavar="NS/NAME[@V]")
@click.option("--pre", is_flag=True, help="Let @latest and ranges pick pre-releases.")
@at_option
@registry_option
@json_option
@click.pass_context
def info(
    ctx: click.Context, ref: str, pre: bool, at: int | None, target: str | None, as_json: bool
) -> None:
    """Show one version: CID, kind, licence, price, publisher."""
    found = _registry(ctx, target).resolve(ref, at=at, prerelease=pre)
    if as_json:
        _emit_json(found.as_json())
    else:
        _print_info(found)


@cli.command()
@click.argument("name", metavar="NS/NAME")
@at_option
@registry_option
@json_option
@click.pass_context
def versions(
    ctx: click.Context, name: str, at: int | None, target: str | None, as_json: bool
) -> None:
    """List every version of NS/NAME, highest first."""
    found = _registry(ctx, target).versions(name, at=at)  # type: ignore[attr-defined]
    if as_json:
        _emit_json([v.as_json() for v in found])
        return
    for v in found:
        flag = "  yanked" if v.yanked else ""
        click.echo(f"{v.version:<16} {v.cid}  {v.timestamp}  seq {v.seq}{flag}")


@cli.command()
@click.argument("text", default="")
@click.option("--kind", default=None, help="Only this artifact kind.")
@click.option("--license", "license_", default=None, help="Only this licence.")
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--offset", type=click.IntRange(min=0), default=0)
@registry_option
@json_option
@click.pass_context
def search(
    ctx: click.Context,
    text: str,
    kind: str | None,
    license_: str | None,
    limit: int,
    offset: int,
    target: str | None,
    as_json: bool,
) -> None:
    """Search names, descriptions and tags (latest version of each asset)."""
    found = _registry(ctx, target).search(  # type: ignore[attr-defined]
        text, kind=kind, license=license_, limit=limit, offset=offset
    )
    if as_json:
        _emit_json([v.as_json() for v in found])
        return
    for v in found:
        about = f"  {v.description[:60]}" if v.description else ""
        click.echo(f"{v.name}@{v.version}  [{v.kind}, {v.license}]{about}")
    if not found:
        click.echo("no match", err=True)


@cli.command()
@click.argument("ref", metavar="NS/NAME@V")
@click.option("--reason", default="", help="Why (shown to users).")
@click.option("--key", "key_name", default=None, help="Publisher key name.")
@registry_option
@json_option
@click.pass_context
def yank(
    ctx: click.Context,
    ref: str,
    reason: str,
    key_name: str | None,
    target: str | None,
    as_json: bool,
) -> None:
    """Mark a version yanked: @latest skips it; it still resolves exactly and is never deleted."""
    from registry.entries import Signed, make_body
    from registry.errors import InvalidEntryError
    from registry.names import parse_ref, parse_version

    parsed = parse_ref(ref)
    if parsed.spec == "latest":
        raise InvalidEntryError("yank needs an exact version: NS/NAME@1.2.3")
    version = str(parse_version(parsed.spec))
    identity = _identity(ctx, key_name)
    body = make_body("yank", identity, asset=str(parsed.asset), version=version, reason=reason)
    result = _registry(ctx, target).append(Signed.sign(body, identity))
    if as_json:
        _emit_json({"name": str(parsed.asset), "version": version, "seq": result.seq})
    else:
        click.echo(f"yanked {parsed.asset}@{version} (seq {result.seq})")


def _namespace_entry(
    ctx: click.Context, kind: str, namespace: str, key: str, target: str | None
) -> Any:
    from registry.entries import Signed, make_body
    from registry.names import parse_name

    ns = parse_name(f"{namespace}/x").namespace
    identity = _identity(ctx)
    field = "grantee" if kind == "grant" else "to"
    body = make_body(kind, identity, namespace=ns, **{field: key})
    return _registry(ctx, target).append(Signed.sign(body, identity))


@cli.command()
@click.argument("namespace")
@click.argument("public_key", metavar="PUBLIC_KEY")
@registry_option
@click.pass_context
def grant(ctx: click.Context, namespace: str, public_key: str, target: str | None) -> None:
    """Let another key (its public key, from `cidflow key show`) publish in NAMESPACE."""
    result = _namespace_entry(ctx, "grant", namespace, public_key, target)
    click.echo(f"granted {namespace} to {public_key[:16]}… (seq {result.seq})")


@cli.command()
@click.argument("namespace")
@click.argument("public_key", metavar="PUBLIC_KEY")
@click.option("--yes", is_flag=True, help="Confirm: you lose the namespace.")
@registry_option
@click.pass_context
def transfer(
    ctx: click.Context, namespace: str, public_key: str, yes: bool, target: str | None
) -> None:
    """Give NAMESPACE to another key (irreversible for you; grants are cleared)."""
    if not yes:
        raise ValueError("transfer is irreversible: add --yes to confirm")
    result = _namespace_entry(ctx, "transfer", namespace, public_key, target)
    click.echo(f"transferred {namespace} to {public_key[:16]}… (seq {result.seq})")


@cli.command("log")
@click.option("--since", type=click.IntRange(min=0), default=0, help="Entries after this seq.")
@click.option("--limit", type=click.IntRange(1, 100000), default=None)
@registry_option
@json_option
@click.pass_context
def log_(
    ctx: click.Context, since: int, limit: int | None, target: str | None, as_json: bool
) -> None:
    """The registry's signed log, oldest first."""
    from registry.identity import fingerprint

    records = _registry(ctx, target).log(since, limit)  # type: ignore[attr-defined]
    for record in records:
        if as_json:
            _emit_json(record.as_json())
            continue
        b = record.entry.body
        what = b.get("asset") or b.get("namespace") or b.get("node_id") or ""
        ver = f"@{b['version']}" if "version" in b else ""
        by = fingerprint(b["key"])
        click.echo(f"{record.seq:>6} {b['timestamp']} {b['type']:<8} {what}{ver}  by {by}")


# -- registry maintenance -----------------------------------------------------------------------


@cli.group("registry")
def registry_group() -> None:
    """Verify, export, mirror and serve a registry."""


@registry_group.command("verify")
@registry_option
@json_option
@click.pass_context
def registry_verify(ctx: click.Context, target: str | None, as_json: bool) -> None:
    """Check every signature, the hash chain, the rules and the head. Exit 1 on any fault."""
    from registry.errors import LogIntegrityError

    reg = _registry(ctx, target)
    try:
        head = reg.verify()  # type: ignore[attr-defined]
    except LogIntegrityError as exc:
        if as_json:
            _emit_json({"ok": False, "seq": exc.seq, "error": str(exc)})
        else:
            click.echo(f"BAD: {exc}")
        sys.exit(1)
    if as_json:
        _emit_json({"ok": True, "seq": head.seq, "hash": head.hash})
    else:
        click.echo(f"ok: {head.seq} entries, head {head.hash or '-'} signed by the registry key")


@registry_group.command("export")
@click.argument("file", type=click.Path(dir_okay=False))
@registry_option
@click.pass_context
def registry_export(ctx: click.Context, file: str, target: str | None) -> None:
    """Write the whole signed log to FILE (JSON lines) for mirrors."""
    count = _registry(ctx, target).export(file)  # type: ignore[attr-defined]
    click.echo(f"exported {count} entries to {file}")


@registry_group.command("sync")
@click.argument("source", metavar="SOURCE")
@click.option(
    "--trust", "trusted_key", default=None, help="Registry key the source must sign with."
)
@registry_option
@click.pass_context
def registry_sync(
    ctx: click.Context, source: str, trusted_key: str | None, target: str | None
) -> None:
    """Mirror SOURCE (an export file, a database or a registry URL) into this registry.

    Only entries past our head are added; a fork or a rollback is refused."""
    from registry.registry import read_export

    mirror = _registry(ctx, target)
    if Path(source).is_file() and not source.endswith(".db"):
        head, records = read_export(source)
    else:
        src = _registry(ctx, source)
        head = src.head()  # type: ignore[attr-defined]
        records = src.log(0, head.seq)  # type: ignore[attr-defined]
    added = mirror.sync(records, head, trusted_key=trusted_key)  # type: ignore[attr-defined]
    click.echo(f"synced: {added} new entries, now at seq {head.seq}")


from cidflow import cli_serve  # noqa: E402  (registers `registry serve`)

del cli_serve
