"""Suppressions by event time, and the webhook event ids that make a webhook apply once,
on both backends."""

from __future__ import annotations

from datetime import timedelta

from herald.runtime import Runtime

PHONE = "+14155550142"


async def test_an_opt_in_older_than_the_latest_opt_out_does_not_lift_it(
    runtime: Runtime,
) -> None:
    storage = runtime.storage
    t0 = runtime.clock.now()
    stop_at = t0 + timedelta(seconds=10)
    await storage.suppressions.add("sms", PHONE, "opt-out (STOP)", event_at=stop_at)
    # A STOP that happened earlier but arrives later leaves the latest time in place.
    await storage.suppressions.add("sms", PHONE, "opt-out (STOP)", event_at=t0)

    assert await storage.feedback.lift_opt_outs("sms", PHONE, t0 + timedelta(seconds=5)) == 0
    assert len((await storage.suppressions.page("sms", PHONE, 10, None)).items) == 1

    assert await storage.feedback.lift_opt_outs("sms", PHONE, stop_at) == 1
    assert (await storage.suppressions.page("sms", PHONE, 10, None)).items == []


async def test_an_opt_in_lifts_only_opt_outs(runtime: Runtime) -> None:
    now = runtime.clock.now()
    await runtime.storage.suppressions.add("email", "a@example.com", "ses bounced", event_at=now)
    assert await runtime.storage.feedback.lift_opt_outs("email", "a@example.com", now) == 0
    assert len((await runtime.storage.suppressions.page("email", None, 10, None)).items) == 1


async def test_webhook_event_ids_are_claimed_once_and_forgotten_after_keep_until(
    runtime: Runtime,
) -> None:
    storage = runtime.storage
    now = runtime.clock.now()
    keep = {"old": now - timedelta(seconds=1), "kept": now + timedelta(days=1)}

    assert await storage.feedback.claim_webhook_events("twilio", keep) == {"old", "kept"}
    assert await storage.feedback.claim_webhook_events("twilio", keep) == set()
    assert await storage.feedback.claim_webhook_events("sendgrid", keep) == {
        "old",
        "kept",
    }  # per provider

    await storage.scheduling.maintain()

    assert await storage.feedback.claim_webhook_events("twilio", keep) == {"old"}
    await storage.feedback.forget_webhook_events("twilio", ["kept"])
    assert await storage.feedback.claim_webhook_events("twilio", keep) == {"kept"}
