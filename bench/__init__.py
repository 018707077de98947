"""Benchmark of the served throughput against the models' own in-process limit.

``python -m bench`` (``--quick`` for a smoke run); see bench/README.md. The load generator
is wrk, a separate process in C (``bench.load`` runs it with ``bench/wrk.lua``).
"""
