"""Suppressions by event time, and the webhook event ids that make a webhook apply once,
on both backends."""

from __future__ import annotations

from datetime import timedelta

from herald.runtime import Runtime

PHONE = "+14155550142"


async def test_an_opt_in_older_than_the_latest_opt_out_does_not_lift_it(
    runtime: Runtime,
) -> None:
    store = runtime.store
    t0 = runtime.clock.now()
    stop_at = t0 + timedelta(seconds=10)
    await store.add_suppression("sms", PHONE, "opt-out (STOP)", event_at=stop_at)
    # A STOP that happened earlier but arrives later leaves the latest time in place.
    await store.add_suppression("sms", PHONE, "opt-out (STOP)", event_at=t0)

    assert await store.lift_opt_outs("sms", PHONE, t0 + timedelta(seconds=5)) == 0
    assert len((await store.list_suppressions("sms", PHONE, 10, None)).items) == 1

    assert await store.lift_opt_outs("sms", PHONE, stop_at) == 1
    assert (await store.list_suppressions("sms", PHONE, 10, None)).items == []


async def test_an_opt_in_lifts_only_opt_outs(runtime: Runtime) -> None:
    now = runtime.clock.now()
    await runtime.store.add_suppression("email", "a@example.com", "ses bounced", event_at=now)
    assert await runtime.store.lift_opt_outs("email", "a@example.com", now) == 0
    assert len((await runtime.store.list_suppressions("email", None, 10, None)).items) == 1


async def test_webhook_event_ids_are_claimed_once_and_forgotten_after_keep_until(
    runtime: Runtime,
) -> None:
    store = runtime.store
    now = runtime.clock.now()
    keep = {"old": now - timedelta(seconds=1), "kept": now + timedelta(days=1)}

    assert await store.claim_webhook_events("twilio", keep) == {"old", "kept"}
    assert await store.claim_webhook_events("twilio", keep) == set()
    assert await store.claim_webhook_events("sendgrid", keep) == {"old", "kept"}  # per provider

    await store.maintain()

    assert await store.claim_webhook_events("twilio", keep) == {"old"}
    await store.forget_webhook_events("twilio", ["kept"])
    assert await store.claim_webhook_events("twilio", keep) == {"kept"}
