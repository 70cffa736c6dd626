"""tunelab benchmark suite: tunelab vs the plain Hugging Face way, one configuration per subprocess.
Run with `make bench` (or `python -m bench.run --workload sentiment`). Never part of the unit tests."""
