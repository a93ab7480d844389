"""The webhook channel: signed JSON POSTs to a user's endpoint (client.py), Standard
Webhooks signatures (signing.py)."""

from herald.providers.webhook.client import WebhookProvider

__all__ = ["WebhookProvider"]
