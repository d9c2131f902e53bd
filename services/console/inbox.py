"""Alerts delivered by Alertmanager's webhook (payload version 4).

Each alert in a delivery is logged once as one structured line (`event.action` is
`alert_firing` or `alert_resolved`) and kept by fingerprint, newest state wins, so the
page can show what fired and when it resolved even when Alertmanager is not reachable
for a direct listing. Memory is bounded: the oldest entries give way.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

MAX_ALERTS = 200


class WebhookAlert(BaseModel):
    model_config = ConfigDict(extra="ignore")
    status: str = Field(pattern="^(firing|resolved)$")
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: str | None = None
    endsAt: str | None = None
    fingerprint: str = Field(min_length=1, max_length=64)


class WebhookDelivery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    version: str
    status: str
    receiver: str
    groupKey: str = ""
    alerts: list[WebhookAlert] = Field(max_length=1000)


class AlertInbox:
    def __init__(self, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self._clock = clock
        self._alerts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.deliveries = 0

    def receive(self, delivery: WebhookDelivery) -> int:
        self.deliveries += 1
        received_at = self._clock().isoformat()
        for alert in delivery.alerts:
            name = alert.labels.get("alertname", "?")
            entry = {
                "fingerprint": alert.fingerprint,
                "name": name,
                "status": alert.status,
                "severity": alert.labels.get("severity"),
                "alert_labels": alert.labels,
                "summary": alert.annotations.get("summary"),
                "starts_at": alert.startsAt,
                "ends_at": alert.endsAt if alert.status == "resolved" else None,
                "received_at": received_at,
                "receiver": delivery.receiver,
            }
            self._alerts.pop(alert.fingerprint, None)
            self._alerts[alert.fingerprint] = entry
            log.log(
                logging.WARNING if alert.status == "firing" else logging.INFO,
                f"alert {name} {alert.status}: {entry['summary'] or ''}".rstrip(": "),
                extra={
                    "event.action": "alert_firing"
                    if alert.status == "firing"
                    else "alert_resolved",
                    "alert.name": name,
                    "alert.status": alert.status,
                    "alert.fingerprint": alert.fingerprint,
                    "alert.severity": entry["severity"],
                    "alert.labels": alert.labels,
                    "alert.group_key": delivery.groupKey,
                },
            )
        while len(self._alerts) > MAX_ALERTS:
            self._alerts.popitem(last=False)
        return len(delivery.alerts)

    def recent(self) -> list[dict[str, Any]]:
        """Newest first."""
        return list(reversed(self._alerts.values()))
