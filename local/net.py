"""Loopback helpers every launcher module shares: free ports and port checks."""

from __future__ import annotations

import contextlib
import socket
import time

LOOPBACK = "127.0.0.1"


class PortTimeout(RuntimeError):
    """A port did not open in time."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.3) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def wait_for_port(host: str, port: int, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return
        time.sleep(0.05)
    raise PortTimeout(f"{what} did not open {host}:{port} within {timeout:.0f}s")
