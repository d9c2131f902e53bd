"""With faults off, no input makes the mock answer 5xx or break its documented schema."""

from __future__ import annotations

import asyncio
import random
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from services.warehouse_mock.app import create_app
from services.warehouse_mock.faults import FaultState
from services.warehouse_mock.models import (
    ErrorDetail,
    OutOfStockDetail,
    ReservationOut,
    Unprocessable,
)
from services.warehouse_mock.settings import WarehouseMockSettings

ADMIN = {"Authorization": "Bearer fuzz-token"}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=20,
)
skus = st.sampled_from(["SKU-A", "SKU-B", "OOS-1", "NEW"]) | st.text(max_size=5)
items = st.fixed_dictionaries(
    {"sku": skus, "quantity": st.integers(-2, 20) | json_values},
    optional={"extra": json_values},
)
reservation_bodies = (
    st.fixed_dictionaries(
        {"order_id": st.text(max_size=8) | json_values, "items": st.lists(items, max_size=4)}
    )
    | json_values
)
keys = (
    st.none()
    | st.sampled_from(["k1", "k2"])
    | st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=8)
)
fault_bodies = json_values | st.fixed_dictionaries(
    {},
    optional={
        "failure_rate": st.floats(-1, 2) | json_values,
        "status_codes": st.lists(st.integers(300, 700), max_size=3) | json_values,
        "latency": st.integers(-5, 70_000) | json_values,
        "scenario": st.lists(
            st.fixed_dictionaries({"duration_seconds": st.floats(-1, 10)}), max_size=2
        )
        | json_values,
    },
)

POST_MODELS: dict[int, type[BaseModel]] = {
    200: ReservationOut,
    201: ReservationOut,
    400: ErrorDetail,
    409: OutOfStockDetail,
    422: Unprocessable,
}


def new_app() -> Any:
    app_settings = WarehouseMockSettings(
        admin_token="fuzz-token", warehouse_stock={"SKU-A": 5, "SKU-B": 1}
    )
    return create_app(app_settings, rng=random.Random(0))


async def exchange(app: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://fuzz") as client:
        return await client.request(method, path, **kwargs)


# One app for all examples: state left by earlier examples (reservations made, keys used)
# is exactly what makes later examples hit the duplicate and conflict paths.
APP = new_app()
# Its own app: a fault config accepted here must not inject faults into the tests above.
FAULTS_APP = new_app()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=reservation_bodies, idempotency_key=keys)
def test_reservation_answers_stay_documented(body: Any, idempotency_key: str | None) -> None:
    headers = {} if idempotency_key is None else {"Idempotency-Key": idempotency_key}
    response = asyncio.run(exchange(APP, "POST", "/reservations", json=body, headers=headers))
    assert response.status_code in POST_MODELS, response.text
    POST_MODELS[response.status_code].model_validate(response.json())


@settings(max_examples=100, deadline=None)
@given(
    reservation_id=st.sampled_from(["k1", "k2"])
    # "." and ".." are dot-segments: a URL normalises them away before any route sees them.
    | st.text(min_size=1, max_size=30).filter(lambda s: s not in {".", ".."})
)
def test_release_answers_stay_documented(reservation_id: str) -> None:
    path = f"/reservations/{quote(reservation_id, safe='')}"
    response = asyncio.run(exchange(APP, "DELETE", path))
    assert response.status_code in {200, 404, 422}, response.text
    model = ReservationOut if response.status_code == 200 else Unprocessable
    model.model_validate(response.json())


@settings(max_examples=200, deadline=None)
@given(body=fault_bodies)
def test_fault_config_answers_stay_documented(body: Any) -> None:
    response = asyncio.run(exchange(FAULTS_APP, "PUT", "/admin/faults", json=body, headers=ADMIN))
    assert response.status_code in {200, 422}, response.text
    if response.status_code == 200:
        FaultState.model_validate(response.json())
    else:
        Unprocessable.model_validate(response.json())
