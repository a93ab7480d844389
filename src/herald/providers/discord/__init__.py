"""Discord: webhooks with embeds (client.py, payload.py)."""

from herald.providers.discord.client import DiscordProvider

__all__ = ["DiscordProvider"]
