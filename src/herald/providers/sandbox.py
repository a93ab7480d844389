"""The sandbox provider: sends nothing, keeps every message it was given, so a developer
sees (GET /v1/sandbox/messages) what would have gone out. Used for every channel with no
real provider configured."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from herald.clock import SYSTEM_CLOCK, Clock
from herald.domain import Accepted, Channel, Outcome
from herald.providers.base import OutboundMessage, Provider
from herald.storage import SandboxMessage, new_id
from herald.storage.sandbox import SandboxRepository


class SandboxProvider(Provider):
    name: ClassVar[str] = "sandbox"
    channel: ClassVar[Channel] = Channel.PUSH  # serves any channel; see `for_channel`
    batch_size: ClassVar[int] = 500

    def __init__(
        self, sandbox: SandboxRepository, serves: Channel, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.sandbox = sandbox
        self.serves = serves
        self.clock = clock

    async def send(self, messages: Sequence[OutboundMessage]) -> list[Outcome]:
        now = self.clock.now()
        stored = [
            SandboxMessage(
                id=new_id(),
                channel=m.channel.value,
                provider=self.name,
                user_id=m.user_id,
                delivery_id=m.delivery_id,
                target=m.target,
                payload=m.payload,
                created_at=now,
            )
            for m in messages
        ]
        await self.sandbox.insert(stored)
        return [Accepted(provider_message_id=f"sandbox-{m.delivery_id}") for m in messages]

    def describe(self) -> str:
        return f"sandbox ({self.serves})"
