"""honcho, adapted for the launcher: a shared printer, a log handler, an event-reporting manager.

`LockedPrinter` may be written from the manager loop and the launcher's threads at once,
and survives its reader going away. It keeps each child's output, JSON as written, in
`<log_dir>/<process>.log` (rotated), and on a terminal prints short coloured lines
rendered by `local.logview` instead of raw JSON. `PrinterHandler` sends log records
through it.
`ProcessManager` is honcho's `Manager` reporting every event it reads to a callback, and
recording whether the stop was asked for or caused by a child's exit.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import honcho.manager
from honcho.manager import Manager
from honcho.printer import Message, Printer
from rich.console import Console

from local import logview

# honcho waits this long after SIGTERM before it SIGKILLs a child (its default is 5 s).
# Every service stops in well under 2 s; 4 s leaves the broker and PostgreSQL 3 s of the
# launcher's 10 s stop budget. A module constant, read on every loop turn.
honcho.manager.KILL_WAIT = 4

# The launcher's own lines and honcho's are plain text; they are not kept in files.
LAUNCHER_NAMES = frozenset({"system", "launcher"})
# Per-process log files are rotated: a long load run must not fill the disk.
LOG_FILE_BYTES = 64 * 2**20
LOG_FILE_BACKUPS = 2


class LockedPrinter(Printer):  # type: ignore[misc]
    """honcho's Printer, safe to share between the manager loop and launcher threads.

    The lock is re-entrant: honcho's SIGTERM handler prints ("SIGTERM received"), and a
    signal that lands while the main thread is inside `write` runs that handler on the
    same thread. With a plain lock the launcher hung there for good, silent, with every
    child still running (most often under heavy output, e.g. right after poison records).
    """

    def __init__(
        self,
        *args: Any,
        pretty: bool | None = None,
        log_dir: Path | None = None,
        **kwargs: Any,
    ) -> None:
        """`pretty`: render JSON lines for a person; None decides by `output.isatty()`.

        `log_dir`: keep every child's lines in `<log_dir>/<name>.log`; None keeps none.
        """
        super().__init__(*args, **kwargs)
        self._lock = threading.RLock()
        self._keep: frozenset[str] | None = None
        self.dropped = 0
        self.pretty = self._colours_supported if pretty is None else pretty
        self._console = self._make_console()
        self._log_dir = log_dir
        self._files: dict[str, logging.Handler] = {}
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)

    def _make_console(self) -> Console:
        # rich decides colour from the output (a TTY, NO_COLOR, TERM=dumb); soft_wrap keeps
        # one record on one line however narrow the terminal, as honcho's own lines are.
        return Console(file=self.output, soft_wrap=True, highlight=False, markup=False, emoji=False)

    def only(self, names: frozenset[str]) -> None:
        """From now on print only lines from `names` (the launcher's own, honcho's).

        Set when the stack stops: honcho relays each child's output through an unbounded
        buffer, so a child that logged faster than the terminal took it leaves a backlog
        that would otherwise be printed (and filed), line by line, before the stop could
        finish. What a child printed after that is not kept in its file either.
        """
        self._keep = names

    def write(self, message: Any) -> None:
        with self._lock:
            if self._keep is not None and message.name not in self._keep:
                # Not even kept in the file: a flood's backlog, written line by line,
                # held the stop past its 10 s (the launcher test saw 8-10 s).
                self.dropped += 1
                return
            if self._log_dir is not None and message.name not in LAUNCHER_NAMES:
                self._keep_in_file(message)
            try:
                if self.pretty and message.type == "line":
                    self._write_pretty(message)
                else:
                    super().write(message)
            except OSError:
                # The reader went away (`make run | head`, a closed terminal). Losing the
                # output must not stop the manager loop, or the children would be orphaned.
                self.output = open(os.devnull, "w")  # noqa: SIM115 - lives as long as we do
                self._console = self._make_console()

    def _write_pretty(self, message: Any) -> None:
        data = message.data
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        style = logview.honcho_style(message.colour if self.colour else None)
        for line in text.splitlines():
            rendered = logview.render_line(
                line,
                message.name or "",
                received=message.time,
                width=self.width,
                process_style=style,
            )
            print(logview.to_ansi(rendered, self._console), file=self.output, flush=True)

    def _keep_in_file(self, message: Any) -> None:
        """Append the child's lines, as they came, to its own (rotated) file."""
        name = message.name or "unnamed"
        handler = self._files.get(name)
        if handler is None:
            assert self._log_dir is not None
            handler = logging.handlers.RotatingFileHandler(
                self._log_dir / f"{name}.log",
                maxBytes=LOG_FILE_BYTES,
                backupCount=LOG_FILE_BACKUPS,
                encoding="utf-8",
            )
            handler.setFormatter(logging.Formatter("%(message)s"))
            self._files[name] = handler
        data = message.data
        text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data)
        for line in text.splitlines():
            # A bare record: the line is the message as is (no %-args to interpolate).
            handler.handle(logging.makeLogRecord({"msg": line, "args": None}))

    def close(self) -> None:
        with self._lock:
            for handler in self._files.values():
                handler.close()
            self._files.clear()


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
