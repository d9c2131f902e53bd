"""honcho, adapted for the launcher: a shared printer, a log handler, an event-reporting manager.

`LockedPrinter` may be written from the manager loop and the launcher's threads at once,
and survives its reader going away. `PrinterHandler` sends log records through it.
`ProcessManager` is honcho's `Manager` reporting every event it reads to a callback, and
recording whether the stop was asked for or caused by a child's exit.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import honcho.manager
from honcho.manager import Manager
from honcho.printer import Message, Printer

# honcho waits this long after SIGTERM before it SIGKILLs a child (its default is 5 s).
# Every service stops in well under 2 s; 4 s leaves the broker and PostgreSQL 3 s of the
# launcher's 10 s stop budget. A module constant, read on every loop turn.
honcho.manager.KILL_WAIT = 4


class LockedPrinter(Printer):  # type: ignore[misc]
    """honcho's Printer, safe to share between the manager loop and launcher threads.

    The lock is re-entrant: honcho's SIGTERM handler prints ("SIGTERM received"), and a
    signal that lands while the main thread is inside `write` runs that handler on the
    same thread. With a plain lock the launcher hung there for good, silent, with every
    child still running (most often under heavy output, e.g. right after poison records).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.RLock()
        self._keep: frozenset[str] | None = None
        self.dropped = 0

    def only(self, names: frozenset[str]) -> None:
        """From now on print only lines from `names` (the launcher's own, honcho's).

        Set when the stack stops: honcho relays each child's output through an unbounded
        buffer, so a child that logged faster than the terminal took it leaves a backlog
        that would otherwise be printed, line by line, before the stop could finish.
        """
        self._keep = names

    def write(self, message: Any) -> None:
        with self._lock:
            if self._keep is not None and message.name not in self._keep:
                self.dropped += 1
                return
            try:
                super().write(message)
            except OSError:
                # The reader went away (`make run | head`, a closed terminal). Losing the
                # output must not stop the manager loop, or the children would be orphaned.
                self.output = open(os.devnull, "w")  # noqa: SIM115 - lives as long as we do


class PrinterHandler(logging.Handler):
    """Sends the launcher's own log records through honcho's printer, prefixed `launcher`."""

    def __init__(self, printer: Printer, name: str = "launcher") -> None:
        super().__init__()
        self._printer = printer
        self._name = name
        printer.width = max(printer.width, len(name))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            self._printer.write(Message("line", text + "\n", _now(), self._name, None))
        except Exception:
            self.handleError(record)


def _now() -> Any:
    import datetime as dt

    return dt.datetime.now().astimezone()


class _EventTap:
    """honcho's event queue with a hook on every message the manager reads.

    Children only `put`; pickling (spawn/forkserver start methods) hands them the bare queue.
    """

    def __init__(self, queue: Any, on_event: Callable[[Any], None]) -> None:
        self._queue = queue
        self._on_event = on_event

    def get(self, *args: Any, **kwargs: Any) -> Any:
        self._on_event(None)
        message = self._queue.get(*args, **kwargs)
        self._on_event(message)
        return message

    def put(self, *args: Any, **kwargs: Any) -> None:
        self._queue.put(*args, **kwargs)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_identity, (self._queue,))


def _identity(value: Any) -> Any:
    return value


class ProcessManager(Manager):  # type: ignore[misc]
    """Records whether the stop was asked for (signal) or caused by a child's exit."""

    events: Any

    def __init__(self, printer: Printer, on_event: Callable[[Any], None]) -> None:
        super().__init__(printer)
        self.events = _EventTap(self.events, on_event)
        self.first_exit: tuple[str, int] | None = None
        self.stop_requested = False
        self._printer_ref = printer

    def terminate(self) -> None:
        if self.first_exit is None:
            self.stop_requested = True
        if isinstance(self._printer_ref, LockedPrinter):
            self._printer_ref.only(frozenset({"system", "launcher"}))
        super().terminate()
