"""Benchmarks of the whole path (make bench)."""
