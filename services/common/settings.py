"""Settings pieces every process shares. Each process still owns exactly one Settings class.

Build it once at the entry point (``Settings()``) and pass values down; nothing here is a
module-level instance, so tests control configuration through the environment alone.
"""

from __future__ import annotations

import secrets

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

ENV_PREFIX = "STEADFAST_"


def settings_config() -> SettingsConfigDict:
    return SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="ignore",
        # A validation error otherwise quotes the input, and the input of a model-wide
        # check is every setting, the database URL's password included.
        hide_input_in_errors=True,
    )


class HttpServer(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)


class AdminAuth(BaseModel):
    """Mixin fields for processes with admin routes.

    There is no default token: outside explicit dev mode a process refuses to start
    without one, so a forgotten variable never ships an open admin API. In dev mode a
    missing token is replaced by a random one, never by "no auth".
    """

    admin_token: SecretStr | None = None
    dev_mode: bool = False

    @model_validator(mode="after")
    def _require_token(self) -> AdminAuth:
        # A blank token is a forgotten one: "Bearer " with spaces must not open the API.
        if self.admin_token is None or not self.admin_token.get_secret_value().strip():
            if not self.dev_mode:
                raise ValueError(
                    "STEADFAST_ADMIN_TOKEN is required (set STEADFAST_DEV_MODE=true to run "
                    "without one locally)"
                )
            self.admin_token = SecretStr(secrets.token_urlsafe(24))
        return self
