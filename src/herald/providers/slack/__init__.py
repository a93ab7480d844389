"""Slack: chat.postMessage or incoming webhooks (client.py), Block Kit (payload.py)."""

from herald.providers.slack.client import SlackProvider

__all__ = ["SlackProvider"]
