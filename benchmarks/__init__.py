"""Benchmarks of the mgll-loss backends against the baselines of DESIGN.md section 4 (``python -m benchmarks.run``)."""
