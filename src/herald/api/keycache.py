"""The API keys this API process has read, kept for a few seconds.

Every request is authenticated by its key, and reading the key was a database round trip
per request (docs/benchmarks.md, "Figures behind code choices"). A key found is kept for
`KEY_CACHE_SECONDS`; after that it is read again, so a key revoked elsewhere (`herald keys
revoke`, another API process) is refused within that bound. A revoke through this process
(`DELETE /v1/keys/{id}`) forgets the key at once. Unknown key ids are not kept: a caller
trying made-up ids cannot fill the cache, and a key created since is found at once."""

from __future__ import annotations

from herald.clock import Clock
from herald.storage.keys import KeyRepository
from herald.storage.records import ApiKeyRecord

# The longest a revoked key can still be admitted by an API process that read it before.
KEY_CACHE_SECONDS = 5.0
MAX_KEYS = 1024


class ApiKeyCache:
    def __init__(
        self,
        keys: KeyRepository,
        clock: Clock,
        seconds: float = KEY_CACHE_SECONDS,
        max_keys: int = MAX_KEYS,
    ) -> None:
        self.keys = keys
        self.clock = clock
        self.seconds = seconds
        self.max_keys = max_keys
        self._found: dict[str, tuple[float, ApiKeyRecord]] = {}

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        now = self.clock.time()
        kept = self._found.get(key_id)
        if kept is not None and 0 <= now - kept[0] < self.seconds:  # (a clock set back: read)
            return kept[1]
        record = await self.keys.get_api_key(key_id)
        if record is None:
            self._found.pop(key_id, None)
            return None
        self._found.pop(key_id, None)  # re-inserted last: the oldest entries go first
        if len(self._found) >= self.max_keys:
            del self._found[next(iter(self._found))]
        self._found[key_id] = (now, record)
        return record

    def forget(self, key_id: str) -> None:
        self._found.pop(key_id, None)
