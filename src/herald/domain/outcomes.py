"""What a provider said about one delivery: typed values, never exceptions.

The worker acts on the classification alone; each provider module maps its protocol's
answers onto these five.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Accepted:
    """The provider took the message. `delivered` is true where taking it is delivering it
    (the in-app inbox)."""

    provider_message_id: str | None = None
    delivered: bool = False


@dataclass(frozen=True, slots=True)
class Retry:
    """A transient failure: try again, not before `after` seconds when the provider said so."""

    reason: str
    after: float | None = None


@dataclass(frozen=True, slots=True)
class InvalidTarget:
    """The token or address is dead: deactivate the device or suppress the address."""

    reason: str
    opt_out: bool = False  # the recipient asked to stop (SMS STOP), not merely unreachable


@dataclass(frozen=True, slots=True)
class Rejected:
    """Permanently refused, this message only."""

    reason: str


@dataclass(frozen=True, slots=True)
class ProviderDown:
    """A configuration or account problem: open the circuit, alert, keep the deliveries."""

    reason: str
    retry_after: float | None = None


Outcome = Accepted | Retry | InvalidTarget | Rejected | ProviderDown
