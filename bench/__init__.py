"""Benchmarks and comparisons that print figures (speed targets live here, not in timed tests)."""
