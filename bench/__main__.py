"""`python -m bench [NAME ...]` (what `make bench` runs): every bench, then one combined table.

Each bench runs with its own defaults (`python -m bench.bench_relay --help` for a single
one with options), writes its `results/bench-<name>.json`, and prints its own table. A
bench that crashes is reported as failed and the others still run. Exits non-zero when
any bench missed a target, so a CI job can gate on it if it wants to.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from collections.abc import Callable

from bench.common import BenchResult, print_table

log = logging.getLogger("bench")

# bench_e2e is another module's; it joins when present.
BENCHES = ("relay", "consumer", "recovery", "e2e", "scaling", "console", "idle")


def _entry(name: str) -> Callable[[list[str]], BenchResult] | None:
    try:
        module = importlib.import_module(f"bench.bench_{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"bench.bench_{name}":
            return None
        raise
    main: Callable[[list[str]], BenchResult] = module.main
    return main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the steadfast benchmarks.")
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"some of {', '.join(BENCHES)}")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(BENCHES)
    if unknown:
        parser.error(f"unknown bench {sorted(unknown)}; choose from {', '.join(BENCHES)}")
    logging.basicConfig(level=logging.WARNING)
    results: list[BenchResult] = []
    crashed: list[str] = []
    for name in args.names or BENCHES:
        entry = _entry(name)
        if entry is None:
            log.warning("bench %s not present; skipped", name)
            continue
        try:
            results.append(entry([]))
        except Exception:
            # One broken bench must not hide the others' numbers.
            traceback.print_exc()
            crashed.append(name)
    print_table(results, title="steadfast benchmarks (make bench)")
    if crashed:
        log.error("benches that crashed: %s", ", ".join(crashed))
    return 0 if results and not crashed and all(r.passed for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
