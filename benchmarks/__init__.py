"""Benchmark scripts, each printing its figures against a baseline measured in the same run; run
them from the repository root as modules: `python -m benchmarks.train_throughput --help`."""
