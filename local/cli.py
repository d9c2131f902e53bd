"""`steadfast-local`: run the whole stack on this machine (`make run`)."""

from __future__ import annotations

import json
import logging
import shlex
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.style import Style
from rich.text import Text

from local import infra, logview
from local.launcher import Launcher
from local.manager import LockedPrinter, PrinterHandler
from local.plan import KAFKA_SECURITY, ROLES, LaunchError, LaunchOptions
from local.reaper import tag_this_process

LOG_FORMATS = ("auto", "pretty", "json")
STATE_DIR = Path(".steadfast")


def _pretty(log_format: str, isatty: bool) -> bool:
    """`auto` renders for a person on a terminal and keeps JSON lines on a pipe or a file."""
    return log_format == "pretty" or (log_format == "auto" and isatty)


def _parse_scale(values: tuple[str, ...]) -> dict[str, int]:
    scale: dict[str, int] = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not count.isdigit():
            raise click.BadParameter(f"{value!r}: expected NAME=COUNT, e.g. consumer=2")
        scale[name.strip()] = int(count)
    return scale


def _parse_commands(values: tuple[str, ...]) -> dict[str, str]:
    commands: dict[str, str] = {}
    for value in values:
        name, sep, command = value.partition("=")
        if not sep or not command.strip():
            raise click.BadParameter(f"{value!r}: expected NAME=SHELL-COMMAND")
        commands[name.strip()] = command
    return commands


@click.group()
def main() -> None:
    """Run steadfast locally: PostgreSQL, Apache Kafka and every process."""


@main.command()
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=STATE_DIR,
    show_default=True,
    help="Data of the embedded PostgreSQL and broker, logs, run/endpoints.json.",
)
@click.option(
    "--broker",
    type=click.Choice(infra.BROKERS),
    default=None,
    show_default="STEADFAST_BROKER, else kafka when Java 17+ is on PATH, else noida",
    help="Broker to start when STEADFAST_KAFKA_BOOTSTRAP_SERVERS is not set.",
)
@click.option(
    "--kafka-nodes",
    type=click.Choice(["1", "3"]),
    default="1",
    show_default=True,
    help="Apache Kafka nodes (3: replication factor 3, min.insync.replicas 2).",
)
@click.option(
    "--kafka-security",
    type=click.Choice(KAFKA_SECURITY),
    default="plaintext",
    show_default=True,
    help="Clients connect with SASL/SCRAM (sasl), over TLS with a local CA (sasl-ssl).",
)
@click.option(
    "--scale",
    multiple=True,
    metavar="NAME=COUNT",
    help="Instances of relay, consumer or scheduler (repeatable; 0 leaves one out).",
)
@click.option(
    "--only",
    metavar="NAMES",
    help=f"Comma-separated processes to run, out of: {', '.join(ROLES)}.",
)
@click.option("--no-prometheus", is_flag=True, help="Do not start Prometheus even if installed.")
@click.option(
    "--command",
    "commands",
    multiple=True,
    metavar="NAME=CMD",
    help="Run CMD (a shell command) in place of a process, e.g. a stand-in while debugging.",
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="auto",
    show_default=True,
    help="pretty: short coloured lines; json: the processes' JSON lines (auto: pretty on a "
    "terminal). <state-dir>/logs/<process>.log keeps JSON either way.",
)
def run(
    state_dir: Path,
    broker: str | None,
    kafka_nodes: str,
    kafka_security: str,
    scale: tuple[str, ...],
    only: str | None,
    no_prometheus: bool,
    commands: tuple[str, ...],
    log_format: str,
) -> None:
    """Start the stack in the foreground; Ctrl-C stops it all."""
    tag_this_process()  # re-executes once, in place, so every child can be found later
    printer = LockedPrinter(
        sys.stdout,
        pretty=_pretty(log_format, sys.stdout.isatty()),
        log_dir=state_dir.resolve() / "logs",
    )
    handler = PrinterHandler(printer)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    for noisy in ("httpx", "httpcore", "alembic"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        options = LaunchOptions(
            state_dir=state_dir,
            broker=broker or infra.default_broker(),
            kafka_nodes=int(kafka_nodes),
            kafka_security=kafka_security,
            scale=_parse_scale(scale),
            only=frozenset(n.strip() for n in only.split(",") if n.strip()) if only else None,
            prometheus=not no_prometheus,
            commands=_parse_commands(commands),
        )
    except LaunchError as exc:
        raise click.UsageError(str(exc)) from exc
    try:
        code = Launcher(options, printer).run()
    finally:
        printer.close()
    sys.exit(code)


@main.command("logs")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=STATE_DIR,
    show_default=True,
)
@click.option("--order", "order_id", required=True, metavar="ID", help="The order's id.")
@click.option(
    "--format",
    "log_format",
    type=click.Choice(LOG_FORMATS),
    default="auto",
    show_default=True,
    help="pretty: short lines (coloured on a terminal); json: the records as logged.",
)
def logs(state_dir: Path, order_id: str, log_format: str) -> None:
    """Print one order's journey across every process, oldest first.

    Reads <state-dir>/logs/*.log (written by `run`): the records that name the order, and
    those on the same trace (the relay's and the consumer's lines).
    """
    log_dir = state_dir / "logs"
    if not log_dir.is_dir():
        raise click.ClickException(f"{log_dir} not found: no `make run` has written logs here")
    entries = logview.order_journey(log_dir, order_id.strip())
    if not entries:
        raise click.ClickException(f"no log line in {log_dir} names order {order_id}")
    console = Console(soft_wrap=True, highlight=False, markup=False, emoji=False)
    if not _pretty(log_format, console.is_terminal):
        for entry in entries:
            click.echo(entry.line)
        return
    width = max(len(e.process) for e in entries)
    styles: dict[str, Style] = {}
    for entry in entries:
        style = styles.setdefault(entry.process, logview.process_style(len(styles)))
        name = Text(entry.process.ljust(width), style=style)
        console.print(logview.render_record(entry.record, name, received=entry.when))


@main.command("env")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=STATE_DIR,
    show_default=True,
)
def env(state_dir: Path) -> None:
    """Print shell exports for a running stack: `eval "$(steadfast-local env)"`.

    Sets API, WAREHOUSE, PROMETHEUS and TOKEN from run/endpoints.json, so the README's
    curl commands work as written.
    """
    path = state_dir / "run" / "endpoints.json"
    try:
        endpoints = json.loads(path.read_text())
    except FileNotFoundError:
        raise click.ClickException(f"{path} not found: is `make run` running?") from None
    exports = {
        "API": endpoints.get("reservation_api"),
        "WAREHOUSE": endpoints.get("warehouse_mock"),
        "PROMETHEUS": endpoints.get("prometheus"),
        "TOKEN": endpoints.get("admin_token"),
    }
    for name, value in exports.items():
        if value:
            click.echo(f"export {name}={shlex.quote(str(value))}")
