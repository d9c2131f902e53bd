"""Component and end-to-end benchmarks behind `make bench`.

Each bench starts its own infrastructure (the same way `make run` does, through
`local.infra`), pre-fills work (outbox rows, topic records, parked retry rows), runs the
real process against it, and reports throughput and the peak RSS of every process it
started. Results are printed as a rich table and written to `results/bench-<name>.json`.

Run one with `python -m bench.bench_relay --rows 100000`, or all with `python -m bench`.
Everything listens on loopback only, and every load loop is bounded in count and in time.
"""
