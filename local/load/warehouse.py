"""The warehouse mock's admin API, as far as a load run needs it: faults and stats.

The mock only has global faults (no per-SKU ones), so a run that wants flaky orders sets
a global failure rate and restores the previous configuration afterwards.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from local.load import ConfigError, TargetError

# Named fault settings, for the common cases; anything else goes through --faults JSON.
PRESETS: dict[str, dict[str, Any]] = {
    "healthy": {},
    "flaky": {"failure_rate": 0.2, "status_codes": [500, 502, 503]},
    "slow": {"latency": 50.0},
    "blip": {"scenario": [{"duration_seconds": 5.0, "outage": True}]},
}


def flaky_faults(share: float) -> dict[str, Any]:
    """The global fault setting that makes `share` of warehouse calls fail retryably."""
    return {"failure_rate": round(share, 4), "status_codes": [500, 502, 503]}


def parse_faults(text: str | None, preset: str | None) -> dict[str, Any] | None:
    if text and preset:
        raise ConfigError("give --faults or --faults-preset, not both")
    if preset:
        if preset not in PRESETS:
            raise ConfigError(f"unknown fault preset {preset!r}; known: {', '.join(PRESETS)}")
        return dict(PRESETS[preset])
    if not text:
        return None
    try:
        faults = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"--faults is not JSON: {exc}") from exc
    if not isinstance(faults, dict):
        raise ConfigError("--faults must be a JSON object, e.g. '{\"failure_rate\": 0.3}'")
    return faults


class WarehouseAdmin:
    def __init__(self, client: httpx.AsyncClient, base_url: str, token: str | None) -> None:
        if not token:
            raise ConfigError("the warehouse admin API needs the admin token (--admin-token)")
        self._client = client
        self._base = base_url
        self._headers = {"Authorization": f"Bearer {token}", "X-Actor": "steadfast-load"}

    async def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        try:
            response = await self._client.request(
                method, f"{self._base}{path}", json=body, headers=self._headers
            )
        except httpx.HTTPError as exc:
            raise TargetError(f"warehouse {method} {path}: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise TargetError(
                f"warehouse {method} {path}: HTTP {response.status_code} {response.text[:300]}"
            )
        data: dict[str, Any] = response.json()
        return data

    async def faults(self) -> dict[str, Any]:
        """The configuration last PUT (what to restore afterwards)."""
        state = await self._call("GET", "/admin/faults")
        config: dict[str, Any] = state["config"]
        return config

    async def set_faults(self, config: dict[str, Any]) -> dict[str, Any]:
        return await self._call("PUT", "/admin/faults", config)

    async def stats(self) -> dict[str, Any]:
        return await self._call("GET", "/admin/stats")
