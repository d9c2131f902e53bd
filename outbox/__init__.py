"""A transactional outbox: write events in the caller's transaction, relay them to Kafka.

This package is a library. It knows nothing of orders, never imports `services`, and
takes what it needs (an engine, a publisher) through constructor arguments.
"""
