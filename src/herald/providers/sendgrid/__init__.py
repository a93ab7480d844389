"""SendGrid: the v3 mail/send client (client.py) and its signed event webhook (webhook.py)."""

from herald.providers.sendgrid.client import SendGridProvider

__all__ = ["SendGridProvider"]
