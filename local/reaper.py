"""The launcher's dead-man switch: when the launcher is gone, stop everything it started.

`Reaper.start(run_id)` spawns `python -m local.reaper RUN_ID LAUNCHER_PID` in its own
session. The launcher re-executes itself with `STEADFAST_RUN_ID=RUN_ID` in its environment
before it starts anything (`tag_this_process`), so every process it forks or starts
carries the id where `/proc/<pid>/environ` shows it: honcho's relay processes (forks of
the launcher, which can block forever writing to a queue nobody reads once it is dead),
each service, the Kafka JVMs, PostgreSQL's postmaster. The reaper waits on a pidfd of the
launcher (no polling, no CPU), and when the launcher has exited, however it died, `kill -9`
included, it finds every live process whose environment carries that id, sends SIGTERM,
and SIGKILL to any left after a grace. After a clean stop it finds nothing and exits. (A
pipe's EOF would not do: honcho forks its relay processes without exec, and they would
hold the pipe's write end open.)

Environment tagging, rather than a list of pids kept by the launcher, leaves no window in
which a child was started but not yet recorded, and reaches grandchildren too. Written
here because no process-running library covers a supervisor that is killed with -9.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

RUN_ID_VARIABLE = "STEADFAST_RUN_ID"
_TAGGED_PID_VARIABLE = "STEADFAST_RUN_LAUNCHER_PID"
GRACE_SECONDS = 4.0


def tag_this_process() -> str:
    """Give this process a fresh run id in its initial environment; returns the id.

    `os.environ` changes after start-up are invisible in `/proc/<pid>/environ`, and forks
    that never exec keep that initial block, so the process re-executes itself once, in
    place (same pid), with the id set. A run id inherited from some other launcher is
    replaced: the pid marker tells an inherited tag from our own.
    """
    if os.environ.get(_TAGGED_PID_VARIABLE) == str(os.getpid()):
        return os.environ[RUN_ID_VARIABLE]
    os.environ[RUN_ID_VARIABLE] = uuid.uuid4().hex
    os.environ[_TAGGED_PID_VARIABLE] = str(os.getpid())
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


class Reaper:
    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self._process = process

    @classmethod
    def start(cls, run_id: str) -> Reaper:
        env = {
            k: v for k, v in os.environ.items() if k not in (RUN_ID_VARIABLE, _TAGGED_PID_VARIABLE)
        }
        process = subprocess.Popen(
            [sys.executable, "-m", "local.reaper", run_id, str(os.getpid())],
            stdin=subprocess.DEVNULL,
            env=env,  # the reaper must not find itself
            start_new_session=True,  # a Ctrl-C for the launcher is not for the reaper
            cwd=str(Path(__file__).resolve().parent.parent),
        )
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid


def tagged(run_id: str, *, exclude: set[int]) -> Iterator[int]:
    """Pids of live processes whose environment has `STEADFAST_RUN_ID=run_id`."""
    needle = f"{RUN_ID_VARIABLE}={run_id}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone already, or not ours to read
            continue
        if state != "Z":
            yield int(entry.name)


def reap(run_id: str, grace: float = GRACE_SECONDS) -> list[int]:
    """SIGTERM every tagged process, SIGKILL what is left after `grace`; returns the pids."""
    me = {os.getpid()}
    found = sorted(tagged(run_id, exclude=me))
    for pid in found:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(True for _ in tagged(run_id, exclude=me)):
        time.sleep(0.1)
    for pid in tagged(run_id, exclude=me):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return found


def wait_exit(pid: int) -> None:
    """Block until process `pid` (not our child) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError:  # pidfd_open needs Linux 5.3: fall back to polling
        while Path(f"/proc/{pid}").exists():
            time.sleep(0.5)
        return
    try:
        select.select([fd], [], [])  # readable once the process exits
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    run_id, launcher = argv[1], int(argv[2])
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    wait_exit(launcher)
    found = reap(run_id)
    if found:
        sys.stderr.write(
            f"steadfast-local reaper: the launcher is gone; stopped {len(found)} "
            f"process(es) it left: {found}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
