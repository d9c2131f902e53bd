"""Settings of the warehouse mock process (``STEADFAST_`` environment variables).

Build once at the entry point and pass down; there is no module-level instance.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import Field, NonNegativeInt, field_validator
from pydantic_settings import BaseSettings

from services.common.settings import AdminAuth, settings_config
from services.warehouse_mock.faults import FaultConfig


class WarehouseMockSettings(AdminAuth, BaseSettings):
    model_config = settings_config()

    host: str = "127.0.0.1"
    # Not plain ``port``: STEADFAST_PORT would be read by every process sharing the env.
    warehouse_port: int = Field(default=8081, ge=0, le=65535)
    warehouse_stock: dict[str, NonNegativeInt] = Field(
        default_factory=dict, description='Start stock per SKU, JSON: {"SKU-1": 10}'
    )
    warehouse_default_stock: NonNegativeInt = Field(
        default=1_000_000, description="Start stock of any SKU not listed"
    )
    warehouse_out_of_stock_prefix: str = Field(
        default="OOS-", description="Unlisted SKUs with this prefix start at 0, to force a 409"
    )
    warehouse_fault_seed: int = 0
    warehouse_faults: FaultConfig = Field(
        default_factory=FaultConfig, description="Faults active at start and after a reset"
    )
    # A batch of 1,000 reservation lines is about 150 KB of JSON.
    warehouse_max_body_bytes: int = Field(default=1024 * 1024, ge=1024, le=16 * 1024 * 1024)
    # A timeout fault holds a response for up to minutes; shutdown must not wait for it.
    warehouse_shutdown_grace_seconds: int = Field(default=5, ge=0, le=300)
    log_level: str = "INFO"

    @field_validator("warehouse_faults", mode="before")
    @classmethod
    def _lax_faults(cls, value: Any) -> Any:
        # The HTTP model is strict; environment values arrive as strings, so coerce here.
        if isinstance(value, dict):
            return FaultConfig.model_validate(value, strict=False)
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}")
        return level
