"""Short ids: the ids whose text starts with a prefix of hex digits, as a range on the uuid itself.

PostgreSQL orders uuids by their bytes, which is the order of their hex text, so the ids starting with `0565b60a`
are exactly those between `0565b60a-0000-…-000000000000` and `0565b60a-ffff-…-ffffffffffff`: a range the primary
key's index answers, where `id::text LIKE '0565b60a%'` would read every row."""
from __future__ import annotations

from uuid import UUID

HEX_DIGITS = 32


def id_range(prefix: str) -> tuple[UUID, UUID]:
    """The first and last uuid whose hex text starts with `prefix` (1 to 32 hex digits, hyphens not counted)."""
    digits = prefix.replace("-", "").lower()
    if not 0 < len(digits) <= HEX_DIGITS or digits.strip("0123456789abcdef"):
        raise ValueError(f"{prefix!r} is not a prefix of hex digits")
    return UUID(digits.ljust(HEX_DIGITS, "0")), UUID(digits.ljust(HEX_DIGITS, "f"))
