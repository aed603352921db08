"""``cidflow hf``: Hugging Face repos in and out (registered on the main group by
:mod:`cidflow.cli`)."""

from __future__ import annotations

import time

import click

from cidflow.cli import _emit_json, _progress, _size, _store, _tree_size, cli, registry_option
from cidflow.cli_flows import _resolve


@cli.group("hf")
def hf_group() -> None:
    """Hugging Face model repos <-> artifacts (tensors as zarr arrays, files byte-identical).

    Offline use: set HF_HUB_OFFLINE=1 and cidflow reads only the hub cache (HF_HUB_CACHE or
    HF_HOME/hub); a local folder works anywhere.
    """


@hf_group.command("import")
@click.argument("source", metavar="REPO_ID_OR_DIR")
@click.option("--revision", help="Branch, tag or commit of a repo id (not for a folder).")
@click.option("--dataset", "is_dataset", is_flag=True, help="A dataset repo, not a model repo.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.pass_context
def hf_import(
    ctx: click.Context, source: str, revision: str | None, is_dataset: bool, as_json: bool
) -> None:
    """Import a model repo (hub cache or local folder); print the artifact CID."""
    from flows.hf import HF_ATTR, import_hf, resolve_hub_source

    repo_type = "dataset" if is_dataset else "model"
    folder = resolve_hub_source(source, revision, repo_type=repo_type)
    store = _store(ctx)
    skipped: list[str] = []
    started = time.perf_counter()
    total = _tree_size(str(folder.path))
    with _progress(f"importing {source}", total, not as_json) as advance:
        cid = import_hf(
            store, folder, repo_type=repo_type, progress=advance,
            on_skip=lambda p, why: skipped.append(f"{p}: {why}"),
        )  # fmt: skip
    seconds = time.perf_counter() - started
    art = store.open_artifact(cid)
    tensors = sum(1 for info in art.arrays().values() if "tensor" in info.attributes.get(
        "cidflow.array", {}))  # fmt: skip
    for line in skipped:
        click.echo(f"warning: skipped {line}", err=True)
    if as_json:
        _emit_json({
            "cid": str(cid), "files": art.attrs.get("files"), "bytes": art.attrs.get("bytes"),
            "tensors": tensors, "hf": art.attrs.get(HF_ATTR), "seconds": round(seconds, 3),
        })  # fmt: skip
        return
    click.echo(str(cid))
    click.echo(
        f"imported {art.attrs.get('files')} file(s), {tensors} tensor(s), "
        f"{_size(art.attrs.get('bytes', 0))} in {seconds:.2f}s",
        err=True,
    )


@hf_group.command("export")
@click.argument("ref_or_cid", metavar="REF_OR_CID")
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Merge into a non-empty OUT, replacing files.")
@registry_option
@click.pass_context
def hf_export(
    ctx: click.Context, ref_or_cid: str, out: str, force: bool, target: str | None
) -> None:
    """Write an imported repo into folder OUT, every file byte-identical to the original."""
    from flows.hf import export_hf

    cid, _ = _resolve(ctx, ref_or_cid, target)
    store = _store(ctx, read_only=True)
    art = store.open_artifact(cid)
    with _progress(f"exporting {cid[:16]}…", art.size, True) as advance:
        written = export_hf(store, cid, out, overwrite=force, progress=advance)
    click.echo(f"wrote {len(written)} file(s) to {out}", err=True)


@hf_group.command("push")
@click.argument("ref_or_cid", metavar="REF_OR_CID")
@click.argument("repo_id", metavar="REPO_ID")
@click.option("--revision", help="Branch to push to (default: main).")
@click.option("--message", help="Commit message.")
@registry_option
@click.pass_context
def hf_push(
    ctx: click.Context, ref_or_cid: str, repo_id: str, revision: str | None,
    message: str | None, target: str | None,
) -> None:  # fmt: skip
    """Upload an imported repo to the Hugging Face Hub (needs network and HF_TOKEN)."""
    from flows.hf import push_hf

    cid, _ = _resolve(ctx, ref_or_cid, target)
    url = push_hf(_store(ctx, read_only=True), cid, repo_id, revision=revision, message=message)
    click.echo(url)
