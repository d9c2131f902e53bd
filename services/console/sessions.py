"""Sign-in sessions: the admin token stays on the server, the browser holds a random id.

Signing in proves the operator knows the admin token; from then on the console calls the
admin APIs with its own copy of it (its settings), so no token is ever sent to the page.

A session is created only for the right token (compared in constant time). Its id travels
in an HttpOnly, SameSite=Strict cookie, so page scripts cannot read it and other sites
cannot send it; every mutating call must also carry the session's CSRF token in a header,
which only a script of this origin can have read. Sessions live in memory: a restarted
console asks the operator to sign in again, which is the safe failure.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import SecretStr

COOKIE = "steadfast_console"
CSRF_HEADER = "x-csrf-token"
MAX_SESSIONS = 1000


@dataclass(frozen=True, kw_only=True)
class Session:
    id: str
    csrf: str
    expires_at: float


class SessionStore:
    def __init__(
        self, *, token: SecretStr, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._expected = token.get_secret_value().encode()
        self._ttl = ttl_seconds
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def sign_in(self, given: str) -> Session | None:
        """A new session for the right token, else None."""
        if not secrets.compare_digest(given.encode(), self._expected):
            return None
        self._expire()
        if len(self._sessions) >= MAX_SESSIONS:
            # Bounded memory: the oldest session gives way, not the new sign-in.
            oldest = min(self._sessions.values(), key=lambda s: s.expires_at)
            del self._sessions[oldest.id]
        session = Session(
            id=secrets.token_urlsafe(32),
            csrf=secrets.token_urlsafe(32),
            expires_at=self._clock() + self._ttl,
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if session.expires_at <= self._clock():
            del self._sessions[session_id]
            return None
        return session

    def sign_out(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    @staticmethod
    def csrf_ok(session: Session, header: str | None) -> bool:
        return header is not None and secrets.compare_digest(header.encode(), session.csrf.encode())

    def _expire(self) -> None:
        now = self._clock()
        for sid in [sid for sid, s in self._sessions.items() if s.expires_at <= now]:
            del self._sessions[sid]
