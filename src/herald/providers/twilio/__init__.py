"""Twilio SMS: the Messages API client (client.py) and its status and inbound callbacks
(webhook.py).
"""

from herald.providers.twilio.client import TwilioProvider

__all__ = ["TwilioProvider"]
