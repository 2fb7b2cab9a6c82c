"""Short ids: the ids whose text starts with a prefix of hex digits, as a range on the uuid itself.

PostgreSQL orders uuids by their bytes, which is the order of their hex text, so the ids starting with `0565b60a`
are exactly those between `0565b60a-0000-…-000000000000` and `0565b60a-ffff-…-ffffffffffff`: a range the primary
key's index answers, where `id::text LIKE '0565b60a%'` would read every row. `filtered_page` is the list query
built on it that the schedules and retrains read models share."""
from __future__ import annotations

from typing import Any
from uuid import UUID

HEX_DIGITS = 32


def id_range(prefix: str) -> tuple[UUID, UUID]:
    """The first and last uuid whose hex text starts with `prefix` (1 to 32 hex digits, hyphens not counted)."""
    digits = prefix.replace("-", "").lower()
    if not 0 < len(digits) <= HEX_DIGITS or digits.strip("0123456789abcdef"):
        raise ValueError(f"{prefix!r} is not a prefix of hex digits")
    return UUID(digits.ljust(HEX_DIGITS, "0")), UUID(digits.ljust(HEX_DIGITS, "f"))


def filtered_page(pool: Any, table: str, columns: str, where: list[str], params: dict[str, Any], *,
                  status: list[str] | None, id_prefix: str | None, limit: int, offset: int
                  ) -> tuple[list[dict[str, Any]], int]:
    """A read model's rows matching `where` (SQL conditions over `params`), any of `status` and `id_prefix`, newest
    first, with how many match: the list query of a table with `id`, `status` and `created_at` columns."""
    from psycopg.rows import dict_row

    where, params = list(where), {**params, "limit": limit, "offset": offset}
    if status:
        where.append("status = ANY(%(status)s)")
        params["status"] = list(status)
    if id_prefix:
        where.append("id BETWEEN %(id_low)s AND %(id_high)s")
        params["id_low"], params["id_high"] = id_range(id_prefix)
    cond = " AND ".join(where)
    with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT count(*) AS n FROM {table} WHERE {cond}", params)
        total = cur.fetchone()["n"]
        cur.execute(f"SELECT {columns} FROM {table} WHERE {cond} ORDER BY created_at DESC, id "
                    "LIMIT %(limit)s OFFSET %(offset)s", params)
        return cur.fetchall(), total
