"""The ops console in a real browser: Debian's Chromium, driven by Playwright.

The whole stack runs under the launcher, as `make run` starts it. An operator signs in,
places orders from the page, takes the warehouse down from the page, watches the breaker
open and the orders wait, brings the warehouse back, watches them reserved, makes one
order DEAD (a terminal 400 fault set in the page's fault knobs) and reprocesses it from
the retry table. Outcomes are checked where they happen too: the orders table and the
mock's per-order reservation counts. Screenshots go to results/console/.

Every wait is on a condition the page shows (Playwright's auto-retrying expectations), so
a slow machine only makes it slower, never wrong.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
import pytest

from local.infra import libpq_url

if TYPE_CHECKING:
    from playwright.sync_api import BrowserContext, Page

    from tests.e2e.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "results" / "console"
CHROMIUM = "/usr/bin/chromium"
# No connection may leave the machine: without these, Chromium's background services
# try the network and their attempts pile up here.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Fewer calls open the breaker, so a small outage shows it within seconds.
STACK_ENV = {
    "STEADFAST_BREAKER__MIN_CALLS": "5",
    "STEADFAST_BREAKER__OPEN_SECONDS": "3",
    "STEADFAST_RETRY__BASE_DELAY_SECONDS": "0.5",
    "STEADFAST_RETRY__MAX_DELAY_SECONDS": "3",
}
HEALTHY_ORDERS = 3
OUTAGE_ORDERS = 12
WAIT_MS = 45_000


def _need_browser() -> None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        pytest.fail("the playwright package is missing: install the dev extra")
    if not Path(CHROMIUM).exists():
        message = f"{CHROMIUM} is missing; `make browser-tools` installs Debian's chromium"
        if os.environ.get("CI") == "true" or shutil.which("apt-get") is None:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def browser() -> Iterator[BrowserContext]:
    _need_browser()
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="steadfast-chromium-")
    try:
        with sync_playwright() as pw:
            context = pw.chromium.launch_persistent_context(
                profile,
                executable_path=CHROMIUM,
                args=CHROMIUM_ARGS,
                headless=True,
                viewport={"width": 1300, "height": 900},
            )
            try:
                yield context
            finally:
                context.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def _statuses(stack: Stack) -> dict[str, int]:
    with psycopg.connect(libpq_url(stack.database_url)) as conn:
        rows = conn.execute("SELECT status, count(*) FROM orders GROUP BY status").fetchall()
    return {status: int(n) for status, n in rows}


def _count(page: Page, kind: str, status: str) -> Any:
    return page.locator(f"#{kind}-count-{status}")


def _shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _place(page: Page, how_many: int, sku: str = "SKU-1") -> None:
    from playwright.sync_api import expect

    page.fill("#place-sku", sku)
    page.fill("#place-count", str(how_many))
    page.click("#place-submit")
    expect(page.locator("#place-result")).to_have_text(
        f"placed {how_many} order(s)", timeout=WAIT_MS
    )


def _wait_counts(page: Page, expected: dict[str, int], timeout_ms: int = WAIT_MS) -> None:
    """Until every order count on the page equals `expected` (missing statuses: 0)."""
    want = {s: expected.get(s, 0) for s in ("PENDING", "RETRY_PENDING", "RESERVED", "DEAD")}
    page.wait_for_function(
        """want => Object.entries(want).every(([s, n]) => {
             const box = document.getElementById(`order-count-${s}`);
             return box && Number(box.dataset.count) === n;
           })""",
        arg=want,
        timeout=timeout_ms,
    )


def test_an_operator_runs_the_tour_from_the_console(
    stack_factory: Callable[..., Stack], browser: BrowserContext
) -> None:
    from playwright.sync_api import expect

    started = time.monotonic()
    stack = stack_factory(env=STACK_ENV)
    console = stack.endpoints["console"]
    assert console, stack.output_tail()
    page = browser.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console",
        lambda msg: (
            problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
        ),
    )

    # -- sign in: a wrong token is refused, the right one gives an HttpOnly strict cookie
    response = page.goto(console)
    assert response is not None
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    page.fill("#token", "not-the-token")
    page.click("#sign-in-form button")
    expect(page.locator("#sign-in-error")).to_have_text("That is not the admin token.")
    page.fill("#token", stack.admin_token)
    page.click("#sign-in-form button")
    expect(page.locator("#console")).to_be_visible()
    problems.clear()  # the refused token's 401, which the browser logs as an error
    (cookie,) = browser.cookies(console)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict", cookie
    assert stack.admin_token not in cookie["value"]
    assert stack.admin_token not in page.url
    expect(page.locator("#charts-status")).to_contain_text("Prometheus is not running")

    # -- healthy: orders placed from the page are reserved
    _place(page, HEALTHY_ORDERS)
    _wait_counts(page, {"RESERVED": HEALTHY_ORDERS})
    expect(page.locator("#breaker-state-warehouse")).to_have_text("CLOSED")
    _shot(page, "01-healthy")

    # -- outage from the page: the breaker opens, new orders wait
    page.click("#outage-toggle")
    expect(page.locator("#outage-state")).to_have_text("ON")
    _place(page, OUTAGE_ORDERS)
    expect(page.locator("#breaker-state-warehouse")).to_have_text("OPEN", timeout=WAIT_MS)
    expect(page.locator("#transitions")).to_contain_text("CLOSED → OPEN")
    page.wait_for_function(
        """n => ["PENDING", "RETRY_PENDING"].reduce((sum, s) =>
             sum + Number(document.getElementById(`order-count-${s}`).dataset.count), 0) === n""",
        arg=OUTAGE_ORDERS,
        timeout=WAIT_MS,
    )
    waiting = _statuses(stack)
    assert waiting.get("RESERVED") == HEALTHY_ORDERS, waiting
    _shot(page, "02-outage-breaker-open")

    # -- recovery from the page: every order ends RESERVED, the breaker closes
    page.click("#outage-toggle")
    expect(page.locator("#outage-state")).to_have_text("off")
    total = HEALTHY_ORDERS + OUTAGE_ORDERS
    _wait_counts(page, {"RESERVED": total})
    expect(page.locator("#breaker-state-warehouse")).to_have_text("CLOSED", timeout=WAIT_MS)
    _shot(page, "03-recovered")

    # -- a terminal fault (400) set in the knobs form makes the next order DEAD
    page.fill("#f-failure-rate", "1")
    page.fill("#f-status-codes", "400")
    page.click("#faults-apply")
    expect(page.locator("#faults-result")).to_contain_text("applied")
    _place(page, 1, sku="SKU-DEAD")
    _wait_counts(page, {"RESERVED": total, "DEAD": 1})
    page.fill("#f-failure-rate", "0")
    page.fill("#f-status-codes", "500,502,503")
    page.click("#faults-apply")
    expect(page.locator("#faults-result")).to_contain_text("applied")

    # -- the retry table shows it; a bulk dry run counts it; reprocess the row
    page.check('#retry-filter input[value="DEAD"]')
    page.click("#retry-search")
    row = page.locator('#retry-table tbody tr[data-state="DEAD"]')
    expect(row).to_have_count(1, timeout=WAIT_MS)
    expect(row).to_contain_text("http_400")
    dead_order = row.get_attribute("data-key")
    assert dead_order
    page.click("#bulk-dry-run")
    expect(page.locator("#bulk-result")).to_have_text(
        re.compile(r"^1 row\(s\) would be reprocessed")
    )
    expect(page.locator("#bulk-confirm")).to_be_visible()
    _shot(page, "04-dead-and-dry-run")
    page.click("#bulk-cancel")
    row.locator('button[data-action="reprocess"]').click()
    expect(page.locator("#retry-result")).to_contain_text("reprocess done")
    _wait_counts(page, {"RESERVED": total + 1})

    # -- its journey: DEAD with the error class, then RESERVED, with a trace id
    page.fill("#search-id", dead_order)
    page.click("#search-form button")
    expect(page.locator("#journey-status")).to_have_text("RESERVED")
    journey = page.locator("#journey-table")
    expect(journey).to_contain_text("DEAD")
    expect(journey).to_contain_text("http_400")
    expect(page.locator("#journey-summary")).to_contain_text(re.compile(r"[0-9a-f]{32}"))
    _shot(page, "05-reprocessed-journey")

    # -- where it happened: the database and the warehouse agree, nothing twice
    assert _statuses(stack) == {"RESERVED": total + 1}
    stats = stack.get("warehouse", "/admin/stats").json()
    assert stats["orders_reserved"] == total + 1, stats
    assert stats["orders_reserved_more_than_once"] == 0, stats
    assert stats["duplicate_reservations"] == 0, stats
    assert problems == [], problems
    print(f"console browser test: {time.monotonic() - started:.1f}s")  # noqa: T201
