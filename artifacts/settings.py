"""Settings of the artifacts layer (environment prefix ``CIDFLOW_``), read when asked for."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["ArtifactSettings"]


class ArtifactSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CIDFLOW_", extra="ignore")

    home: Path = Field(
        default_factory=lambda: Path.home() / ".cidflow",
        description="Folder holding the local blob store, pins and artifact index.",
    )
    hash: Literal["sha2-256", "blake3"] = Field(
        default="sha2-256", description="Hash function for new blobs (sha2-256 is IPFS's)."
    )
    chunk_bytes: int = Field(
        default=4 << 20,
        ge=64 << 10,
        le=64 << 20,
        description="Target uncompressed size of one array chunk, in bytes.",
    )
    zstd_level: int = Field(default=3, ge=1, le=19, description="zstd level for compressible data.")
    gc_grace_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="Blobs and artifacts written more recently than this are never collected.",
    )
    fsync: bool = Field(
        default=True, description="fsync every blob before it is named (crash durability)."
    )
