"""The launcher's printer on a terminal and on a pipe, its JSON files, and `logs --order`.

Records are made by the real ECS formatter and written through the real `LockedPrinter`
into real files; the terminal is a pseudo-terminal, the pipe an OS pipe.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from honcho.printer import Message

from local.cli import main
from local.manager import LockedPrinter
from services.common.logs import EcsJsonFormatter, trace_context

ESC = "\x1b["
T0 = dt.datetime(2026, 12, 2, 9, 0, 0, tzinfo=dt.UTC).timestamp()


def ecs_line(service: str, message: str, at: float, level: int = logging.INFO, **extra: Any) -> str:
    """One JSON line as a process writes it: the real formatter, `created` set to `at`."""
    record = logging.makeLogRecord(
        {
            "msg": message,
            "levelno": level,
            "levelname": logging.getLevelName(level),
            "name": f"services.{service}",
            "created": at,
            **extra,
        }
    )
    return EcsJsonFormatter(service, {"labels.message_key": "labels.order_id"}).format(record)


def line(name: str, text: str, colour: str = "36") -> Message:
    return Message("line", text + "\n", dt.datetime.now().astimezone(), name, colour)


@pytest.fixture
def colour_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def tty() -> Iterator[tuple[Any, int]]:
    leader, follower = os.openpty()
    output = os.fdopen(follower, "w")
    yield output, leader
    output.close()
    os.close(leader)


@pytest.fixture
def pipe() -> Iterator[tuple[Any, int]]:
    read_end, write_end = os.pipe()
    output = os.fdopen(write_end, "w")
    yield output, read_end
    output.close()
    os.close(read_end)


def read_all(fd: int) -> str:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except (BlockingIOError, OSError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode().replace("\r\n", "\n")


ORDER = "7c1e0a52-1111-4c3b-9d7a-000000000001"
PLACED = ecs_line(
    "reservation-api", "order placed", T0, **{"labels.order_id": ORDER, "event.action": "x"}
)


@pytest.mark.usefixtures("colour_terminal")
def test_on_a_terminal_a_record_is_one_short_coloured_line(tty: tuple[Any, int]) -> None:
    output, fd = tty
    printer = LockedPrinter(output)
    printer.width = 10
    printer.write(line("api-1", PLACED))
    shown = read_all(fd)
    assert ESC in shown
    plain = _strip(shown)
    clock = dt.datetime.fromtimestamp(T0).astimezone().strftime("%H:%M:%S")
    assert plain == f"{clock}.000 api-1      INFO  order placed  order={ORDER}\n"
    assert "{" not in plain


@pytest.mark.usefixtures("colour_terminal")
def test_on_a_pipe_json_lines_are_printed_as_they_came_without_colour(
    pipe: tuple[Any, int],
) -> None:
    output, fd = pipe
    printer = LockedPrinter(output)
    printer.write(line("api-1", PLACED))
    shown = read_all(fd)
    assert ESC not in shown
    prefix, _, payload = shown.rstrip("\n").partition("| ")
    assert prefix.split()[1] == "api-1"
    assert json.loads(payload)["labels.order_id"] == ORDER


def test_pretty_without_a_terminal_has_no_colour(pipe: tuple[Any, int]) -> None:
    output, fd = pipe
    printer = LockedPrinter(output, pretty=True)
    printer.write(line("api-1", PLACED))
    shown = read_all(fd)
    assert ESC not in shown
    assert "INFO  order placed  order=" in shown


@pytest.mark.usefixtures("colour_terminal")
@pytest.mark.parametrize(
    "text",
    [
        "Traceback (most recent call last):",
        '{"@timestamp": "2026-12-02T09:00:00Z", "message": "cut short',
        "[1, 2, 3]",
        "{not json at all}",
        "    indented, as a traceback's frames are",
    ],
)
def test_a_line_that_is_not_a_record_is_passed_through(tty: tuple[Any, int], text: str) -> None:
    output, fd = tty
    printer = LockedPrinter(output)
    printer.write(line("consumer-1", text))
    assert _strip(read_all(fd)).endswith(f" consumer-1 | {text}\n")


@pytest.mark.usefixtures("colour_terminal")
def test_an_error_shows_its_traceback_under_the_line(tty: tuple[Any, int]) -> None:
    try:
        raise ConnectionError("warehouse refused")
    except ConnectionError:
        exc_info = sys.exc_info()
    record = ecs_line("consumer", "call failed", T0, logging.ERROR, exc_info=exc_info)
    output, fd = tty
    LockedPrinter(output).write(line("consumer-1", record))
    plain = _strip(read_all(fd)).splitlines()
    assert " ERROR call failed" in plain[0]
    assert plain[1] == "Traceback (most recent call last):"
    assert plain[-1] == "ConnectionError: warehouse refused"


def test_log_files_keep_the_json_lines_whatever_the_terminal_shows(
    tmp_path: Path, tty: tuple[Any, int]
) -> None:
    output, fd = tty
    printer = LockedPrinter(output, pretty=True, log_dir=tmp_path)
    printer.write(line("api-1", PLACED))
    printer.write(line("api-1", "a stray print"))
    printer.write(line("launcher", "stack ready"))
    printer.only(frozenset({"launcher"}))  # stopping: a backlog is neither shown nor kept
    printer.write(line("api-1", PLACED))
    printer.close()
    read_all(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api-1.log"]
    assert (tmp_path / "api-1.log").read_text().splitlines() == [PLACED, "a stray print"]
    assert printer.dropped == 1


# -- logs --order ---------------------------------------------------------------------------

OTHER = "7c1e0a52-2222-4c3b-9d7a-000000000002"
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
OTHER_TRACE = "00f067aa0ba902b7a3ce929d0e0e4736"


def _write_run(log_dir: Path) -> None:
    """One order's lines spread over four processes, written in an order unlike time's."""
    printer = LockedPrinter(open(os.devnull, "w"), pretty=False, log_dir=log_dir)  # noqa: SIM115
    api = {"labels.order_id": ORDER, "event.action": "order_placed"}
    with trace_context(TRACE):
        writes = [
            ("consumer-1", ecs_line("consumer", "reserved", T0 + 0.30, **api)),
            ("consumer-1", ecs_line("consumer", "message handled", T0 + 0.20)),
            ("relay-1", ecs_line("relay", "published", T0 + 0.10)),
            ("api-1", ecs_line("api", "order placed", T0 + 0.00, **api)),
            ("warehouse-1", ecs_line("warehouse", "reservation made", T0 + 0.25, **api)),
            # The retry engine's generic field names the order too (the alias copies it).
            (
                "scheduler-1",
                ecs_line("scheduler", "re-driven", T0 + 0.4, **{"labels.message_key": ORDER}),
            ),
            # A bulk reprocess: one trace, many orders; the other order's line stays out.
            ("api-1", ecs_line("api", "reprocess", T0 + 0.35, **{"labels.order_id": OTHER})),
        ]
    with trace_context(OTHER_TRACE):
        writes += [
            ("relay-1", ecs_line("relay", "published other", T0 + 0.15)),
            ("api-1", ecs_line("api", "order placed", T0 + 0.05, **{"labels.order_id": OTHER})),
        ]
    writes.append(("consumer-1", "Traceback (most recent call last): " + ORDER))
    for name, text in writes:
        printer.write(line(name, text))
    printer.close()


def test_logs_order_merges_one_orders_journey_by_time(tmp_path: Path) -> None:
    _write_run(tmp_path / "logs")
    result = CliRunner().invoke(
        main, ["logs", "--state-dir", str(tmp_path), "--order", ORDER, "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    records = [json.loads(text) for text in result.output.splitlines()]
    assert [r["message"] for r in records] == [
        "order placed",
        "published",
        "message handled",
        "reservation made",
        "reserved",
        "re-driven",
    ]


def test_logs_order_pretty_names_each_process(tmp_path: Path) -> None:
    _write_run(tmp_path / "logs")
    result = CliRunner().invoke(
        main, ["logs", "--state-dir", str(tmp_path), "--order", ORDER, "--format", "pretty"]
    )
    assert result.exit_code == 0, result.output
    assert ESC not in result.output  # CliRunner's output is no terminal
    processes = [text.split()[1] for text in result.output.splitlines()]
    assert processes == [
        "api-1",
        "relay-1",
        "consumer-1",
        "warehouse-1",
        "consumer-1",
        "scheduler-1",
    ]


def test_logs_order_reads_rotated_files_and_says_when_nothing_matches(tmp_path: Path) -> None:
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    (log_dir / "api-1.log.1").write_text(PLACED + "\n")
    runner = CliRunner()
    found = runner.invoke(main, ["logs", "--state-dir", str(tmp_path), "--order", ORDER])
    assert found.exit_code == 0 and json.loads(found.output)["message"] == "order placed"
    missing = runner.invoke(main, ["logs", "--state-dir", str(tmp_path), "--order", OTHER])
    assert missing.exit_code == 1 and "no log line" in missing.output


def _strip(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)
