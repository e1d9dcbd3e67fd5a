"""Benchmark topic: paper_tables (see benchmarks/README.md)."""
