"""Web Push (RFC 8030/8291/8292): the client with VAPID and aes128gcm (client.py) and the
plaintext and subscription rules (payload.py).
"""

from herald.providers.webpush.client import WebPushProvider

__all__ = ["WebPushProvider"]
