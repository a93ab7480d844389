"""Firebase Cloud Messaging (HTTP v1): the client with its OAuth tokens (client.py) and the
message body, size and token rules (payload.py).
"""

from herald.providers.fcm.client import FcmProvider

__all__ = ["FcmProvider"]
