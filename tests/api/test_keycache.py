"""API keys kept for KEY_CACHE_SECONDS by the API process that read them: a key revoked
elsewhere is refused within that bound, one revoked through this API at once, and an
unknown key is never kept."""

from __future__ import annotations

import httpx
import pytest

from herald.api.keycache import KEY_CACHE_SECONDS
from herald.clock import FakeClock
from herald.runtime import Runtime
from herald.security import generate_key


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


async def new_key(runtime: Runtime) -> tuple[str, str]:
    key = generate_key()
    await runtime.storage.keys.create_api_key(key.id, key.secret_hash, ["read"], "cached")
    return key.id, key.token


async def answer(api: httpx.AsyncClient, token: str) -> tuple[int, str]:
    response = await api.get("/v1/users/u", headers={"Authorization": f"Bearer {token}"})
    message = response.json()["error"]["message"] if response.status_code >= 400 else ""
    return response.status_code, message


async def test_a_key_revoked_elsewhere_is_refused_within_the_bound(
    api: httpx.AsyncClient, runtime: Runtime, clock: FakeClock
) -> None:
    key_id, token = await new_key(runtime)
    assert (await answer(api, token))[0] == 404  # admitted: there is no user u
    # As `herald keys revoke` (another process) does: straight in the database.
    assert await runtime.storage.keys.revoke_api_key(key_id)
    clock.advance(KEY_CACHE_SECONDS - 0.5)
    assert (await answer(api, token))[0] == 404  # read 4.5 s ago: still admitted
    clock.advance(0.5)
    assert await answer(api, token) == (401, "API key has been revoked")


async def test_a_key_revoked_through_this_api_is_refused_at_once(
    api: httpx.AsyncClient, runtime: Runtime
) -> None:
    key_id, token = await new_key(runtime)
    assert (await answer(api, token))[0] == 404
    assert (await api.delete(f"/v1/keys/{key_id}")).status_code == 204
    assert await answer(api, token) == (401, "API key has been revoked")


async def test_an_unknown_key_is_not_kept(api: httpx.AsyncClient, runtime: Runtime) -> None:
    key = generate_key()
    assert await answer(api, key.token) == (401, "API key is not valid")
    await runtime.storage.keys.create_api_key(key.id, key.secret_hash, ["read"], "late")
    assert (await answer(api, key.token))[0] == 404  # found at once, no wait for the bound
