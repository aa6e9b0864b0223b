"""Benchmarks run by `make bench` (not by pytest): ratios against baselines measured in the same run."""
