"""Admin routes of the warehouse mock (faults, stats, reset), behind a bearer token."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import SecretStr

from services.warehouse_mock.faults import FaultConfig, FaultInjector, FaultState
from services.warehouse_mock.models import StatsReport, error_responses

logger = logging.getLogger(__name__)

_bearer = HTTPBearer(auto_error=False, description="STEADFAST_ADMIN_TOKEN")


def admin_router(
    *,
    token: SecretStr,
    injector: FaultInjector,
    report: Callable[[], StatsReport],
    reset: Callable[[], None],
) -> APIRouter:
    expected = token.get_secret_value().encode()

    def require_admin(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        # compare_digest: the time taken must not reveal how much of a guess was right.
        if credentials is None or not secrets.compare_digest(
            credentials.credentials.encode(), expected
        ):
            raise HTTPException(
                401, "missing or invalid bearer token", headers={"WWW-Authenticate": "Bearer"}
            )

    router = APIRouter(
        prefix="/admin",
        tags=["admin"],
        dependencies=[Depends(require_admin)],
        responses=error_responses(401),
    )

    @router.get("/faults", response_model=FaultState)
    async def get_faults() -> FaultState:
        return injector.state()

    @router.put("/faults", response_model=FaultState, responses=error_responses(400, 413, 422))
    async def put_faults(config: FaultConfig) -> FaultState:
        """Replace the fault configuration. A scenario in it starts now."""
        injector.configure(config)
        logger.info(
            "fault configuration replaced",
            extra={"event.action": "faults_configured", "labels.faults": config.model_dump_json()},
        )
        return injector.state()

    @router.get("/stats", response_model=StatsReport)
    async def get_stats() -> StatsReport:
        return report()

    @router.post("/reset", response_model=StatsReport)
    async def post_reset() -> StatsReport:
        """Restore stock, stats, faults and the random sequence to the start state."""
        reset()
        logger.info("warehouse mock reset", extra={"event.action": "warehouse_reset"})
        return report()

    return router
