"""A DB-backed retry engine for Kafka consumers.

Failures are classified as retryable or terminal in one place; retryable messages are
parked in a PostgreSQL table with logarithmic delays and re-driven by a rate-limited,
breaker-aware scheduler. A circuit breaker shared through PostgreSQL lets every consumer
and scheduler instance open and close together. This package is a library: it knows
nothing of orders and never imports `services` or `outbox`.
"""
