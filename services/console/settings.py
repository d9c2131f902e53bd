"""Settings of the console process (``STEADFAST_`` environment variables).

Build once at the entry point and pass down; there is no module-level instance.
"""

from __future__ import annotations

import logging

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

from services.common.settings import AdminAuth, settings_config


class ConsoleSettings(AdminAuth, BaseSettings):
    model_config = settings_config()

    host: str = "127.0.0.1"
    # Not plain ``port``: STEADFAST_PORT is the reservation API's.
    console_port: int = Field(default=8090, ge=0, le=65535)
    database_url: SecretStr = SecretStr("postgresql://postgres@127.0.0.1:5432/steadfast")
    api_url: str = Field(default="http://127.0.0.1:8000", description="The reservation API")
    warehouse_url: str = Field(default="http://127.0.0.1:8081", description="The warehouse mock")
    prometheus_url: str | None = Field(default=None, description="Unset: no charts")
    alertmanager_url: str | None = Field(default=None, description="Unset: webhook alerts only")
    # Every open page polls the overview; one snapshot per interval serves them all.
    console_refresh_seconds: float = Field(default=2.0, ge=0.2, le=60)
    console_session_hours: float = Field(default=12.0, gt=0, le=24 * 7)
    console_upstream_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    log_level: str = "INFO"

    @field_validator("api_url", "warehouse_url", "prometheus_url", "alertmanager_url")
    @classmethod
    def _no_trailing_slash(cls, value: str | None) -> str | None:
        return value.rstrip("/") if value else None

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}")
        return level
