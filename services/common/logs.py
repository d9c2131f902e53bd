"""JSON logging with ECS field names, configured once per process at its entry point.

Modules log with ``logging.getLogger(__name__)`` and pass ECS fields through ``extra``
using their dotted names, e.g. ``extra={"event.action": "order_placed",
"labels.order_id": str(order_id)}``. The formatter renames the stdlib fields to ECS
(`@timestamp`, `log.level`, ...) and adds `service.name` and the current `trace.id`.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pythonjsonlogger.orjson import OrjsonFormatter

# The trace id of the unit of work being handled (a request, a message, a re-drive).
# Set by the edges that start work; read by the formatter, so no call site passes it.
current_trace_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "steadfast_trace_id", default=None
)


@contextmanager
def trace_context(trace_id: str | None) -> Iterator[None]:
    token = current_trace_id.set(trace_id)
    try:
        yield
    finally:
        current_trace_id.reset(token)


class EcsJsonFormatter(OrjsonFormatter):
    # orjson: a log line costs about a third of the standard library's json (the journey
    # logs are on the hot path at INFO).
    def __init__(self, service_name: str, aliases: dict[str, str] | None = None) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={
                "asctime": "@timestamp",
                "levelname": "log.level",
                "name": "log.logger",
            },
            datefmt="%Y-%m-%dT%H:%M:%S%z",
            timestamp=False,
        )
        self._service_name = service_name
        self._aliases = aliases or {}

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # ECS wants ISO 8601 with milliseconds and an explicit UTC offset.
        import datetime as dt

        return (
            dt.datetime.fromtimestamp(record.created, tz=dt.UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        super().add_fields(log_data, record, message_dict)
        log_data["log.level"] = str(log_data.get("log.level", record.levelname)).lower()
        log_data["service.name"] = self._service_name
        for source, alias in self._aliases.items():
            if log_data.get(source) is not None:
                log_data.setdefault(alias, log_data[source])
        log_data.setdefault("event.action", "log")
        trace_id = current_trace_id.get()
        if trace_id and "trace.id" not in log_data:
            log_data["trace.id"] = trace_id
        if record.exc_info and record.exc_info[0] is not None:
            log_data.setdefault("error.type", record.exc_info[0].__name__)
            log_data.setdefault("error.message", str(record.exc_info[1]))
            log_data["error.stack_trace"] = log_data.pop("exc_info", None)


def configure_logging(
    service_name: str, level: str = "INFO", aliases: dict[str, str] | None = None
) -> None:
    """Route every logger to one JSON line per record on stdout.

    `aliases` copies a field under a second name, so a library's generic field (the retry
    engine's `labels.message_key`) is also found under the app's name (`labels.order_id`).
    """
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(EcsJsonFormatter(service_name, aliases))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that are chatty at INFO drown the events operators look for.
    for noisy in ("aiokafka", "faust", "mode", "httpx", "httpcore", "apscheduler.executors"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    # A re-drive pass longer than the interval makes APScheduler warn that it skipped a run;
    # that is the intended max_instances=1 behaviour, not a problem to page anyone about.
    logging.getLogger("apscheduler.scheduler").setLevel(logging.ERROR)
