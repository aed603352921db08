"""Hugging Face repos <-> cidflow artifacts.

:func:`import_hf` turns a model repo (safetensors weights, config and tokenizer files, anything
else in it) into a ``files`` artifact: every ``.safetensors`` tensor becomes a zarr array, so two
models that share tensors share chunks, and every other file is stored as bytes.
:func:`export_hf` writes the repo back, every file byte-identical (same sha256) to the original.

A source is a local folder (a ``save_pretrained`` output, a ``local_dir`` download, or a
snapshot folder inside the hub cache) or a repo id (``org/name``) resolved through
``huggingface_hub.snapshot_download`` against the hub cache. The environment is read when a
function runs, never at import: ``HF_HUB_OFFLINE`` (only the cache is used; a repo that is not
in it is a clear error), ``HF_HUB_CACHE`` / ``HF_HOME`` (where the cache is).

Nothing is ever unpickled: a ``pytorch_model.bin`` is stored and exported as bytes.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from artifacts.cid import CID
from artifacts.store import ArtifactStore
from flows.errors import HubError, one_line

__all__ = [
    "HF_ATTR",
    "HubFolder",
    "export_hf",
    "hf_tensors",
    "hub_cache_dir",
    "hub_offline",
    "import_hf",
    "push_hf",
    "resolve_hub_source",
]

#: The attribute of an imported repo: ``repo_type`` and, when known, ``repo_id`` and ``commit``.
HF_ATTR = "cidflow.hf"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")
_TRUE = {"1", "true", "yes", "on"}
Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class HubFolder:
    """A folder holding a repo's files, and what is known about where it came from."""

    path: Path
    repo_id: str | None = None
    commit: str | None = None
    #: The hub cache's repo folder when ``path`` is a snapshot (its files link into ``blobs/``).
    links_within: Path | None = None


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` asks for the cache only."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_cache_dir() -> Path:
    """The hub cache: ``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join("~", ".cache", "huggingface")
    return Path(home).expanduser() / "hub"


def resolve_hub_source(
    source: str, revision: str | None = None, *, repo_type: str = "model"
) -> HubFolder:
    """The local folder for ``source`` (a folder or a repo id), downloading nothing when
    ``HF_HUB_OFFLINE`` is set. Raises :class:`HubError` with one line on any failure."""
    path = Path(source).expanduser()
    if path.is_dir():
        if revision is not None:
            raise HubError(f"--revision applies to a repo id, not to the folder {source}")
        return _folder_identity(path.absolute())
    if path.exists():
        raise HubError(f"{source} is a file; give a repo folder or a repo id (org/name)")
    if not _REPO_ID.match(source):
        raise HubError(f"{source!r} is neither a folder nor a Hugging Face repo id (org/name)")
    import huggingface_hub
    from huggingface_hub import errors

    cache = hub_cache_dir()
    offline = hub_offline()
    try:
        found = huggingface_hub.snapshot_download(
            source, repo_type=repo_type, revision=revision, cache_dir=cache,
            local_files_only=offline,
        )  # fmt: skip
    except errors.LocalEntryNotFoundError:
        where = f"{repo_type} repo {source}" + (f"@{revision}" if revision else "")
        if offline:
            raise HubError(
                f"{where} is not in the Hugging Face cache at {cache} and HF_HUB_OFFLINE is set "
                "(download it first, or give a local folder)"
            ) from None
        raise HubError(f"{where}: cannot reach the Hugging Face Hub and it is not cached") from None
    except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as exc:
        raise HubError(f"{repo_type} repo {source}: {one_line(exc)}") from None
    except (errors.HfHubHTTPError, OSError, ValueError) as exc:
        raise HubError(f"cannot fetch {repo_type} repo {source}: {one_line(exc)}") from None
    snapshot = Path(str(found))
    return HubFolder(snapshot, source, snapshot.name, snapshot.parent.parent)


def _folder_identity(path: Path) -> HubFolder:
    """A snapshot folder of the hub cache (``models--org--name/snapshots/<commit>``) knows its
    repo id and commit; any other folder is just files."""
    snapshots, repo = path.parent, path.parent.parent
    if snapshots.name == "snapshots" and "--" in repo.name:
        kind, _, name = repo.name.partition("--")
        if kind in ("models", "datasets", "spaces") and name:
            return HubFolder(path, name.replace("--", "/"), path.name, repo)
    return HubFolder(path)


def _excluded(rel: str) -> bool:
    """Version-control and download bookkeeping, not part of the repo's content."""
    top = rel.split("/", 1)[0]
    return top == ".git" or rel.startswith(".cache/huggingface/")


def import_hf(
    store: ArtifactStore,
    source: str | HubFolder,
    revision: str | None = None,
    *,
    repo_type: str = "model",
    progress: Progress | None = None,
    on_skip: Callable[[Path, str], None] | None = None,
) -> CID:
    """Store the repo at ``source`` (folder, repo id or a resolved :class:`HubFolder`) as an
    artifact; return its CID."""
    folder = (
        source if isinstance(source, HubFolder)
        else resolve_hub_source(source, revision, repo_type=repo_type)
    )  # fmt: skip
    files = [
        p for p in folder.path.rglob("*")
        if (p.is_file() or p.is_symlink()) and not _excluded(p.relative_to(folder.path).as_posix())
    ]  # fmt: skip
    if not files:
        raise HubError(f"{folder.path} holds no files to import")
    info: dict[str, Any] = {"repo_type": repo_type}
    if folder.repo_id:
        info["repo_id"] = folder.repo_id
    if folder.commit:
        info["commit"] = folder.commit
    return store.put_path(
        folder.path, attrs={HF_ATTR: info}, progress=progress, on_skip=on_skip,
        links_within=folder.links_within, exclude=_excluded,
    )  # fmt: skip


def export_hf(
    store: ArtifactStore,
    cid: str | CID,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> list[Path]:
    """Write the repo stored as ``cid`` into folder ``out``, every file byte-identical."""
    art = store.open_artifact(cid)
    if art.kind != "files":
        raise HubError(f"{art.cid} is a {art.kind!r} artifact, not a repo (files) artifact")
    return art.export(out, overwrite=overwrite, progress=progress)


def hf_tensors(store: ArtifactStore, cid: str | CID) -> dict[str, Any]:
    """Every tensor of the repo's ``.safetensors`` files as torch tensors (original dtypes),
    read straight from the zarr arrays, without exporting any file."""
    from artifacts.torch_io import numpy_to_tensor

    art = store.open_artifact(cid)
    out: dict[str, Any] = {}
    for name, info in art.arrays().items():
        tensor = info.attributes.get("cidflow.array", {}).get("tensor")
        if not isinstance(tensor, dict):
            continue
        if tensor["name"] in out:
            raise HubError(f"{art.cid}: tensor {tensor['name']!r} is in more than one file")
        data = np.asarray(art.array(name)[...])
        out[tensor["name"]] = numpy_to_tensor(data, tensor["torch_dtype"])
    return out


def push_hf(
    store: ArtifactStore,
    cid: str | CID,
    repo_id: str,
    *,
    revision: str | None = None,
    token: str | None = None,
    message: str | None = None,
) -> str:
    """Upload the repo stored as ``cid`` to the Hugging Face Hub (needs network and a token
    with write access); return the commit URL."""
    if not _REPO_ID.match(repo_id) or "/" not in repo_id:
        raise HubError(f"{repo_id!r} is not a Hugging Face repo id (org/name)")
    if hub_offline():
        raise HubError("pushing to the Hugging Face Hub needs network, but HF_HUB_OFFLINE is set")
    import huggingface_hub
    from huggingface_hub import errors

    with tempfile.TemporaryDirectory(prefix="cidflow-hf-push-") as tmp:
        export_hf(store, cid, Path(tmp) / "repo")
        try:
            info = huggingface_hub.upload_folder(
                repo_id=repo_id, folder_path=Path(tmp) / "repo", revision=revision, token=token,
                commit_message=message or f"Upload cidflow artifact {cid}",
            )  # fmt: skip
        except (errors.HfHubHTTPError, OSError, ValueError) as exc:
            raise HubError(f"cannot push to {repo_id}: {one_line(exc)}") from None
    return str(getattr(info, "commit_url", info))
