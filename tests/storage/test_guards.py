"""Every state guard of the storage SQL moves deliveries only along the domain's state
machine, and storage code outside the dialect never asks which database it runs on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from herald.domain.deliveries import TRANSITIONS, DeliveryState
from herald.storage import guards
from herald.storage.guards import ALL, Guard

STORAGE = Path(guards.__file__).parent


@pytest.mark.parametrize("guard", ALL, ids=lambda g: g.name)
def test_each_guard_allows_only_transitions_of_the_state_machine(guard: Guard) -> None:
    assert guard.sources
    assert guard.targets
    for source in guard.sources:
        for target in guard.targets:
            allowed = target in TRANSITIONS[source] or (guard is guards.LEASE_RENEWAL)
            assert allowed, f"{guard.name}: {source} -> {target} is not in TRANSITIONS"


def test_no_final_state_is_a_guard_source() -> None:
    final = {state for state, ways_out in TRANSITIONS.items() if not ways_out}
    assert not [g.name for g in ALL if g.sources & final]


def test_every_way_out_of_sending_is_recorded_by_the_outcome_guard() -> None:
    assert guards.OUTCOME.targets == TRANSITIONS[DeliveryState.SENDING]


def test_storage_asks_the_dialect_not_the_database_name() -> None:
    """What differs between SQLite and PostgreSQL lives in dialect.py only. (schema.py's
    column type binds a datetime per SQLAlchemy dialect: that hook is SQLAlchemy's own way
    to render one column type, not a branch of Herald's statements.)"""
    pattern = re.compile(
        r"dialect\.name|\.name\s*==\s*[\"'](postgresql|sqlite)|isinstance\([^)]*Dialect"
    )
    offenders = [
        f"{path.name}:{number}"
        for path in sorted(STORAGE.glob("*.py"))
        if path.name not in ("dialect.py", "schema.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
