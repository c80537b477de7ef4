"""Benchmarks of trafmetux against its performance targets (`make bench`, `python -m bench`)."""
