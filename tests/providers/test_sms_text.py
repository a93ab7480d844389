"""GSM-7 / UCS-2 detection, segment counting and E.164 normalisation."""

from __future__ import annotations

import pytest

from herald.sms_text import SmsEncoding, count_segments, encoding_of, measure, normalize_phone


@pytest.mark.parametrize(
    ("text", "encoding", "units", "segments"),
    [
        pytest.param("", SmsEncoding.GSM7, 0, 1, id="empty is still one message"),
        pytest.param("Hello", SmsEncoding.GSM7, 5, 1, id="ascii"),
        pytest.param("a" * 160, SmsEncoding.GSM7, 160, 1, id="gsm7 single limit"),
        pytest.param("a" * 161, SmsEncoding.GSM7, 161, 2, id="gsm7 one over"),
        pytest.param("a" * 306, SmsEncoding.GSM7, 306, 2, id="gsm7 two full parts"),
        pytest.param("a" * 307, SmsEncoding.GSM7, 307, 3, id="gsm7 third part"),
        pytest.param("Ä Ö Ñ Ü é à £ ¥ Δ Ω ß", SmsEncoding.GSM7, 21, 1, id="gsm7 accents"),
        pytest.param("€" * 80, SmsEncoding.GSM7, 160, 1, id="80 euro signs fill one"),
        pytest.param("€" * 81, SmsEncoding.GSM7, 162, 2, id="extension counts double"),
        pytest.param("{[~]}|^\\\f", SmsEncoding.GSM7, 18, 1, id="every extension char"),
        # 152 + 2 + 152 = 306 septets, but the escape pair cannot straddle parts 1 and 2.
        pytest.param("a" * 152 + "€" + "a" * 152, SmsEncoding.GSM7, 306, 3, id="no split escape"),
        pytest.param("ç", SmsEncoding.UCS2, 1, 1, id="lowercase c cedilla is not gsm7"),
        pytest.param("naïve", SmsEncoding.UCS2, 5, 1, id="i diaeresis is not gsm7"),
        pytest.param("ж" * 70, SmsEncoding.UCS2, 70, 1, id="ucs2 single limit"),
        pytest.param("ж" * 71, SmsEncoding.UCS2, 71, 2, id="ucs2 one over"),
        pytest.param("ж" * 134, SmsEncoding.UCS2, 134, 2, id="ucs2 two full parts"),
        pytest.param("ж" * 135, SmsEncoding.UCS2, 135, 3, id="ucs2 third part"),
        pytest.param("😀" * 35, SmsEncoding.UCS2, 70, 1, id="emoji are two code units"),
        pytest.param("😀" * 36, SmsEncoding.UCS2, 72, 2, id="36 emoji need two parts"),
        pytest.param("Hi 😀", SmsEncoding.UCS2, 5, 1, id="one emoji makes it ucs2"),
        # 66 + 2 + 66 = 134 code units; the surrogate pair cannot straddle parts.
        pytest.param("ж" * 66 + "😀" + "ж" * 66, SmsEncoding.UCS2, 134, 3, id="no split pair"),
    ],
)
def test_measure(text: str, encoding: SmsEncoding, units: int, segments: int) -> None:
    size = measure(text)
    assert (size.encoding, size.units, size.segments) == (encoding, units, segments)
    assert encoding_of(text) is encoding
    assert count_segments(text) == segments


@pytest.mark.parametrize(
    ("text", "region", "expected"),
    [
        ("+14155552671", None, "+14155552671"),
        ("+1 (415) 555-2671", None, "+14155552671"),
        ("020 7946 0018", "GB", "+442079460018"),
        ("+44 7911 123456", "US", "+447911123456"),
        ("0151 23456789", "DE", "+4915123456789"),
    ],
)
def test_normalize_phone(text: str, region: str | None, expected: str) -> None:
    assert normalize_phone(text, region) == expected


@pytest.mark.parametrize(
    ("text", "region", "message"),
    [
        ("", None, "empty"),
        ("   ", None, "empty"),
        ("not a number", None, "not a phone number"),
        ("07911 123456", None, "must start with +"),
        ("+1 415", None, "impossible length"),
        ("+1 555 555 0100", None, "not an assigned number range"),
    ],
)
def test_normalize_phone_refuses(text: str, region: str | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_phone(text, region)


def test_fictional_numbers_pass_when_validity_is_not_required() -> None:
    assert normalize_phone("+1 555 555 0100", require_valid=False) == "+15555550100"
