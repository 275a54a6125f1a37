"""Benchmarks (not tests): the core micro-benchmarks and the ``router-stream bench`` harness.

``harness`` runs every contender on the same broker with the same workload (``workload``) and
writes the JSON, plots and docs/benchmarks.md (``report``). ``stats`` holds the pure parts
(percentiles, lag boundedness, the sustainable-rate search) that tests/unit/test_bench_*.py check.
"""
