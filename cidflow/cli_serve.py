"""``cidflow registry serve``: run the registry service (FastAPI + uvicorn) on a database.

Registered on the ``registry`` group when :mod:`cidflow.cli_registry` imports this module.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

import click

from cidflow.cli import _home
from cidflow.cli_registry import registry_group

__all__ = ["load_or_create_token", "registry_serve"]

TOKEN_FILE = "registry.token"


def _read_token(path: Path) -> str:
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise FileNotFoundError(f"token file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PermissionError(f"{path} is readable by others; run: chmod 600 {path}")
    if not text:
        raise ValueError(f"token file {path} is empty")
    return text


def load_or_create_token(home: Path, token_file: str | None) -> tuple[str, Path]:
    """The append token and where it lives: ``token_file``, else ``HOME/registry.token``
    (created on first start with a fresh random token, mode 0600)."""
    if token_file is not None:
        path = Path(token_file).expanduser().absolute()
        return _read_token(path), path
    path = home / TOKEN_FILE
    if path.exists():
        return _read_token(path), path
    home.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)
    return token, path


@registry_group.command("serve")
@click.option(
    "--db",
    default=None,
    metavar="URL_OR_PATH",
    help="Database URL or SQLite file (default: HOME/registry.db).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8750, show_default=True)
@click.option(
    "--token-file",
    type=click.Path(dir_okay=False),
    default=None,
    help="File holding the append token (default: HOME/registry.token, made on first start).",
)
@click.option("--print-token", is_flag=True, help="Also print the token itself.")
@click.option(
    "--allow-host",
    "allow_hosts",
    multiple=True,
    metavar="NAME",
    help="Another host name clients may use in URLs (repeatable; loopback is always allowed).",
)
@click.option("--ssl-certfile", type=click.Path(exists=True, dir_okay=False), default=None)
@click.option("--ssl-keyfile", type=click.Path(exists=True, dir_okay=False), default=None)
@click.pass_context
def registry_serve(
    ctx: click.Context,
    db: str | None,
    host: str,
    port: int,
    token_file: str | None,
    print_token: bool,
    allow_hosts: tuple[str, ...],
    ssl_certfile: str | None,
    ssl_keyfile: str | None,
) -> None:
    """Serve the registry over HTTP: reads are open, appends need the bearer token."""
    import uvicorn

    from registry.local import open_registry
    from registry.service import create_app

    home = _home(ctx)
    token, token_path = load_or_create_token(home, token_file)
    registry = open_registry(db, home)
    app = create_app(registry, token=token, host=host, allowed_hosts=allow_hosts)
    scheme = "https" if ssl_certfile else "http"
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"registry: {registry.display_url}", err=True)  # never the password
    click.echo(f"append token: in {token_path}", err=True)
    if print_token:
        click.echo(token)
    if registry.identity is None:
        click.echo("note: this database belongs to another registry key: read-only", err=True)
    if scheme == "http" and host not in ("127.0.0.1", "localhost", "::1"):
        click.echo("warning: plain HTTP off loopback sends the token in clear text", err=True)
    click.echo(f"serving on {scheme}://{shown}:{port}/v1 (OpenAPI at /openapi.json)", err=True)
    try:
        uvicorn.run(
            app,
            host=host,
            port=port,
            log_level="info",
            server_header=False,
            proxy_headers=False,
            ssl_certfile=ssl_certfile,
            ssl_keyfile=ssl_keyfile,
        )
    finally:
        registry.close()
