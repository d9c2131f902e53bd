"""Warehouse mock: a stock-reservation service that fails on purpose, tunable over HTTP.

It stands in for the real warehouse the consumer calls. Reservations are idempotent on the
``Idempotency-Key`` header; faults (errors, rejections, timeouts, latency, outages and timed
scenarios) are drawn from a seeded random sequence, so a test run is repeatable.

Modules: ``stock`` (levels and reservations), ``faults`` (configuration and injector),
``latency`` (delay distributions), ``stats`` (counters and metrics), ``models`` (HTTP
bodies), ``errors`` (error responses), ``middleware``, ``admin`` (admin routes), ``app``
(composition root), ``settings`` and ``cli`` (entry point).
"""
