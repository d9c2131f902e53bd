"""steadfast's deployable services: the reservation service and the warehouse mock.

Each subpackage is a composition of the `retry` and `outbox` libraries with its own
frameworks at the edges. `services.common` holds what every process shares at start-up
(logging, metrics endpoint, settings base).
"""
