"""Benchmark topic: train_recipe (see benchmarks/README.md)."""
