"""Dataset files on disk: which paths may be read (the dataset roots), and reading a table within budget.

Only files inside a configured dataset root are ever opened. A path is resolved with every symlink followed
and must then lie inside a resolved root, so `..` segments and symlinks (even ones placed inside a root) cannot
reach outside. Whatever is outside the roots gets the same answer whether it exists or not.

Errors are `DatasetError(field, reason)`. Reasons never quote a file's contents or a parser's exception text
(both can carry the file's bytes): a file that does not parse is "cannot read <name>: not a valid CSV file".
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlparse

from domain.contract import FieldError

FILE_SUFFIXES = (".csv", ".parquet")
MAX_FEATURE_COLUMNS = 10_000
MAX_CELLS = 200_000_000  # rows x columns of one table


class DatasetError(FieldError):
    """A dataset that cannot be used: `field` is the request field ("dataset.uri", "dataset.target", "task",
    or "file" for an upload), `reason` says why in words a user can act on."""


def resolve_file_uri(uri: str, roots: Sequence[Path]) -> Path:
    """The real path (symlinks resolved) of a `file:///abs/path.csv|.parquet` URI that is a file inside one
    of `roots`; DatasetError("dataset.uri") otherwise. No roots: file datasets are refused."""
    try:
        parsed = urlparse(uri)
    except ValueError:
        raise DatasetError("dataset.uri", "not a valid URI") from None
    raw = unquote(parsed.path)
    if parsed.netloc not in ("", "localhost") or not raw.startswith("/") or "\x00" in raw:
        raise DatasetError("dataset.uri", "file URIs need an absolute path: file:///abs/path.csv")
    path = Path(raw)
    if path.suffix.lower() not in FILE_SUFFIXES:
        raise DatasetError("dataset.uri", f"unsupported file type {path.suffix[:20]!r}; use .csv or .parquet")
    if not roots:
        raise DatasetError("dataset.uri", "file datasets are not enabled here (no dataset roots configured)")
    try:
        real = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop, a name too long: refuse like any path outside
        real = None
    if real is None or not any(real.is_relative_to(root) for root in real_roots(roots)):
        raise DatasetError("dataset.uri", f"{path} is outside the dataset roots; upload the file with "
                           "POST /api/v1/datasets and use the URI it returns")
    try:
        real = path.resolve(strict=True)
        is_file = real.is_file()
    except (OSError, RuntimeError):
        is_file = False
    if not is_file or not any(real.is_relative_to(root) for root in real_roots(roots)):
        raise DatasetError("dataset.uri", f"no such file: {path}")
    if real.suffix.lower() not in FILE_SUFFIXES:
        raise DatasetError("dataset.uri", f"{path.name} is not a .csv or .parquet file")
    return real


def real_roots(roots: Sequence[Path]) -> list[Path]:
    """`roots` with symlinks resolved (a root need not exist yet)."""
    return [Path(root).resolve() for root in roots]


def read_columns(path: Path, name: str, field: str = "dataset.uri") -> list[str]:
    """Column names of a CSV header or a Parquet schema at `path` (a resolved, allowed path); `name` is how
    the file is called in messages."""
    try:
        if _is_csv(path):
            import pandas as pd

            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    except Exception:  # the parser's message may quote the file: say only that it does not parse
        raise DatasetError(field, _unreadable(path, name)) from None


def read_table(path: Path, name: str, field: str = "dataset.uri"):  # -> pandas.DataFrame
    """The whole table at `path`, refused (DatasetError naming `field`) when it has more than
    MAX_FEATURE_COLUMNS + 1 columns or more than MAX_CELLS cells; never reads more than that budget."""
    columns = read_columns(path, name, field)
    n_columns = max(len(columns), 1)
    if n_columns > MAX_FEATURE_COLUMNS + 1:
        raise DatasetError(field, f"{name} has {n_columns:,} columns; at most {MAX_FEATURE_COLUMNS:,} features "
                           "and a target")
    max_rows = MAX_CELLS // n_columns
    too_big = DatasetError(field, f"{name} is too large: more than {MAX_CELLS:,} cells (rows x columns)")
    try:
        import pandas as pd

        if _is_csv(path):
            frame = pd.read_csv(path, nrows=max_rows + 1)
        else:
            import pyarrow.parquet as pq

            if pq.ParquetFile(path).metadata.num_rows > max_rows:
                raise too_big
            frame = pd.read_parquet(path)
    except DatasetError:
        raise
    except Exception:
        raise DatasetError(field, _unreadable(path, name)) from None
    if len(frame) > max_rows:
        raise too_big
    return frame


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _unreadable(path: Path, name: str) -> str:
    return f"cannot read {name}: not a valid {'CSV' if _is_csv(path) else 'Parquet'} file"
