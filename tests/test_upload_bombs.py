"""Dataset uploads that are small on the wire and huge once decoded are refused from what the file says about
itself, before they are decoded (the in-process API on real PostgreSQL; files crafted with pyarrow)."""
from __future__ import annotations

import io
import resource
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from tests.support.auth import signed_in_client
from entrypoints.bootstrap import build_services
from infra.dataset_files import MAX_TEXT_CELL_BYTES, read_table
from infra.settings import Settings

DATASETS = "/api/v1/datasets"
MAX_UPLOAD = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def client(module_database_url: str, clickhouse, tmp_path_factory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("bomb-datasets")
    services = build_services(Settings(database_url=module_database_url, nats_url="nats://127.0.0.1:4222",
                                       clickhouse_url=None, data_dir=clickhouse.path.parent,
                                       dataset_roots=str(root), max_upload_bytes=MAX_UPLOAD))
    with signed_in_client(services) as c:
        yield c
    services.close()


def parquet(table: pa.Table | None = None, *, schema: pa.Schema | None = None,
            batches: Iterable[pa.Table] = ()) -> bytes:
    """A Parquet file of `table` and then `batches` (each its own row group)."""
    out = io.BytesIO()
    with pq.ParquetWriter(out, schema or table.schema, compression="zstd") as writer:
        for t in ([table] if table is not None else []) + list(batches):
            writer.write_table(t)
    return out.getvalue()


def upload(client: TestClient, data: bytes, name: str = "bomb.parquet"):
    return client.post(DATASETS, files={"file": (name, data)})


def refused(r, *words: str) -> None:
    assert r.status_code in (413, 422), r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["field"] == "file"
    for word in words:
        assert word in body["detail"], body


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ten_rows(**columns: pa.Array) -> pa.Table:
    return pa.table({"target": pa.array(range(10)), **columns})


@pytest.mark.parametrize("kind, column", [
    ("list", pa.array([np.zeros(2_000_000, dtype=np.int64)] * 10, type=pa.list_(pa.int64()))),
    ("struct", pa.array([{"x": 1, "y": 2.0}] * 10)),
    ("map", pa.array([[("k", 1)]] * 10, type=pa.map_(pa.string(), pa.int64()))),
])
def test_a_nested_column_is_refused_before_it_is_decoded(client, kind, column):
    data = parquet(ten_rows(bomb=column))
    assert len(data) < 64 * 1024  # small on the wire
    before = peak_rss_mib()
    refused(upload(client, data), "'bomb'", kind)
    assert peak_rss_mib() - before < 100  # 160 MB of zeros were never decoded
    assert client.get(DATASETS).status_code == 200


def test_a_huge_text_cell_is_refused(client):
    cell = "x" * (40 * 1024 * 1024)  # dictionary-encoded: one copy in the file, one per row once decoded
    data = parquet(ten_rows(text=pa.array([cell] * 10)))
    assert len(data) < MAX_UPLOAD
    refused(upload(client, data), "'text'", f"{MAX_TEXT_CELL_BYTES:,} bytes")
    assert client.get(DATASETS).status_code == 200


def test_a_text_cell_just_under_the_limit_is_fine(client):
    cells = pa.array(["y" * (MAX_TEXT_CELL_BYTES - 1)] + ["a", "b"] * 10)
    r = upload(client, parquet(pa.table({"target": pa.array(range(21)), "text": cells})), "fine.parquet")
    assert r.status_code == 201, r.text
    assert r.json()["rows"] == 21


def test_many_zero_rows_that_would_decode_past_the_memory_bound_are_refused_from_the_footer(client):
    # 100,000,000 rows x 2 int64 columns: within the cell cap (200,000,000) but 1.6 GB once decoded
    zeros = pa.table({"target": pa.array(np.zeros(1_000_000, dtype=np.int64)),
                      "x": pa.array(np.zeros(1_000_000, dtype=np.int64))})
    data = parquet(schema=zeros.schema, batches=[zeros] * 100)
    assert len(data) < MAX_UPLOAD
    before = peak_rss_mib()
    refused(upload(client, data), "MiB in memory")
    assert peak_rss_mib() - before < 100
    assert client.get(DATASETS).status_code == 200


def test_a_csv_with_a_huge_cell_is_refused(client):
    rows = "".join(f"{i},a\n" for i in range(10))
    refused(upload(client, f"target,text\n{rows}0,{'z' * (MAX_TEXT_CELL_BYTES + 1)}\n".encode(), "big.csv"),
            "'text'", "text cell")


def test_read_table_applies_the_same_bounds(tmp_path: Path):
    path = tmp_path / "nested.parquet"
    path.write_bytes(parquet(ten_rows(bomb=pa.array([[1, 2]] * 10))))
    with pytest.raises(Exception, match="list"):
        read_table(path, "nested.parquet")
