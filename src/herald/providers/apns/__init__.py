"""Apple Push Notification service: the HTTP/2 client (client.py) and the payload and
device-token rules (payload.py).
"""

from herald.providers.apns.client import ApnsProvider

__all__ = ["ApnsProvider"]
