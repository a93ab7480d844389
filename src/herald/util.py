"""Small shared helpers."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

import orjson


def json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def canonical_hash(value: Any) -> str:
    """A stable hash of a JSON value (keys sorted), for idempotency comparisons."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()


T = TypeVar("T")


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    """`items` in consecutive slices of at most `size`."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
