"""SMTP: one pooled connection per worker (client.py)."""

from herald.providers.smtp.client import SmtpProvider

__all__ = ["SmtpProvider"]
