"""Settings of the registry layer (environment prefix ``CIDFLOW_``), read when asked for."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["RegistrySettings"]


class RegistrySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CIDFLOW_", extra="ignore")

    registry: str | None = Field(
        default=None,
        description="Registry to use: http(s) URL, database URL or SQLite file path "
        "(default: registry.db in the home folder).",
    )
    key: str = Field(default="default", description="Name of the publisher key in HOME/keys.")
    registry_token: str | None = Field(
        default=None, description="Bearer token for appending to a registry service."
    )
