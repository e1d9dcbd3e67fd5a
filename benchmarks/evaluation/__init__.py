"""Benchmark topic: evaluation (see benchmarks/README.md)."""
