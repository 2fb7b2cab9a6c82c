"""Benchmarks: run each as a module from the repository root, `.venv/bin/python -m bench.<name> [--help]`, so the
project's packages import without touching sys.path. Shared set-up lives in bench/harness.py; results and how
they were measured in bench/RESULTS.md."""
