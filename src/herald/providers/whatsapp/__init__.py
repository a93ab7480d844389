"""WhatsApp through Twilio's Messages API, with Content templates outside the 24-hour
window (client.py)."""

from herald.providers.whatsapp.client import WhatsAppProvider

__all__ = ["WhatsAppProvider"]
