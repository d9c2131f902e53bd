"""Ways to run steadfast on one machine.

`infra` finds or starts PostgreSQL and a Kafka-protocol broker (no Docker needed),
`launcher` runs every process under honcho with prefixed logs (what `make run` does,
and what the e2e tests start), and `docker-compose.yml` is the same stack on real images.
"""
