"""Benchmark topic: latency (see benchmarks/README.md)."""
