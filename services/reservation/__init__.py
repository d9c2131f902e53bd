"""The reservation service: clients place orders, the consumer reserves stock.

Processes (each its own console script): the REST API (`api`), the outbox relay, the
Kafka consumer and the retry scheduler. `app.py` is the composition root that wires the
`outbox` and `retry` libraries to this domain.
"""
