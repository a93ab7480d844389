import pytest

from herald.domain import (
    FINAL_STATES,
    Channel,
    DeliveryState,
    InvalidTransition,
    can_transition,
    check_transition,
    delivery_id,
    mask_target,
)

S = DeliveryState


def test_delivery_ids_are_deterministic_and_distinct() -> None:
    first = delivery_id("n1", Channel.PUSH, "device-1")
    assert first == delivery_id("n1", Channel.PUSH, "device-1")
    assert first != delivery_id("n1", Channel.PUSH, "device-2")
    assert first != delivery_id("n1", Channel.EMAIL, "device-1")
    assert first != delivery_id("n2", Channel.PUSH, "device-1")


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.QUEUED, S.SENDING),
        (S.DEFERRED, S.QUEUED),
        (S.SENDING, S.SENT),
        (S.SENDING, S.DEFERRED),
        (S.SENDING, S.UNKNOWN),
        (S.SENT, S.DELIVERED),
        (S.SENT, S.UNDELIVERABLE),
    ],
)
def test_allowed_transitions(current: DeliveryState, new: DeliveryState) -> None:
    assert check_transition(current, new) == new


@pytest.mark.parametrize(
    ("current", "new"),
    [
        (S.SENT, S.SENDING),
        (S.QUEUED, S.SENT),
        (S.FAILED, S.QUEUED),
        (S.SKIPPED, S.QUEUED),
        (S.DELIVERED, S.SENDING),
        (S.UNKNOWN, S.SENDING),
    ],
)
def test_forbidden_transitions(current: DeliveryState, new: DeliveryState) -> None:
    assert not can_transition(current, new)
    with pytest.raises(InvalidTransition):
        check_transition(current, new)


def test_final_states_have_no_way_out() -> None:
    assert {S.FAILED, S.UNDELIVERABLE, S.SKIPPED} == FINAL_STATES


def test_unknown_is_never_sent_again_but_a_late_answer_settles_it() -> None:
    assert not can_transition(S.UNKNOWN, S.SENDING)
    assert not can_transition(S.UNKNOWN, S.QUEUED)
    assert can_transition(S.UNKNOWN, S.SENT)


@pytest.mark.parametrize(
    ("channel", "target", "masked"),
    [
        (Channel.EMAIL, "alice@example.com", "a***@example.com"),
        (Channel.SMS, "+14155550100", "+14***00"),
        (Channel.PUSH, "abcdefghijklmnopqrstuvwxyz", "abcdef…wxyz"),
        (Channel.PUSH, "short", "***"),
    ],
)
def test_targets_are_masked(channel: Channel, target: str, masked: str) -> None:
    assert mask_target(channel, target) == masked
