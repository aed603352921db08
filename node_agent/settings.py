"""Settings of the node agent layer (environment prefix ``CIDFLOW_NODE_``), read when asked for."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from artifacts.blobstore.http import MAX_BLOB
from artifacts.settings import ArtifactSettings

__all__ = ["NodeSettings"]


class NodeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CIDFLOW_NODE_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: ArtifactSettings().home,
        description="Folder of this node: its token file and blob store (default: the cidflow "
        "home, CIDFLOW_HOME).",
    )
    name: str = Field(default="", description="Human-readable node name shown by /v1/info.")
    host: str = Field(default="127.0.0.1", description="Address the blob server listens on.")
    port: int = Field(default=8470, ge=0, le=65535, description="Port of the blob server.")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names accepted in the Host header besides loopback (a JSON list).",
    )
    capacity: int | None = Field(
        default=None,
        ge=0,
        description="Bytes of blobs this node stores at most (none: no limit but the disk).",
    )
    max_blob: int = Field(
        default=MAX_BLOB, ge=1, description="Largest blob the node accepts in one upload, in bytes."
    )
    registry: str | None = Field(
        default=None,
        description="Registry to announce to (service URL, SQLite path or database URL): here "
        "rather than on the command line when it holds a password.",
    )
    probe_gpus: bool = Field(
        default=True,
        description="Import torch (when installed) to count GPUs for /v1/info; off: GPUs are "
        "counted only if torch is already imported.",
    )
