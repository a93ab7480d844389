"""Amazon SES: the SendEmail client (client.py) and its events through SNS (webhook.py)."""

from herald.providers.ses.client import SesProvider

__all__ = ["SesProvider"]
