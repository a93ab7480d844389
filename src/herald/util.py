"""Small shared helpers."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson


def json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def canonical_hash(value: Any) -> str:
    """A stable hash of a JSON value (keys sorted), for idempotency comparisons."""
    return hashlib.sha256(orjson.dumps(value, option=orjson.OPT_SORT_KEYS)).hexdigest()
