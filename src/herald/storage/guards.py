"""The state guards of the SQL that moves deliveries, built from the domain's state machine.

Each guarded UPDATE changes a delivery only from the states its guard names, so two
processes racing on a row (a claim and a cancel, a late answer and the lease sweep) settle
it by the database, and only along transitions `herald.domain.deliveries.TRANSITIONS`
allows: tests/storage/test_guards.py holds every guard here against that table."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from herald.domain.deliveries import (
    CLAIMABLE_STATES,
    LATE_ANSWER_STATES,
    REPLAYABLE_STATES,
    TRANSITIONS,
    UNSENT_STATES,
    WAITING_STATES,
    WEBHOOK_TRANSITIONS,
    DeliveryState,
)

S = DeliveryState


@dataclass(frozen=True)
class Guard:
    """An UPDATE that moves deliveries from `sources` into one of `targets`."""

    name: str
    sources: frozenset[DeliveryState]
    targets: frozenset[DeliveryState]

    def holds(self, state: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
        """The SQL condition: the row's state is one of the sources."""
        return state_in(self.sources, state)


def state_in(
    states: Iterable[DeliveryState], state: sa.ColumnElement[Any]
) -> sa.ColumnElement[bool]:
    """`state = 'x'` for one state, `state IN ('x', 'y')` for several, with the states
    written into the SQL rather than bound: a partial index (schema.py) serves a statement
    only when the database can prove the index's predicate from the statement's own text,
    which SQLite does term by term and PostgreSQL cannot do from a parameter in a plan it
    keeps for every execution."""
    values: list[sa.ColumnElement[Any]] = [sa.literal_column(v) for v in _quoted(states)]
    return state == values[0] if len(values) == 1 else state.in_(values)


def state_in_sql(states: Iterable[DeliveryState], column: str = "state") -> str:
    """`state_in` as SQL text, for the statements written on the drivers (native.py)."""
    values = _quoted(states)
    return f"{column} = {values[0]}" if len(values) == 1 else f"{column} IN ({', '.join(values)})"


def _quoted(states: Iterable[DeliveryState]) -> list[str]:
    """The states' values as SQL string literals, in a stable order (a state value is a
    lowercase word: nothing to escape)."""
    return [f"'{value}'" for value in sorted(s.value for s in states)]


def _guard(name: str, sources: Iterable[S], targets: Iterable[S]) -> Guard:
    return Guard(name, frozenset(sources), frozenset(targets))


# A worker's claim (deferred ones only once due).
CLAIM = _guard("claim", CLAIMABLE_STATES, {S.SENDING})
# The provider's answer for a claimed delivery: any way out of sending.
OUTCOME = _guard("record an outcome", {S.SENDING}, TRANSITIONS[S.SENDING])
# The answer that arrives after the lease ran out on an at_most_once delivery.
LATE_ANSWER = _guard("record a late answer", {S.UNKNOWN}, LATE_ANSWER_STATES)
# A live worker renews the lease of what it is still sending.
LEASE_RENEWAL = _guard("renew a lease", {S.SENDING}, {S.SENDING})
CANCEL = _guard("cancel", WAITING_STATES, {S.SKIPPED})
CANCEL_DIGESTED = _guard("cancel an item waiting in a digest", {S.DIGESTED}, {S.SKIPPED})
DEVICE_GONE = _guard("skip: the device went away", WAITING_STATES, {S.SKIPPED})
SET_ASIDE = _guard("set aside what no worker can process", UNSENT_STATES, {S.FAILED})
RELEASE_DUE = _guard("release a due deferral", {S.DEFERRED}, {S.QUEUED})
LEASE_EXPIRED_REQUEUE = _guard("lease expired (at_least_once)", {S.SENDING}, {S.QUEUED})
LEASE_EXPIRED_UNKNOWN = _guard("lease expired (at_most_once)", {S.SENDING}, {S.UNKNOWN})
# A claim whose rows the worker could not read back is undone, so that nothing it claimed
# waits out the lease unsent (storage/deliveries.py, DeliveryRepository.claim).
UNDO_CLAIM = _guard("undo a claim that could not be read", {S.SENDING}, {S.QUEUED})
# An operator's replay of a dead letter (not in ALL: it leaves a final state on purpose).
REPLAY = _guard("replay a dead letter", REPLAYABLE_STATES, {S.QUEUED})
WEBHOOK = {
    source: _guard(f"provider report from {source}", {source}, targets)
    for source, targets in WEBHOOK_TRANSITIONS.items()
}

ALL: tuple[Guard, ...] = (
    CLAIM,
    OUTCOME,
    LATE_ANSWER,
    LEASE_RENEWAL,
    CANCEL,
    CANCEL_DIGESTED,
    DEVICE_GONE,
    SET_ASIDE,
    RELEASE_DUE,
    LEASE_EXPIRED_REQUEUE,
    LEASE_EXPIRED_UNKNOWN,
    UNDO_CLAIM,
    *WEBHOOK.values(),
)
