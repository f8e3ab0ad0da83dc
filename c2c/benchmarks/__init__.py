"""Benchmarks behind `c2c bench ...`: each measures its alternatives side by side in one run and
prints one JSON object."""
