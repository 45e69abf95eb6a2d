"""Benchmarks: each prints one JSON line per figure (see `bench.record`); `make bench` runs them."""
