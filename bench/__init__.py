"""Benchmark of the served throughput against the models' own in-process limit.

``python -m bench`` (``--quick`` for a smoke run); see bench/README.md. The load generator
(``bench.load``) runs in a separate process and imports only the standard library and httpx.
"""
