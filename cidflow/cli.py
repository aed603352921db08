"""The ``cidflow`` command. Thin: parse, call the library, print.

Only click is imported at start; each command imports what it needs, so ``cidflow --help``
never loads numpy, zarr, torch or prefect. Errors print one line and exit 1 (2 for usage).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

if TYPE_CHECKING:
    from artifacts.store import ArtifactStore
    from registry.publish import RegistryLike

__all__ = ["cli", "main"]

_OUR_PACKAGES = {"artifacts", "registry", "flows", "node_agent", "cidflow"}


class _Group(click.Group):
    """Turns library errors into one clear line and a non-zero exit."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:  # bad arguments: one line too, with click's exit code
            click.echo(f"error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except (click.ClickException, click.exceptions.Exit, click.Abort, KeyboardInterrupt):
            raise
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            _fail(exc)
        except Exception as exc:
            if type(exc).__module__.split(".")[0] in _OUR_PACKAGES:
                _fail(exc)  # every error of ours is one line, whatever its base
            raise

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # definition order: the common path first


def _fail(exc: BaseException) -> NoReturn:
    message = str(exc) if not isinstance(exc, KeyError) else str(exc.args[0] if exc.args else exc)
    name = type(exc).__name__
    click.echo(f"error: {message}" if message else f"error: {name}", err=True)
    sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--home",
    type=click.Path(file_okay=False),
    envvar="CIDFLOW_HOME",
    help="cidflow home folder (default: $CIDFLOW_HOME or ~/.cidflow).",
)
@click.version_option(package_name="cidflow")
@click.pass_context
def cli(ctx: click.Context, home: str | None) -> None:
    """cidflow — content-addressed artifacts, flows and nodes for decentralized AI.

    \b
    Quick start:
      cidflow add data/          add a file or folder, print its CID
      cidflow show CID           kind, attributes, arrays
      cidflow get CID out/       export, byte-identical to what was added
      cidflow verify             re-hash everything stored
    """
    ctx.ensure_object(dict)
    ctx.obj["home"] = home


def _store(ctx: click.Context, *, read_only: bool = False) -> ArtifactStore:
    """The home's store: local blobs, or the cluster's once ``cluster up`` configured it."""
    from artifacts.cluster import open_store

    store: ArtifactStore = open_store(ctx.obj.get("home"), read_only=read_only)
    return store


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, sort_keys=True))


@contextmanager
def _progress(label: str, total: int | None, enabled: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (only on a terminal), yielding an ``advance(n)``."""
    if not enabled or not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def _tree_size(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            p = os.path.join(folder, name)
            if os.path.isfile(p) and not os.path.islink(p):
                total += os.path.getsize(p)
    return total


cid_argument = click.argument("cid", metavar="CID")
json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


@cli.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=True, file_okay=True))
@click.option("--attr", "attrs", multiple=True, metavar="KEY=VALUE", help="User attribute.")
@click.option("--no-pin", is_flag=True, help="Do not pin (gc may collect it after the grace).")
@json_option
@click.pass_context
def add(ctx: click.Context, path: str, attrs: tuple[str, ...], no_pin: bool, as_json: bool) -> None:
    """Add a file or folder; print the artifact CID.

    .npy files become zarr arrays; everything comes back byte-identical with `get`.
    """
    parsed = {}
    for item in attrs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--attr {item!r} is not KEY=VALUE")
        parsed[key] = value
    store = _store(ctx)
    skipped: list[str] = []
    started = time.perf_counter()
    with _progress(f"adding {os.path.basename(path)}", _tree_size(path), not as_json) as advance:
        cid = store.put_path(
            path,
            attrs=parsed or None,
            pin=not no_pin,
            progress=advance,
            on_skip=lambda p, why: skipped.append(f"{p}: {why}"),
        )
    seconds = time.perf_counter() - started
    art = store.open_artifact(cid)
    for line in skipped:
        click.echo(f"warning: skipped {line}", err=True)
    if as_json:
        _emit_json(
            {
                "cid": str(cid),
                "kind": art.kind,
                "files": art.attrs.get("files"),
                "bytes": art.attrs.get("bytes"),
                "skipped": skipped,
                "seconds": round(seconds, 3),
            }
        )
    else:
        click.echo(str(cid))
        click.echo(
            f"added {art.attrs.get('files')} file(s), {_size(art.attrs.get('bytes', 0))} "
            f"in {seconds:.2f}s",
            err=True,
        )


@cli.command()
@cid_argument
@json_option
@click.pass_context
def show(ctx: click.Context, cid: str, as_json: bool) -> None:
    """Show an artifact: kind, attributes, arrays and files."""
    art = _store(ctx, read_only=True).open_artifact(cid)
    arrays = {name: info.as_json() for name, info in art.arrays().items()}
    entries = art.files() if art.kind == "files" else []
    files: list[dict[str, Any]] = [{"path": f.path, "size": f.size} for f in entries]
    if as_json:
        out: dict[str, Any] = {"cid": str(art.cid), "kind": art.kind, "attrs": art.attrs}
        out["arrays"] = arrays
        out.update({"size": art.size, "files": files})
        _emit_json(out)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"[bold]{art.cid}[/bold]  kind=[cyan]{art.kind}[/cyan]  size={_size(art.size)}")
    for key, value in sorted(art.attrs.items()):
        console.print(f"  {key}: {json.dumps(value)}")
    if arrays:
        table = Table("array", "shape", "dtype", "chunks")
        for name, info in arrays.items():
            table.add_row(
                name, str(tuple(info["shape"])), info["dtype"], str(tuple(info["chunks"]))
            )
        console.print(table)
    if files:
        table = Table("file", "size")
        for f in files[:50]:
            table.add_row(f["path"], _size(f["size"]))
        if len(files) > 50:
            table.add_row(f"... {len(files) - 50} more", "")
        console.print(table)


def _exists(ctx: click.Context) -> bool:
    """Whether the home exists (read commands then open it read-only)."""
    return _home(ctx).is_dir()


@cli.command()
@cid_argument
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Merge into a non-empty OUT, replacing files.")
@click.pass_context
def get(ctx: click.Context, cid: str, out: str, force: bool) -> None:
    """Export an artifact into folder OUT (nothing is written if any blob is bad)."""
    store = _store(ctx, read_only=True)
    art = store.open_artifact(cid)
    total = art.attrs.get("bytes") if art.kind == "files" else None  # bytes to be written
    total = total if isinstance(total, int) else None
    with _progress(f"exporting {str(art.cid)[:16]}…", total, True) as advance:
        paths = art.export(out, overwrite=force, progress=advance)
    click.echo(f"wrote {len(paths)} file(s) to {out}", err=True)


@cli.command("ls")
@json_option
@click.pass_context
def ls(ctx: click.Context, as_json: bool) -> None:
    """List the artifacts written to this home, newest first."""
    items = _store(ctx, read_only=True).list() if _exists(ctx) else []
    if as_json:
        _emit_json([a.as_json() for a in items])
        return
    for a in items:
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(a.created))
        source = os.path.basename(a.source) if os.sep in a.source else a.source
        pinned = "pinned" if a.pinned else "-"
        click.echo(f"{a.cid}  {a.kind:<10} {_size(a.size):>10}  {pinned:<6}  {created}  {source}")
    if not items:
        click.echo("no artifacts yet: cidflow add PATH", err=True)


@cli.command()
@click.argument("cids", nargs=-1, metavar="[CID]...")
@json_option
@click.pass_context
def verify(ctx: click.Context, cids: tuple[str, ...], as_json: bool) -> None:
    """Re-hash stored data. Exit 0 when intact, 1 when anything is missing or corrupt."""
    from artifacts.cid import as_cid

    parsed = [as_cid(c) for c in cids]  # a malformed CID is an error, not a problem report
    store = _store(ctx, read_only=True)
    with _progress("verifying", None, not as_json) as advance:
        report = store.verify(parsed or None, progress=advance)
    if as_json:
        _emit_json(
            {
                "ok": report.ok,
                "checked_blobs": report.checked_blobs,
                "checked_bytes": report.checked_bytes,
                "problems": [{"cid": c, "error": e} for c, e in report.problems],
            }
        )
    else:
        for cid, error in report.problems:
            click.echo(f"BAD {cid}: {error}")
        status = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        click.echo(
            f"{status}: checked {report.checked_blobs} blob(s), {_size(report.checked_bytes)}",
            err=True,
        )
    if not report.ok:
        sys.exit(1)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Report what would be deleted; delete nothing.")
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=None,
    help="Keep anything written in the last SECONDS (default: CIDFLOW_GC_GRACE_SECONDS, 3600).",
)
@json_option
@click.pass_context
def gc(ctx: click.Context, dry_run: bool, grace: float | None, as_json: bool) -> None:
    """Delete blobs that no pinned or recent artifact needs."""
    report = _store(ctx).gc(grace=grace, dry_run=dry_run)
    if as_json:
        _emit_json(
            {
                "dry_run": report.dry_run,
                "removed_blobs": report.removed_blobs,
                "freed_bytes": report.freed_bytes,
                "kept_blobs": report.kept_blobs,
                "forgotten_artifacts": list(report.forgotten_artifacts),
                "removed_temp": report.removed_temp,
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"{verb} {report.removed_blobs} blob(s) ({_size(report.freed_bytes)}), "
        f"kept {report.kept_blobs}, forgot {len(report.forgotten_artifacts)} artifact(s)"
    )


@cli.command()
@json_option
@click.pass_context
def stats(ctx: click.Context, as_json: bool) -> None:
    """Blobs, bytes and the deduplication ratio of this home."""
    s = _store(ctx, read_only=True).stats() if _exists(ctx) else None
    data = (
        s.as_json()
        if s
        else {
            "artifacts": 0,
            "pinned": 0,
            "blobs": 0,
            "stored_bytes": 0,
            "logical_bytes": 0,
            "dedup_ratio": 1.0,
        }
    )
    if as_json:
        _emit_json(data)
        return
    click.echo(
        f"{data['artifacts']} artifact(s) ({data['pinned']} pinned), {data['blobs']} blob(s), "
        f"stored {_size(data['stored_bytes'])}, logical {_size(data['logical_bytes'])}, "
        f"dedup x{data['dedup_ratio']:.2f}"
    )


@cli.command()
@cid_argument
@click.pass_context
def pin(ctx: click.Context, cid: str) -> None:
    """Pin an artifact: gc keeps it and everything it needs."""
    _store(ctx).pin(cid)
    click.echo(f"pinned {cid}")


@cli.command()
@cid_argument
@click.pass_context
def unpin(ctx: click.Context, cid: str) -> None:
    """Unpin an artifact (gc may collect it once past the grace period)."""
    from artifacts.cid import as_cid

    removed = _store(ctx).unpin(as_cid(cid))
    click.echo(f"unpinned {cid}" if removed else f"{cid} was not pinned")


def main() -> None:
    cli(prog_name="cidflow")


# -- shared by the registry and flow commands ------------------------------------------------
registry_option = click.option(
    "--registry",
    "target",
    envvar="CIDFLOW_REGISTRY",
    metavar="URL_OR_PATH",
    help="Registry service URL, database URL or SQLite file (default: HOME/registry.db).",
)


def _home(ctx: click.Context) -> Path:
    from artifacts.settings import ArtifactSettings

    home = ctx.obj.get("home")
    return Path(home).expanduser().absolute() if home else ArtifactSettings().home.expanduser()


def _registry(ctx: click.Context, target: str | None) -> RegistryLike:
    from registry.local import open_target

    registry: RegistryLike = open_target(target, _home(ctx))
    return registry


from cidflow import cli_registry as _cli_registry  # noqa: E402  (registers the registry commands)

del _cli_registry
from cidflow import cli_flows as _cli_flows  # noqa: E402  (registers the flow commands)

del _cli_flows
from cidflow import cli_code as _cli_code  # noqa: E402  (registers `code`)

del _cli_code
from cidflow import cli_hf as _cli_hf  # noqa: E402  (registers the Hugging Face commands)

del _cli_hf
from cidflow import cli_nodes as _cli_nodes  # noqa: E402  (registers `nodes`)

del _cli_nodes
from cidflow import cli_node as _cli_node  # noqa: E402  (registers node, cluster and store)

del _cli_node
