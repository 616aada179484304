"""fedfusion benchmark suite (``python -m benchmarks.run_all``; see docs/performance.md)."""
