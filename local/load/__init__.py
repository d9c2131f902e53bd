"""`steadfast-load`: drive a running stack with a workload mix and check what became of it.

Modules, by role::

    cli.py        click entry point; flags → `LoadConfig`
    run.py        one load run: faults, placement, poison, settling, the summary
    target.py     endpoints (endpoints.json or flags) and the loopback guard
    workload.py   the mix (healthy, out_of_stock, flaky, poison) and order bodies
    runner.py     placement at a target rate or with N clients (httpx), bounded
    poison.py     raw undecodable events straight onto the topic (confluent-kafka)
    warehouse.py  the mock's admin API: faults and stats
    settle.py     wait until every order is final; check poison was dead-lettered
    report.py     percentiles, the summary table and its JSON

Errors::

    LoadError              root of everything this package raises on purpose
    ├── ConfigError        a flag or endpoint that cannot work (bad mix, non-loopback URL)
    └── TargetError        the stack answered wrongly or not at all
"""

from __future__ import annotations


class LoadError(Exception):
    """Root of the load generator's own errors."""


class ConfigError(LoadError):
    """The requested run cannot work as configured."""


class TargetError(LoadError):
    """The stack under load is unreachable or answered something unexpected."""
