"""Microsoft Teams: incoming webhooks and Workflows (client.py), Adaptive Cards (payload.py)."""

from herald.providers.teams.client import TeamsProvider

__all__ = ["TeamsProvider"]
