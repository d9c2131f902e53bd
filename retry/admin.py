"""Manual reprocessing: a FastAPI router factory over the retry table (and the breaker).

The application mounts `make_admin_router(store, token=...)` (routes under `/admin`).
Every route needs `Authorization: Bearer <token>`; the token is compared in constant time.
Every call is logged with `event.action=admin_action`: who (the `X-Actor` header when
given, always with a fingerprint of the token, never the token), what, and how many rows.

"Reprocess" makes a row due now; the scheduler picks it up on its next pass, under the
same rate limit, breaker and per-key order as any other row.
"""

# No `from __future__ import annotations` here: FastAPI reads the route signatures at
# runtime, and they refer to dependencies defined inside `make_admin_router`.

import base64
import hashlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncConnection

from retry.rows import InvalidQuery, RetryFilter, RetryRow, RetrySummary
from retry.store import CANCELLABLE_STATES, MAX_PAGE, REQUEUEABLE_STATES, RetryStore

log = logging.getLogger(__name__)

RetryState = Literal["PENDING", "IN_PROGRESS", "SUCCEEDED", "DEAD", "CANCELLED"]
MAX_BULK = 10_000
_UNPROCESSABLE = 422  # named differently across Starlette versions
_ACTOR_UNSAFE = re.compile(r"[^\w.@:+ -]")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _not_a_number(value: object) -> object:
    # pydantic reads a bare number as Unix time, but the published contract is an RFC 3339
    # date-time; an offset is required too (AwareDatetime), as the table stores timestamptz.
    if isinstance(value, int | float) or (isinstance(value, str) and _NUMBER.fullmatch(value)):
        raise ValueError("expected an RFC 3339 date-time with a UTC offset")
    return value


Timestamp = Annotated[AwareDatetime, BeforeValidator(_not_a_number)]


class AdminBreaker(Protocol):
    async def state(self) -> str: ...
    async def snapshot(self) -> Mapping[str, Any]: ...
    async def force(self, state: str | None, actor: str, /) -> object: ...


@dataclass(frozen=True)
class AdminAction:
    """What an operator did; passed to `on_action` (e.g. to count or notify)."""

    actor: str
    action: str
    rows: int
    target: str | None = None
    dry_run: bool | None = None


# -- response and request models --------------------------------------------------------------


class RetryItem(BaseModel):
    id: int
    handler: str
    message_id: str
    source_topic: str
    source_partition: int | None
    source_offset: int | None
    key: str | None
    state: RetryState
    error_class: str
    last_error: str | None
    attempts: int
    max_attempts: int
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime


class HistoryEntry(BaseModel):
    at: datetime
    outcome: str
    attempt: int | None = None
    error_class: str | None = None
    reason: str | None = None
    by: str | None = None


class RetryDetail(RetryItem):
    source_timestamp: datetime | None
    consumer_group: str | None
    headers: dict[str, str]
    payload_base64: str
    payload_text: str | None = Field(description="The payload as UTF-8, when it is UTF-8")
    lease_owner: str | None
    lease_expires_at: datetime | None
    history: list[HistoryEntry]


class RetryPage(BaseModel):
    items: list[RetryItem]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


class BulkReprocess(BaseModel):
    state: list[RetryState] = Field(
        default_factory=list, description="Narrowed to the requeueable states, PENDING and DEAD"
    )
    error_class: str | None = None
    key: str | None = None
    created_from: Timestamp | None = None
    created_to: Timestamp | None = None
    dry_run: bool = False
    limit: int = Field(default=1000, ge=1, le=MAX_BULK)


class BulkResult(BaseModel):
    matched: int = Field(description="Requeueable rows the filter selected (at most `limit`)")
    requeued: int = Field(description="Rows made due now; 0 on a dry run")
    dry_run: bool
    limit: int


class CancelRequest(BaseModel):
    reason: str | None = Field(default=None, max_length=500)


class BreakerView(BaseModel):
    state: str
    snapshot: dict[str, Any]


class BreakerForce(BaseModel):
    force: Literal["OPEN", "CLOSED"] | None = Field(
        description="Hold the breaker OPEN or CLOSED; null gives it back to automatic control"
    )


class ErrorOut(BaseModel):
    detail: str


class FieldError(BaseModel):
    """One item of FastAPI's validation error list (it may carry more keys, e.g. input)."""

    model_config = ConfigDict(extra="allow")
    loc: list[str | int]
    msg: str
    type: str


class Unprocessable(BaseModel):
    """422: a list for schema violations, a sentence for rule violations (a bad cursor,
    created_from after created_to)."""

    detail: str | list[FieldError]


Responses = dict[int | str, dict[str, Any]]
_UNAUTHORIZED: Responses = {
    401: {
        "model": ErrorOut,
        "description": "Missing or wrong bearer token",
        "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
    },
    _UNPROCESSABLE: {"model": Unprocessable, "description": "Invalid request"},
}
_NO_ROW: Responses = {404: {"model": ErrorOut, "description": "No such retry row"}}
_CONFLICT: Responses = {
    409: {"model": ErrorOut, "description": "The row is not in a state for this"}
}
_NO_BREAKER: Responses = {404: {"model": ErrorOut, "description": "No breaker is configured"}}


def _item(row: RetrySummary) -> RetryItem:
    names = RetryItem.model_fields
    return RetryItem.model_validate({k: v for k, v in asdict(row).items() if k in names})


def _detail(row: RetryRow) -> RetryDetail:
    data = {k: v for k, v in asdict(row).items() if k not in ("payload", "history")}
    try:
        text: str | None = row.payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    history = [HistoryEntry.model_validate(e) for e in row.history if "at" in e and "outcome" in e]
    return RetryDetail.model_validate(
        {
            **data,
            "payload_base64": base64.b64encode(row.payload).decode(),
            "payload_text": text,
            "history": history,
        }
    )


def _filter(
    states: list[RetryState],
    error_class: str | None,
    key: str | None,
    created_from: datetime | None,
    created_to: datetime | None,
) -> RetryFilter:
    try:
        return RetryFilter(
            states=tuple(states),
            error_class=error_class,
            key=key,
            created_from=created_from,
            created_to=created_to,
        )
    except InvalidQuery as exc:
        raise HTTPException(_UNPROCESSABLE, str(exc)) from exc


def token_fingerprint(token: str) -> str:
    """Names the token in logs without revealing it."""
    return hashlib.sha256(token.encode()).hexdigest()[:8]


def make_admin_router(
    store: RetryStore,
    *,
    token: str,
    breaker: AdminBreaker | None = None,
    on_action: Callable[[AdminAction], None] | None = None,
    on_cancel: Callable[[AsyncConnection, RetryRow], Awaitable[None]] | None = None,
    prefix: str = "/admin",
) -> APIRouter:
    """`on_cancel` lets the application settle what a cancelled message was for (its own
    status for it would otherwise stay "retrying" forever), in the cancel's transaction."""
    if not token:
        raise ValueError("the admin API needs a non-empty bearer token")
    expected = token.encode()
    fingerprint = token_fingerprint(token)
    bearer = HTTPBearer(auto_error=False, description="The admin token")

    async def actor(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
        x_actor: Annotated[str | None, Header(max_length=200)] = None,
    ) -> str:
        given = credentials.credentials.encode() if credentials else b""
        if not secrets.compare_digest(given, expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )
        name = _ACTOR_UNSAFE.sub("", x_actor or "").strip()[:64]
        return f"{name} (token {fingerprint})" if name else f"token {fingerprint}"

    Actor = Annotated[str, Depends(actor)]
    RowId = Annotated[int, Path(ge=1)]

    def audit(action: AdminAction) -> None:
        log.info(
            f"admin {action.action} by {action.actor}: {action.rows} row(s)",
            extra={
                "event.action": "admin_action",
                "admin.action": action.action,
                "admin.rows": action.rows,
                "admin.target": action.target,
                "admin.dry_run": action.dry_run,
                "user.name": action.actor,
            },
        )
        if on_action is not None:
            try:
                on_action(action)
            except Exception:
                log.exception("on_action hook failed", extra={"event.action": "admin_hook_failed"})

    async def existing(row_id: int) -> RetryRow:
        row = await store.get(row_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no retry row {row_id}")
        return row

    router = APIRouter(prefix=prefix, tags=["admin"], responses=_UNAUTHORIZED)

    @router.get("/retries", response_model=RetryPage)
    async def list_retries(
        who: Actor,
        state: Annotated[list[RetryState], Query()] = [],  # noqa: B006 (FastAPI copies it)
        error_class: str | None = None,
        key: str | None = None,
        created_from: Timestamp | None = None,
        created_to: Timestamp | None = None,
        cursor: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    ) -> RetryPage:
        filters = _filter(state, error_class, key, created_from, created_to)
        try:
            page = await store.list(filters, cursor=cursor, limit=limit)
        except InvalidQuery as exc:
            raise HTTPException(_UNPROCESSABLE, str(exc)) from exc
        audit(AdminAction(who, "list", len(page.items)))
        return RetryPage(items=[_item(r) for r in page.items], next_cursor=page.next_cursor)

    @router.get("/retries/{row_id:int}", response_model=RetryDetail, responses=_NO_ROW)
    async def get_retry(row_id: RowId, who: Actor) -> RetryDetail:
        row = await existing(row_id)
        audit(AdminAction(who, "get", 1, target=str(row_id)))
        return _detail(row)

    @router.post(
        "/retries/{row_id:int}/reprocess", response_model=RetryItem, responses=_NO_ROW | _CONFLICT
    )
    async def reprocess_one(row_id: RowId, who: Actor) -> RetryItem:
        row = await existing(row_id)
        if row.state not in REQUEUEABLE_STATES:
            raise HTTPException(status.HTTP_409_CONFLICT, f"row {row_id} is {row.state}")
        result = await store.requeue(ids=[row_id], actor=who)
        if not result.requeued:  # claimed or finished between the read and the update
            raise HTTPException(status.HTTP_409_CONFLICT, f"row {row_id} changed; try again")
        audit(AdminAction(who, "reprocess", 1, target=str(row_id)))
        return _item(await existing(row_id))

    @router.post("/retries/reprocess", response_model=BulkResult)
    async def reprocess_bulk(body: BulkReprocess, who: Actor) -> BulkResult:
        filters = _filter(
            body.state, body.error_class, body.key, body.created_from, body.created_to
        )
        result = await store.requeue(
            filters=filters, dry_run=body.dry_run, limit=body.limit, actor=who
        )
        rows = result.matched if body.dry_run else result.requeued
        audit(
            AdminAction(who, "bulk_reprocess", rows, target=_describe(body), dry_run=body.dry_run)
        )
        return BulkResult(
            matched=result.matched, requeued=result.requeued, dry_run=body.dry_run, limit=body.limit
        )

    @router.post(
        "/retries/{row_id:int}/cancel", response_model=RetryItem, responses=_NO_ROW | _CONFLICT
    )
    async def cancel(row_id: RowId, who: Actor, body: CancelRequest | None = None) -> RetryItem:
        row = await existing(row_id)
        if row.state not in CANCELLABLE_STATES or not await store.cancel(
            row_id, who, reason=body.reason if body else None, settle=on_cancel
        ):
            raise HTTPException(status.HTTP_409_CONFLICT, f"row {row_id} is {row.state}")
        audit(AdminAction(who, "cancel", 1, target=str(row_id)))
        return _item(await existing(row_id))

    async def view() -> BreakerView:
        if breaker is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no breaker is configured")
        return BreakerView(state=await breaker.state(), snapshot=dict(await breaker.snapshot()))

    @router.get("/breaker", response_model=BreakerView, responses=_NO_BREAKER)
    async def get_breaker(who: Actor) -> BreakerView:
        return await view()

    @router.post("/breaker", response_model=BreakerView, responses=_NO_BREAKER)
    async def force_breaker(body: BreakerForce, who: Actor) -> BreakerView:
        if breaker is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no breaker is configured")
        await breaker.force(body.force, who)
        audit(AdminAction(who, "breaker_force", 0, target=body.force or "automatic"))
        return await view()

    return router


def _describe(body: BulkReprocess) -> str:
    """The filter, compactly, for the audit line."""
    parts = body.model_dump(exclude={"dry_run"}, exclude_none=True, mode="json")
    return " ".join(f"{k}={v}" for k, v in parts.items() if v not in ([], None))
