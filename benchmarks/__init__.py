"""Benchmarks of capsjax.

`python -m benchmarks.cd_benchmark --out=bench.json`.
"""
