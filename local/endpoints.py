"""`<state>/run/endpoints.json`, the launcher's contract with tests and tools.

It holds URLs, the admin token, infrastructure addresses, the launcher's pid and each
child's pid by process name (`consumer-2`), and `"ready": true` once every HTTP endpoint
answers. It is rewritten atomically (temp file created with mode 600, then renamed) and
removed when the launcher exits. The launcher keeps its `owned.json` the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path
from typing import Any


class EndpointsFile:
    """`<state>/run/endpoints.json`: written whole, atomically, never wider than mode 600."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        self._lock = threading.Lock()

    def update(self, **values: Any) -> None:
        with self._lock:
            self.data.update(values)
            self._write()

    def set_in(self, key: str, name: str, value: Any) -> None:
        with self._lock:
            self.data.setdefault(key, {})[name] = value
            self._write()

    def _write(self) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(self.data, out, indent=2, sort_keys=True)
            out.write("\n")
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with self._lock, contextlib.suppress(FileNotFoundError):
            self.path.unlink()
