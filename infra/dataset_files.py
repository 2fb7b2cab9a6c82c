"""Dataset files on disk: which paths may be read (the dataset roots), and reading a table within budget.

Only files inside a configured dataset root are ever opened. A path is resolved with every symlink followed
and must then lie inside a resolved root, so `..` segments and symlinks (even ones placed inside a root) cannot
reach outside. Whatever is outside the roots gets the same answer whether it exists or not.

A table is bounded before it is decoded: a Parquet file's footer says how many rows it has and of what types, so
list/struct/map columns, too many rows, or fixed-width columns that would decode past MAX_TABLE_BYTES are refused
from the metadata alone; text columns are then scanned in bounded batches, still dictionary-encoded (a small file
can hold one huge string referenced by every row), for their decoded size and their longest cell
(MAX_TEXT_CELL_BYTES). `scan_table` does only that (an upload's check holds one batch at a time); `read_table`
decodes the whole table after it.

Errors are `DatasetError(field, reason)`. Reasons never quote a file's contents or a parser's exception text
(both can carry the file's bytes): a file that does not parse is "cannot read <name>: not a valid CSV file".
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from domain.contract import FieldError

FILE_SUFFIXES = (".csv", ".parquet")
IMAGE_ARCHIVE_SUFFIXES = (".zip", ".tar.gz", ".tgz")  # an ImageFolder archive (infra/image_folders.py)
MAX_FEATURE_COLUMNS = 10_000
MAX_CELLS = 200_000_000  # rows x columns of one table
MAX_TABLE_BYTES = 1024**3  # a table decoded in memory, estimated before decoding
MAX_TEXT_CELL_BYTES = 64 * 1024  # one text cell (features are numbers or categories, never documents)
_SCAN_CELLS = 4_000_000  # cells per batch while scanning a table
_OBJECT_BYTES = 56  # what a text cell costs in pandas beyond its characters (a Python str)


class DatasetError(FieldError):
    """A dataset that cannot be used: `field` is the request field ("dataset.uri", "dataset.target", "task",
    or "file" for an upload), `reason` says why in words a user can act on."""


def resolve_file_uri(uri: str, roots: Sequence[Path], suffixes: tuple[str, ...] = FILE_SUFFIXES) -> Path:
    """The real path (symlinks resolved) of a `file:///abs/path.csv|.parquet` URI (or another of `suffixes`) that is
    a file inside one of `roots`; DatasetError("dataset.uri") otherwise. No roots: file datasets are refused."""
    try:
        parsed = urlparse(uri)
    except ValueError:
        raise DatasetError("dataset.uri", "not a valid URI") from None
    raw = unquote(parsed.path)
    if parsed.netloc not in ("", "localhost") or not raw.startswith("/") or "\x00" in raw:
        raise DatasetError("dataset.uri", "file URIs need an absolute path: file:///abs/path.csv")
    path = Path(raw)
    if not path.name.lower().endswith(suffixes):
        raise DatasetError("dataset.uri", f"unsupported file type {path.suffix[:20]!r}; use {' or '.join(suffixes)}")
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
    if not real.name.lower().endswith(suffixes):
        raise DatasetError("dataset.uri", f"{path.name} is not a {' or '.join(suffixes)} file")
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


@dataclass(frozen=True)
class TableShape:
    rows: int
    columns: list[str]


def read_table(path: Path, name: str, field: str = "dataset.uri"):  # -> pandas.DataFrame
    """The whole table at `path`, refused (DatasetError naming `field`) when it has more than
    MAX_FEATURE_COLUMNS + 1 columns or more than MAX_CELLS cells, or would decode past MAX_TABLE_BYTES or a
    text cell past MAX_TEXT_CELL_BYTES; never reads more than that budget."""
    shape = scan_table(path, name, field)
    try:
        import pandas as pd

        frame = pd.read_csv(path) if _is_csv(path) else pd.read_parquet(path)
    except Exception:
        raise DatasetError(field, _unreadable(path, name)) from None
    if len(frame) != shape.rows:  # the file changed since the scan
        raise DatasetError(field, _unreadable(path, name))
    return frame


def scan_table(path: Path, name: str, field: str = "dataset.uri") -> TableShape:
    """Rows and columns of the table at `path`, read in bounded batches and checked against every bound of
    `read_table` without holding the table: what an upload's check and `read_table` run first."""
    columns = read_columns(path, name, field)
    n_columns = max(len(columns), 1)
    if n_columns > MAX_FEATURE_COLUMNS + 1:
        raise DatasetError(field, f"{name} has {n_columns:,} columns; at most {MAX_FEATURE_COLUMNS:,} features "
                           "and a target")
    max_rows = MAX_CELLS // n_columns
    try:
        rows = _scan_csv(path, name, field, max_rows) if _is_csv(path) else _scan_parquet(path, name, field, max_rows)
    except DatasetError:
        raise
    except Exception:
        raise DatasetError(field, _unreadable(path, name)) from None
    return TableShape(rows, columns)


def _too_many_cells(name: str, field: str) -> DatasetError:
    return DatasetError(field, f"{name} is too large: more than {MAX_CELLS:,} cells (rows x columns)")


def _too_many_bytes(name: str, field: str) -> DatasetError:
    return DatasetError(field, f"{name} is too large: it would take over {MAX_TABLE_BYTES // 1024**2:,} MiB in "
                        "memory once decoded")


def _long_cell(name: str, field: str, column: str) -> DatasetError:
    return DatasetError(field, f"{name}: column {column[:100]!r} has a text cell over {MAX_TEXT_CELL_BYTES:,} "
                        "bytes; cells must be numbers or short categories")


def _scan_csv(path: Path, name: str, field: str, max_rows: int) -> int:
    import pandas as pd

    rows, decoded = 0, 0
    chunk_rows = max(1, _SCAN_CELLS // max(len(read_columns(path, name, field)), 1))
    with pd.read_csv(path, chunksize=chunk_rows) as reader:
        for chunk in reader:
            rows += len(chunk)
            if rows > max_rows:
                raise _too_many_cells(name, field)
            decoded += int(chunk.memory_usage(index=False, deep=True).sum())
            if decoded > MAX_TABLE_BYTES:
                raise _too_many_bytes(name, field)
            for column in chunk.select_dtypes(exclude=["number", "bool"]).columns:
                longest = chunk[column].astype(str).str.len().max()
                if longest > MAX_TEXT_CELL_BYTES:
                    raise _long_cell(name, field, str(column))
    return rows


def _scan_parquet(path: Path, name: str, field: str, max_rows: int) -> int:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    text = [f.name for f in schema if _is_text(f.type)]
    for f in schema:
        if pa.types.is_nested(f.type) or (pa.types.is_dictionary(f.type) and pa.types.is_nested(f.type.value_type)):
            raise DatasetError(field, f"{name}: column {f.name[:100]!r} is a {f.type} column; only flat columns "
                               "(numbers, text, booleans, dates) can be features")
        if not (_is_text(f.type) or pa.types.is_dictionary(f.type) or _fixed_width(f.type)):
            raise DatasetError(field, f"{name}: column {f.name[:100]!r} has the unsupported type {f.type}")
    parquet = pq.ParquetFile(path, read_dictionary=text)
    meta = parquet.metadata
    rows = max(meta.num_rows, sum(meta.row_group(i).num_rows for i in range(meta.num_row_groups)))
    if rows > max_rows:
        raise _too_many_cells(name, field)
    fixed = sum(_width(f.type) for f in schema if not _is_text(f.type))  # bytes per row in pandas
    if rows * fixed > MAX_TABLE_BYTES or sum(meta.row_group(i).total_byte_size
                                             for i in range(meta.num_row_groups)) > MAX_TABLE_BYTES:
        raise _too_many_bytes(name, field)
    decoded, seen = rows * fixed, 0
    batch_rows = max(1, _SCAN_CELLS // max(len(schema), 1))
    for batch in parquet.iter_batches(batch_size=batch_rows):  # every column: the whole file must decode
        seen += batch.num_rows
        if seen > rows:
            raise _too_many_cells(name, field)
        for f, column in zip(batch.schema, batch.columns):
            if isinstance(column, pa.DictionaryArray) and _is_text(f.type.value_type):
                lengths = pc.binary_length(column.dictionary)
                if len(lengths) and pc.max(lengths).as_py() > MAX_TEXT_CELL_BYTES:
                    raise _long_cell(name, field, f.name)
                used = pc.sum(pc.take(lengths, column.indices)).as_py() or 0
            elif _is_text(f.type):
                lengths = pc.binary_length(column)
                if len(lengths) and (pc.max(lengths).as_py() or 0) > MAX_TEXT_CELL_BYTES:
                    raise _long_cell(name, field, f.name)
                used = pc.sum(lengths).as_py() or 0
            else:
                continue
            decoded += used + _OBJECT_BYTES * len(column)
        if decoded > MAX_TABLE_BYTES:
            raise _too_many_bytes(name, field)
    if seen != rows:  # the footer and the data disagree
        raise DatasetError(field, _unreadable(path, name))
    return rows


def _is_text(t) -> bool:
    import pyarrow as pa

    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
            or pa.types.is_large_binary(t) or pa.types.is_string_view(t) or pa.types.is_binary_view(t))


def _width(t) -> int:
    import pyarrow as pa

    if pa.types.is_dictionary(t):  # pandas categorical codes; the values are counted while scanning
        return _width(t.index_type)
    if pa.types.is_decimal(t):  # a Python Decimal per cell
        return 8 + 2 * _OBJECT_BYTES
    return 8 if pa.types.is_temporal(t) else max(1, getattr(t, "bit_width", 8) // 8)


def _fixed_width(t) -> bool:
    import pyarrow as pa

    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) or pa.types.is_temporal(t)
            or pa.types.is_decimal(t) or pa.types.is_null(t))


def _is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _unreadable(path: Path, name: str) -> str:
    return f"cannot read {name}: not a valid {'CSV' if _is_csv(path) else 'Parquet'} file"
