"""Benchmarks of the mgll-loss backends against their baselines (docs/backends.md; ``python -m benchmarks.run``)."""
