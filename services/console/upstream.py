"""HTTP clients of what the console shows: the reservation API, the warehouse mock,
Prometheus and Alertmanager.

Exceptions (httpx's never leak past this module):

    UpstreamError
    └── UpstreamUnavailable   no answer (refused, timed out, not configured)

An answer with an error status is not an exception: the console hands the status and
body back to the page, which shows the service's own explanation.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

log = logging.getLogger(__name__)


class UpstreamError(Exception):
    """Root of the console's upstream failures."""


class UpstreamUnavailable(UpstreamError):
    def __init__(self, service: str, reason: str) -> None:
        super().__init__(f"{service} is not answering: {reason}")
        self.service = service
        self.reason = reason


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class Upstream:
    """One service at `base_url`; `token`, when given per call, goes as a bearer token."""

    def __init__(self, name: str, base_url: str | None, client: httpx.AsyncClient) -> None:
        self.name = name
        self.base_url = base_url
        self._client = client

    @property
    def configured(self) -> bool:
        return self.base_url is not None

    async def call(
        self,
        method: str,
        path: str,
        *,
        token: SecretStr | None = None,
        params: Mapping[str, Any] | list[tuple[str, Any]] | None = None,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        if self.base_url is None:
            raise UpstreamUnavailable(self.name, "not configured")
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token.get_secret_value()}"
        try:
            response = await self._client.request(
                method, f"{self.base_url}{path}", params=params, json=json, headers=sent
            )
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(self.name, type(exc).__name__) from exc
        try:
            body = response.json()
        except ValueError:
            body = {"detail": response.text[:500]}
        return Answer(response.status_code, body)


class Prometheus(Upstream):
    async def query_range(
        self, query: str, *, start: float, end: float, step: float
    ) -> list[dict[str, Any]]:
        """The matrix of `query` (`[{"metric": {...}, "values": [[t, "v"], ...]}]`)."""
        answer = await self.call(
            "GET",
            "/api/v1/query_range",
            params={"query": query, "start": start, "end": end, "step": step},
        )
        if not answer.ok or answer.body.get("status") != "success":
            raise UpstreamUnavailable(self.name, f"query failed ({answer.status}): {answer.body}")
        result: list[dict[str, Any]] = answer.body["data"]["result"]
        return result


class Alertmanager(Upstream):
    async def alerts(self) -> list[dict[str, Any]]:
        """Active alerts, inhibited and silenced ones included (their status says so)."""
        answer = await self.call("GET", "/api/v2/alerts", params={"active": "true"})
        if not answer.ok or not isinstance(answer.body, list):
            raise UpstreamUnavailable(self.name, f"alert listing failed ({answer.status})")
        return answer.body
