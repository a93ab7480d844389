"""A stand-in for Amazon SNS delivering SES notifications: signed like SNS signs them.

It holds an RSA key and a self-signed certificate "published" at an SNS-shaped URL, and
builds SNS HTTP bodies (Notification, SubscriptionConfirmation) signed with
SignatureVersion 1 (SHA1) or 2 (SHA256). `certificates()` gives the SnsCertificates that
serve its certificate locally, so tests verify real signatures without the network.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from herald.clock import SYSTEM_CLOCK, Clock
from herald.providers.email_message import message_id_for
from herald.providers.ses.webhook import SnsCertificates, sns_string_to_sign

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"1": hashes.SHA1, "2": hashes.SHA256}
FAKE_ACCOUNT = "123456789012"


def default_topic_arn(region: str = "us-east-1") -> str:
    """The topic FakeSns publishes on unless told otherwise (HERALD_SNS_TOPIC_ARNS allows it
    in the fake fleet's environment)."""
    return f"arn:aws:sns:{region}:{FAKE_ACCOUNT}:herald-ses-events"


class FakeSns:
    def __init__(
        self,
        *,
        region: str = "us-east-1",
        topic_arn: str | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.region = region
        self.topic_arn = topic_arn or default_topic_arn(region)
        self.clock = clock
        self.cert_url = (
            f"https://sns.{region}.amazonaws.com/SimpleNotificationService-{uuid.uuid4().hex}.pem"
        )
        self.fetched: list[str] = []
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.certificate_pem = self._self_signed_certificate()

    def _self_signed_certificate(self) -> bytes:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = self.clock.now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1))
            .not_valid_after(now + timedelta(days=30))
            .sign(self._key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM)

    async def fetch_certificate(self, url: str) -> bytes:
        """What a GET of the SigningCertURL answers (every call is kept in `fetched`)."""
        self.fetched.append(url)
        if url != self.cert_url:
            raise LookupError(f"no certificate at {url}")
        return self.certificate_pem

    def certificates(self, clock: Clock | None = None) -> SnsCertificates:
        """Certificates served from memory; the URL rule stays the production one."""
        return SnsCertificates(self.fetch_certificate, clock=clock or self.clock)

    # -- SNS envelopes -------------------------------------------------------------------

    def notification(
        self,
        message: dict[str, Any] | str,
        *,
        signature_version: str = "2",
        subject: str | None = None,
        timestamp: datetime | None = None,
        topic_arn: str | None = None,
    ) -> bytes:
        envelope: dict[str, Any] = {
            "Type": "Notification",
            "MessageId": str(uuid.uuid4()),
            "TopicArn": topic_arn or self.topic_arn,
            "Message": message if isinstance(message, str) else orjson.dumps(message).decode(),
            "Timestamp": _iso(timestamp or self.clock.now()),
            "UnsubscribeURL": f"https://sns.{self.region}.amazonaws.com/?Action=Unsubscribe",
        }
        if subject is not None:
            envelope["Subject"] = subject
        return self._signed(envelope, signature_version)

    def subscription_confirmation(
        self,
        *,
        signature_version: str = "2",
        timestamp: datetime | None = None,
        topic_arn: str | None = None,
    ) -> bytes:
        token = uuid.uuid4().hex * 2
        topic = topic_arn or self.topic_arn
        envelope = {
            "Type": "SubscriptionConfirmation",
            "MessageId": str(uuid.uuid4()),
            "Token": token,
            "TopicArn": topic,
            "Message": f"You have chosen to subscribe to the topic {topic}.",
            "SubscribeURL": (
                f"https://sns.{self.region}.amazonaws.com/?Action=ConfirmSubscription"
                f"&TopicArn={topic}&Token={token}"
            ),
            "Timestamp": _iso(timestamp or self.clock.now()),
        }
        return self._signed(envelope, signature_version)

    def _signed(self, envelope: dict[str, Any], signature_version: str) -> bytes:
        envelope["SignatureVersion"] = signature_version
        envelope["SigningCertURL"] = self.cert_url
        signature = self._key.sign(
            sns_string_to_sign(envelope), padding.PKCS1v15(), _HASHES[signature_version]()
        )
        envelope["Signature"] = base64.b64encode(signature).decode()
        return orjson.dumps(envelope)

    @staticmethod
    def headers(body: bytes) -> dict[str, str]:
        """The headers SNS sends with a body built here."""
        return {
            "x-amz-sns-message-type": str(orjson.loads(body)["Type"]),
            "Content-Type": "text/plain; charset=UTF-8",
        }

    # -- SES notifications (the inner Message) ----------------------------------------------

    def ses_mail(self, *, delivery_id: str, destination: str, message_id: str) -> dict[str, Any]:
        return {
            "timestamp": _iso(self.clock.now()),
            "messageId": message_id,
            "source": "alerts@herald.example",
            "destination": [destination],
            "headersTruncated": False,
            "headers": [
                {"name": "Message-ID", "value": message_id_for(delivery_id)},
                {"name": "To", "value": destination},
            ],
            "commonHeaders": {"messageId": message_id_for(delivery_id), "to": [destination]},
            "tags": {"herald_delivery_id": [delivery_id]},
        }

    def ses_bounce(
        self,
        *,
        delivery_id: str,
        address: str,
        message_id: str = "0100018c-ses-message-id",
        bounce_type: str = "Permanent",
    ) -> dict[str, Any]:
        return {
            "notificationType": "Bounce",
            "bounce": {
                "bounceType": bounce_type,
                "bounceSubType": "General",
                "bouncedRecipients": [
                    {
                        "emailAddress": address,
                        "action": "failed",
                        "status": "5.1.1",
                        "diagnosticCode": "smtp; 550 5.1.1 user unknown",
                    }
                ],
                "timestamp": _iso(self.clock.now()),
                "feedbackId": str(uuid.uuid4()),
            },
            "mail": self.ses_mail(
                delivery_id=delivery_id, destination=address, message_id=message_id
            ),
        }

    def ses_complaint(
        self, *, delivery_id: str, address: str, message_id: str = "0100018c-ses-message-id"
    ) -> dict[str, Any]:
        return {
            "notificationType": "Complaint",
            "complaint": {
                "complainedRecipients": [{"emailAddress": address}],
                "timestamp": _iso(self.clock.now()),
                "feedbackId": str(uuid.uuid4()),
                "complaintFeedbackType": "abuse",
            },
            "mail": self.ses_mail(
                delivery_id=delivery_id, destination=address, message_id=message_id
            ),
        }

    def ses_delivery(
        self, *, delivery_id: str, address: str, message_id: str = "0100018c-ses-message-id"
    ) -> dict[str, Any]:
        return {
            "notificationType": "Delivery",
            "delivery": {
                "timestamp": _iso(self.clock.now()),
                "recipients": [address],
                "processingTimeMillis": 420,
                "smtpResponse": "250 2.0.0 OK",
            },
            "mail": self.ses_mail(
                delivery_id=delivery_id, destination=address, message_id=message_id
            ),
        }


def _iso(moment: datetime) -> str:
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"
