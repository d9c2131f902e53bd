"""Alertmanager for the local stack: its binary, its configuration, its command line.

Started by the launcher next to Prometheus (only when both are installed) on a free
loopback port, clustering off (it would otherwise listen on 0.0.0.0:9094), its data in
the state folder. The configuration is rendered from `local/alertmanager.yml` with the
console's webhook as the default route; the webhook's bearer token is read from a file
(mode 600), so it appears in no configuration and no command line.

Timings come from the environment, so a test can make the whole path take seconds:
`STEADFAST_LOCAL_ALERT_GROUP_WAIT`, `_GROUP_INTERVAL` and `_REPEAT_INTERVAL` (Alertmanager
durations), `STEADFAST_LOCAL_ALERT_RULES` (another rules file) and
`STEADFAST_LOCAL_SCRAPE_INTERVAL` (Prometheus' scrape and evaluation interval).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import string
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from local.infra import LOOPBACK

TEMPLATE = Path(__file__).parent / "alertmanager.yml"
BINARIES = ("prometheus-alertmanager", "alertmanager")  # Debian's name, upstream's
WEBHOOK_PATH = "/alertmanager/webhook"
_DURATION = re.compile(r"^\d+(ms|s|m|h|d|w|y)$")


def binary() -> str | None:
    for name in BINARIES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass(frozen=True, kw_only=True)
class Timing:
    group_wait: str = "10s"
    group_interval: str = "1m"
    repeat_interval: str = "4h"
    scrape_interval: str = "5s"

    def __post_init__(self) -> None:
        for name in ("group_wait", "group_interval", "repeat_interval", "scrape_interval"):
            value = getattr(self, name)
            if not _DURATION.match(value):
                raise ValueError(f"{name}={value!r} is not a duration such as 10s or 1m")

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Timing:
        prefix = "STEADFAST_LOCAL_"
        values = {
            "group_wait": env.get(f"{prefix}ALERT_GROUP_WAIT"),
            "group_interval": env.get(f"{prefix}ALERT_GROUP_INTERVAL"),
            "repeat_interval": env.get(f"{prefix}ALERT_REPEAT_INTERVAL"),
            "scrape_interval": env.get(f"{prefix}SCRAPE_INTERVAL"),
        }
        return cls(**{k: v for k, v in values.items() if v})


def rules_file(env: Mapping[str, str], default: Path) -> Path:
    given = env.get("STEADFAST_LOCAL_ALERT_RULES")
    return Path(given).resolve() if given else default


def render(*, webhook_url: str | None, credentials_file: Path, timing: Timing) -> str:
    """The configuration; without a console, a receiver that sends nowhere."""
    receiver: dict[str, object] = {"name": "console"}
    if webhook_url is not None:
        receiver["webhook_configs"] = [
            {
                "url": webhook_url,
                "send_resolved": True,
                "http_config": {
                    "authorization": {"type": "Bearer", "credentials_file": str(credentials_file)}
                },
            }
        ]
    return string.Template(TEMPLATE.read_text()).substitute(
        group_wait=json.dumps(timing.group_wait),
        group_interval=json.dumps(timing.group_interval),
        repeat_interval=json.dumps(timing.repeat_interval),
        receivers=json.dumps([receiver]),
    )


def write_config(run_dir: Path, *, token: str, console_url: str | None, timing: Timing) -> Path:
    """`<run>/alertmanager.yml` and its token file, both mode 600."""
    credentials = run_dir / "alertmanager-webhook.token"
    _write_private(credentials, token)
    config = run_dir / "alertmanager.yml"
    webhook = f"{console_url}{WEBHOOK_PATH}" if console_url else None
    _write_private(config, render(webhook_url=webhook, credentials_file=credentials, timing=timing))
    return config


def command(executable: str, config: Path, storage: Path, port: int) -> str:
    args = [
        executable,
        f"--config.file={config}",
        f"--storage.path={storage}",
        f"--web.listen-address={LOOPBACK}:{port}",
        f"--web.external-url=http://{LOOPBACK}:{port}",
        "--cluster.listen-address=",  # no gossip port: one instance, loopback only
        "--log.format=json",
    ]
    return "exec " + shlex.join(args)


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
