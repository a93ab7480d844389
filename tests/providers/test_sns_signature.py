"""SNS signature verification against Amazon's own signatures, not the fake's.

The fake SNS (herald.fakes.sns) signs with the production `sns_string_to_sign`, so the
tests that use it cannot catch a wrong string-to-sign: they would sign and verify the same
mistake. The known-answer tests here verify two notifications that Amazon SNS itself signed
(SignatureVersion 1, SHA1, and 2, SHA256) with the certificate it published at their
SigningCertURL. Message, signatures and certificate are the public test vectors of the AWS
SDK for Ruby: aws/aws-sdk-ruby, gems/aws-sdk-sns/spec/message_verifier_spec.rb (published
by sns.us-east-2.amazonaws.com on 2022-07-28; the certificate is valid from 2021-09-07 to
2022-08-17, so the tests verify "as of" the moment of sending).
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from herald.providers.events import WebhookRejected
from herald.providers.ses.webhook import SnsCertificates, parse_ses, verify_sns

CERT_URL = (
    "https://sns.us-east-2.amazonaws.com/"
    "SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem"
)
TOPIC = "arn:aws:sns:us-east-2:295079676684:publish-and-verify-"
SIGNED_BY_AWS: dict[str, dict[str, Any]] = {
    "1": {
        "Type": "Notification",
        "MessageId": "792cda85-518f-5dd3-9163-81d851212f3a",
        "TopicArn": TOPIC + "892f85fe-4836-424d-8188-ab85bef0f362",
        "Message": "Hello world",
        "Timestamp": "2022-07-28T21:23:58.317Z",
        "SignatureVersion": "1",
        "Signature": (
            "ghtf+deOBAzHJJZ6s6CdRLfTQAlcGzq9naoFM1wi0CJiq//uVRuZnamrkWNF0fhouMFvuLVRwcz8PZLUMS"
            "fnmd5VpdTKpTyiKmy1qJAZXma0w+yi7G+I33hD1Jyk1Nbym2n0kqp3fVu2aoooiN2ZeLAT2bH0/BtjLSfN"
            "1yAOKNoprco4qV9gGUZinXJdj9a1YdNhDR2jKi33ldlsVtEXAtiaDklGEk7DgRKX38GerBPiLg3FdtgY6K"
            "C7cdeGpU/dGK+4hjc83Ive1HoFkAwqhpgInM2sMytBosoiXfCmOKmU4xeGD0gHDNZTlJUJQDlzw8Eag0H9"
            "f/5zXF9d3uy0YQ=="
        ),
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": (
            "https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn="
            + TOPIC
            + "892f85fe-4836-424d-8188-ab85bef0f362:2296bc94-7992-4be1-b15f-b97229b5c1d8"
        ),
    },
    "2": {
        "Type": "Notification",
        "MessageId": "17dea24b-55c2-540b-8362-f916557af765",
        "TopicArn": TOPIC + "62674b1d-4295-426b-88e7-5fb75652a04e",
        "Message": "Hello world",
        "Timestamp": "2022-07-28T21:24:08.324Z",
        "SignatureVersion": "2",
        "Signature": (
            "CXVqp9PfZAL+4JHS3Zxo1PFbQsvnOjvmYhtIf17TWpwc+iIVas8kZ8GopuzVzVMdatE7rCl/O4P91Zp05D"
            "wz8lk8dLhfp8gSu3Njlzxlyrmzo9x3va3Jb7zFnedgS2GKnZWHGBdwTXho+TosNUE+3e10OMSlwN5XGDwX"
            "7+R3WL+rn+AXmFAqp3alg27sYa55h1dLE9cGszGPjScPdtF3BmZsUDMx9wSdNKsCk+vSvE8yBjnCmUl7la"
            "SFj3LzPVrlSwgNYCF3kYnNAkah7NplK4SFhJYLwS0HCVCQJKa8rVbQLf9cBTu60U402mrgy0bN8xWoyimz"
            "bYbrOMJjalqkUg=="
        ),
        "SigningCertURL": CERT_URL,
        "UnsubscribeURL": (
            "https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe&SubscriptionArn="
            + TOPIC
            + "62674b1d-4295-426b-88e7-5fb75652a04e:ad7d16e3-0a7c-46aa-b23e-ffaf02250cbe"
        ),
    },
}
AWS_CERTIFICATE = b"""-----BEGIN CERTIFICATE-----
MIIF1zCCBL+gAwIBAgIQB9pYWG3Mi7xej22g9pobJTANBgkqhkiG9w0BAQsFADBG
MQswCQYDVQQGEwJVUzEPMA0GA1UEChMGQW1hem9uMRUwEwYDVQQLEwxTZXJ2ZXIg
Q0EgMUIxDzANBgNVBAMTBkFtYXpvbjAeFw0yMTA5MDcwMDAwMDBaFw0yMjA4MTcy
MzU5NTlaMBwxGjAYBgNVBAMTEXNucy5hbWF6b25hd3MuY29tMIIBIjANBgkqhkiG
9w0BAQEFAAOCAQ8AMIIBCgKCAQEAutFqueT3XgP13udzxE6UpbdjOtVO5DwoMpSM
iDNMnGzF1TYH5/R2LPUOBeTB0SkKnR4kpNcUZhicpGD4aKciz/GEZ6wu65xncfT9
H/KBOQwoXYTuClHwp6fYpGzcGFaFoEYMnijL/o4qmTSd+ukglQUgKpsDw4ofw6rU
m2CttJo+GQSNQ9NfGR1h/0J+zsApkeSYrXRx5wNlu87z8os1C/6PBrUHwt3xXeaf
Xzfwut8aRRYsS8BySOA9DAgLfNHlfdQCjKPXKrG/ussgReyWD6n/HH+j7Uha3xos
TzQqJifcxlTq6MxWdPR6fDaJNvqw6DOE7UjUNxHguXHlVfxhlQIDAQABo4IC6TCC
AuUwHwYDVR0jBBgwFoAUWaRmBlKge5WSPKOUByeWdFv5PdAwHQYDVR0OBBYEFAqz
C+vyouneE7mWWLbi9i0UsWUbMBwGA1UdEQQVMBOCEXNucy5hbWF6b25hd3MuY29t
MA4GA1UdDwEB/wQEAwIFoDAdBgNVHSUEFjAUBggrBgEFBQcDAQYIKwYBBQUHAwIw
OwYDVR0fBDQwMjAwoC6gLIYqaHR0cDovL2NybC5zY2ExYi5hbWF6b250cnVzdC5j
b20vc2NhMWIuY3JsMBMGA1UdIAQMMAowCAYGZ4EMAQIBMHUGCCsGAQUFBwEBBGkw
ZzAtBggrBgEFBQcwAYYhaHR0cDovL29jc3Auc2NhMWIuYW1hem9udHJ1c3QuY29t
MDYGCCsGAQUFBzAChipodHRwOi8vY3J0LnNjYTFiLmFtYXpvbnRydXN0LmNvbS9z
Y2ExYi5jcnQwDAYDVR0TAQH/BAIwADCCAX0GCisGAQQB1nkCBAIEggFtBIIBaQFn
AHYAKXm+8J45OSHwVnOfY6V35b5XfZxgCvj5TV0mXCVdx4QAAAF7vfDVkQAABAMA
RzBFAiEA2XfHuy36aqRFiaL8c3md2mH451go8707+fRE0pEdSRACIE/g5FXTUXUZ
PFcmOhm9TZ+uMY1i4CIQ/CKVWln6C3t+AHYAUaOw9f0BeZxWbbg3eI8MpHrMGyfL
956IQpoN/tSLBeUAAAF7vfDVjAAABAMARzBFAiBF1MhhFP0+FQt3daDFfMYoWwnr
muTInrjNpwfzlvQBugIhAPYadFzr+LaxSJoiZEbEHBvTts7bT0M3eCQONA2O7w6n
AHUAQcjKsd8iRkoQxqE6CUKHXk4xixsD6+tLx2jwkGKWBvYAAAF7vfDVdAAABAMA
RjBEAiAtPapmFAuA71ih4NoSd5hJelzAltNQpxDMcDfDyHyU8gIgWxmaa6+2KbBu
9xdv379zvnJACFR7jc+4asl08Dn4aagwDQYJKoZIhvcNAQELBQADggEBAA54QX0u
oFWXfMmv02CGZv4NWo5TapyeeixQ2kKpZHRdVZjxZrw+hoF6HD7P3kGjH8ztyJll
tDxB0qgMltbPhQdScwhA6iTgoaBYqEUC/VHKd4PmmPT6yIsM36NBZVmkGlzl5uNo
/dBgBaG0SsVJnhr5zro3c2quC7n6fVGEZhf/UgQwRnnvThnvbNKguglDMq4uEqv8
njKyleht+glkcmXO0m9qLKt6BOS0amy6U2GlAwRn0Wx02ndJtnRCSC6kPuRWK/SQ
FEjB7gCK4hdKaAOuWdZpI55vF6ifOeM8toC3g7ofO8qLTnJupAG+ZitY5J3cvHWr
HqOUdKigPDHYLRo=
-----END CERTIFICATE-----
"""
# A moment after the messages were sent, while the certificate was valid.
SENT = datetime(2022, 7, 28, 21, 25, tzinfo=UTC)


def serving(pem: bytes) -> SnsCertificates:
    """The production certificate cache and URL rule, with the fetch answered locally."""
    fetched: list[str] = []

    async def fetch(url: str) -> bytes:
        fetched.append(url)
        return pem

    return SnsCertificates(fetch)


def failing(error: Exception) -> SnsCertificates:
    async def fetch(url: str) -> bytes:
        raise error

    return SnsCertificates(fetch)


@pytest.mark.parametrize("version", ["1", "2"])
async def test_a_message_signed_by_amazon_sns_verifies(version: str) -> None:
    await verify_sns(SIGNED_BY_AWS[version], serving(AWS_CERTIFICATE), now=SENT)


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Message", "Hello world!"),
        ("MessageId", "792cda85-518f-5dd3-9163-81d851212f3b"),
        ("TopicArn", TOPIC + "other"),
        ("Timestamp", "2022-07-28T21:24:00.000Z"),
        ("Subject", "added"),
        ("Type", "SubscriptionConfirmation"),
    ],
)
async def test_any_signed_field_changed_fails_amazons_signature(
    version: str, field: str, value: str
) -> None:
    message = {**SIGNED_BY_AWS[version], field: value}
    with pytest.raises(WebhookRejected):
        await verify_sns(message, serving(AWS_CERTIFICATE), now=SENT)


async def test_unsigned_fields_may_change() -> None:
    """UnsubscribeURL is not in the string SNS signs."""
    message = {**SIGNED_BY_AWS["1"], "UnsubscribeURL": "https://sns.us-east-2.amazonaws.com/x"}
    await verify_sns(message, serving(AWS_CERTIFICATE), now=SENT)


async def test_the_versions_hashes_are_not_interchangeable() -> None:
    message = {**SIGNED_BY_AWS["1"], "SignatureVersion": "2"}
    with pytest.raises(WebhookRejected, match="bad SNS signature"):
        await verify_sns(message, serving(AWS_CERTIFICATE), now=SENT)


@pytest.mark.parametrize(
    "now",
    [datetime(2021, 9, 6, tzinfo=UTC), datetime(2022, 8, 18, tzinfo=UTC)],
    ids=["not-yet-valid", "expired"],
)
async def test_a_certificate_outside_its_validity_is_refused(now: datetime) -> None:
    message = {**SIGNED_BY_AWS["1"], "Timestamp": now.isoformat().replace("+00:00", "Z")}
    with pytest.raises(WebhookRejected, match="certificate is not valid now"):
        await verify_sns(message, serving(AWS_CERTIFICATE), now=now)


def _ec_certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(SENT - timedelta(days=1))
        .not_valid_after(SENT + timedelta(days=1))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


async def test_a_certificate_without_an_rsa_key_is_refused() -> None:
    with pytest.raises(WebhookRejected, match="has no RSA key"):
        await verify_sns(SIGNED_BY_AWS["2"], serving(_ec_certificate()), now=SENT)


@pytest.mark.parametrize(
    ("certificates", "words"),
    [
        (failing(ConnectionError("connection refused")), "cannot load signing certificate"),
        (failing(TimeoutError()), "cannot load signing certificate"),
        (failing(WebhookRejected("signing certificate answered 404")), "answered 404"),
        (serving(b"<html>not a certificate</html>"), "cannot load signing certificate"),
        (serving(AWS_CERTIFICATE[:400]), "cannot load signing certificate"),
    ],
    ids=["refused", "timeout", "404", "not-pem", "truncated"],
)
async def test_a_certificate_that_cannot_be_fetched_rejects_the_message(
    certificates: SnsCertificates, words: str
) -> None:
    with pytest.raises(WebhookRejected, match=words):
        await verify_sns(SIGNED_BY_AWS["1"], certificates, now=SENT)


async def test_a_failed_fetch_is_not_cached() -> None:
    calls: list[str] = []

    async def flaky(url: str) -> bytes:
        calls.append(url)
        if len(calls) == 1:
            raise ConnectionError("blip")
        return AWS_CERTIFICATE

    certificates = SnsCertificates(flaky)
    with pytest.raises(WebhookRejected):
        await verify_sns(SIGNED_BY_AWS["1"], certificates, now=SENT)
    await verify_sns(SIGNED_BY_AWS["1"], certificates, now=SENT)
    await verify_sns(SIGNED_BY_AWS["2"], certificates, now=SENT)
    assert calls == [CERT_URL, CERT_URL]  # then cached


async def _parse(body: bytes) -> Any:
    return await parse_ses(
        headers={},
        body=body,
        certificates=serving(AWS_CERTIFICATE),
        now=SENT,
        topic_arns={SIGNED_BY_AWS["1"]["TopicArn"]},  # the topic check passes: parsing is tested
    )


def _without(field: str) -> bytes:
    return orjson.dumps({k: v for k, v in SIGNED_BY_AWS["1"].items() if k != field})


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"Notification"',
        b"null",
        b"{}",
        b'{"Type": "Notification"}',
        orjson.dumps({**SIGNED_BY_AWS["1"], "SignatureVersion": "3"}),
        orjson.dumps({**SIGNED_BY_AWS["1"], "SignatureVersion": 1}),
        orjson.dumps({**SIGNED_BY_AWS["1"], "Signature": "not base64!"}),
        orjson.dumps({**SIGNED_BY_AWS["1"], "Signature": ""}),
        orjson.dumps({**SIGNED_BY_AWS["1"], "Signature": None}),
        orjson.dumps({**SIGNED_BY_AWS["1"], "SigningCertURL": 7}),
        orjson.dumps({**SIGNED_BY_AWS["1"], "Type": "Gossip"}),
        orjson.dumps({**SIGNED_BY_AWS["1"], "Type": None}),
        _without("MessageId"),
        _without("Timestamp"),
        _without("Signature"),
        # Amazon's own signature, but its Message is not an SES notification
        orjson.dumps(SIGNED_BY_AWS["1"]),
    ],
)
async def test_malformed_bodies_are_rejected_not_raised(body: bytes) -> None:
    with pytest.raises(WebhookRejected):
        await _parse(body)


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
_fields = st.sampled_from([*SIGNED_BY_AWS["1"], "Subject", "Token", "SubscribeURL"])


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(changes=st.dictionaries(_fields, _json, max_size=4), drop=st.sets(_fields, max_size=3))
async def test_any_mangled_sns_message_is_rejected_cleanly(
    changes: dict[str, Any], drop: set[str]
) -> None:
    """Amazon's message with fields replaced by any JSON or removed: only WebhookRejected,
    never another exception (which the API would turn into a 500)."""
    message = {k: v for k, v in {**SIGNED_BY_AWS["1"], **changes}.items() if k not in drop}
    with pytest.raises(WebhookRejected):
        await _parse(orjson.dumps(message))


def test_the_vectors_are_what_amazon_published() -> None:
    """Guards the copied vectors: the certificate is Amazon's sns.amazonaws.com one."""
    certificate = x509.load_pem_x509_certificate(AWS_CERTIFICATE)
    assert certificate.subject.rfc4514_string() == "CN=sns.amazonaws.com"
    assert "O=Amazon" in certificate.issuer.rfc4514_string()
    assert base64.b64decode(SIGNED_BY_AWS["1"]["Signature"])[:2].hex() == "821b"
