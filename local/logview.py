"""The processes' JSON log lines, read by people: short coloured lines and one order's journey.

Every process writes one ECS JSON line per record (`services.common.logs`); that stays the
format on disk, in pipes and for shipping. Only what a person reads in a terminal is
rendered here: `render_line` turns a record into ``time process LEVEL message order=<id>``
as a rich `Text`, so colour is decided by the console that prints it (none on a pipe, none
under NO_COLOR). A line that is not a JSON object (a traceback, a library's print) is
passed through unchanged.

`order_journey` reads the launcher's per-process files (`<state>/logs/<process>.log`, see
`local.manager.LockedPrinter`) and returns one order's records, oldest first: those that
name the order, plus those that share a trace id with them (the relay and consumer lines
that carry the trace but not the order id).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from honcho.colour import get_colours
from rich.color import Color, ColorSystem
from rich.console import Console
from rich.style import Style
from rich.text import Text

ORDER_FIELD = "labels.order_id"
"""Where a record names its order (the retry engine's `labels.message_key` is copied here)."""

LEVEL_STYLES: dict[str, Style] = {
    "debug": Style(dim=True),
    "info": Style(color="green"),
    "warning": Style(color="yellow", bold=True),
    "error": Style(color="red", bold=True),
    "critical": Style(color="white", bgcolor="red", bold=True),
}
DIM = Style(dim=True)
TIME_FORMAT = "%H:%M:%S.%f"
LEVEL_NAMES = {"warning": "WARN", "critical": "CRIT"}


def parse(line: str) -> dict[str, Any] | None:
    """The record on `line`, or None when it is not a JSON object (passed through as text)."""
    stripped = line.strip()
    if not stripped.startswith("{"):
        return None
    try:
        record = json.loads(stripped)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def timestamp(record: dict[str, Any]) -> dt.datetime | None:
    value = record.get("@timestamp")
    if not isinstance(value, str):
        return None
    try:
        when = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


def order_of(record: dict[str, Any]) -> str | None:
    value = record.get(ORDER_FIELD)
    return str(value) if value else None


def honcho_style(colour: str | None) -> Style:
    """honcho's per-process colour ("36", "33;1") as a rich style, so both agree."""
    if not colour:
        return Style()
    code, _, bold = colour.partition(";")
    try:
        number = int(code) - 30
    except ValueError:
        return Style()
    if not 0 <= number <= 7:
        return Style()
    return Style(color=Color.from_ansi(number), bold=bold == "1")


def to_ansi(text: Text, console: Console) -> str:
    """`text` with the escape codes `console` would print, or plain when it prints no colour.

    Rich's own `Console.print` costs ~90 µs a line, too much for a printer that may see
    thousands of lines a second; rendering the segments directly costs a fifth of that.
    Every style here is one of the 8 ANSI colours, so the standard colour system is exact.
    """
    if console.color_system is None or console.no_color:
        return text.plain
    return "".join(
        segment.style.render(segment.text, color_system=ColorSystem.STANDARD)
        if segment.style
        else segment.text
        for segment in text.render(console)
    )


def process_style(index: int) -> Style:
    """The colour honcho gives its `index`-th process, for output made outside honcho."""
    return honcho_style(next(itertools.islice(get_colours(), index, None)))


def render_line(
    line: str,
    process: str,
    *,
    received: dt.datetime,
    width: int = 0,
    process_style: Style | None = None,
) -> Text:
    """One log line as a person reads it; a line that is not a record keeps its text."""
    record = parse(line)
    name = Text(process.ljust(width), style=process_style or Style())
    if record is None:
        when = received.astimezone().strftime(TIME_FORMAT)[:-3]
        return Text.assemble((when, DIM), " ", name, " | ", line.rstrip("\n"))
    return render_record(record, name, received=received)


def render_record(record: dict[str, Any], name: Text, *, received: dt.datetime) -> Text:
    when = (timestamp(record) or received).astimezone().strftime(TIME_FORMAT)[:-3]
    level = str(record.get("log.level", "info")).lower()
    text = Text.assemble(
        (when, DIM),
        " ",
        name,
        " ",
        (LEVEL_NAMES.get(level, level.upper()).ljust(5), LEVEL_STYLES.get(level, Style())),
        " ",
        str(record.get("message", "")),
    )
    order = order_of(record)
    if order:
        text.append(f"  order={order}", style=Style(color="cyan"))
    error, stack = record.get("error.type"), record.get("error.stack_trace")
    if stack:
        # A traceback is what one needs most when something fails; keep it, under the line.
        text.append("\n" + str(stack).rstrip("\n"), style=DIM)
    elif error:
        text.append(f"  {error}: {record.get('error.message', '')}", style=Style(color="red"))
    return text


@dataclass(frozen=True)
class Entry:
    """One record of a journey and where it was read."""

    when: dt.datetime
    process: str
    record: dict[str, Any]
    line: str


def log_files(log_dir: Path) -> list[tuple[str, Path]]:
    """(process, file) for every log file, rotated ones (`api-1.log.1`) included."""
    found = []
    for path in sorted(log_dir.glob("*.log*")):
        process, sep, rotation = path.name.partition(".log")
        if sep and (not rotation or rotation.lstrip(".").isdigit()):
            found.append((process, path))
    return found


def _lines(files: Iterable[tuple[str, Path]]) -> Iterator[tuple[str, Path, int, str]]:
    for process, path in files:
        with path.open(encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle):
                yield process, path, number, line


def order_journey(log_dir: Path, order_id: str) -> list[Entry]:
    """Every record about `order_id` in `log_dir`, merged across processes, oldest first.

    Two passes over the files: the records that name the order give its trace ids, then the
    records on those traces are added unless they name another order (an admin's bulk
    reprocess is one trace for many orders). A substring test before `json.loads` keeps a
    pass over hundreds of MiB of logs to seconds.
    """
    files = log_files(log_dir)
    seen: dict[tuple[Path, int], Entry] = {}
    traces: set[str] = set()
    for process, path, number, line in _lines(files):
        if order_id not in line:
            continue
        record = parse(line)
        if record is None or order_of(record) != order_id:
            continue
        seen[(path, number)] = _entry(process, record, line)
        if record.get("trace.id"):
            traces.add(str(record["trace.id"]))
    if traces:
        for process, path, number, line in _lines(files):
            if (path, number) in seen or not any(t in line for t in traces):
                continue
            record = parse(line)
            if record is None or str(record.get("trace.id")) not in traces:
                continue
            if order_of(record) not in (None, order_id):
                continue
            seen[(path, number)] = _entry(process, record, line)
    return sorted(seen.values(), key=lambda e: e.when)


def _entry(process: str, record: dict[str, Any], line: str) -> Entry:
    when = timestamp(record) or dt.datetime.min.replace(tzinfo=dt.UTC)
    return Entry(when=when, process=process, record=record, line=line.rstrip("\n"))
