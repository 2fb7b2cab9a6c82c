"""What the benchmarks share: their command line, a scratch folder, a throwaway PostgreSQL database,
percentiles, and the `ratio=` line each ends with.

Scripts run as modules from the repository root (`python -m bench.<name>`), so `domain`, `infra` and the rest
import as in the service and no script changes sys.path.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent  # the repository root: where service subprocesses start
PG_SERVER = "postgresql://postgres@127.0.0.1:5432/postgres"  # the default --pg


def parser(doc: str | None) -> argparse.ArgumentParser:
    """The script's argument parser, its module docstring as --help."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


@contextlib.contextmanager
def work_dir(prefix: str = "trainyard-bench-") -> Iterator[Path]:
    """A scratch folder, removed afterwards."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def fresh_database(server_url: str, name: str = "trainyard_bench") -> Iterator[str]:
    """A new database on `server_url` (its database part is ignored), dropped afterwards; yields its URL."""
    from infra.postgres import create_database, drop_database

    url = create_database(server_url, name)
    try:
        yield url
    finally:
        drop_database(server_url, url)


def percentile(xs: Sequence[float], q: float) -> float:
    """The nearest-rank `q`th percentile (0 < q ≤ 100) of `xs`; NaN when empty."""
    if not xs:
        return float("nan")
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def print_ratio(value: float, digits: int = 2, note: str = "", name: str = "ratio") -> None:
    """The `ratio=` line a benchmark ends with (bench/RESULTS.md records it)."""
    print(f"{name}={value:.{digits}f}{note}")
