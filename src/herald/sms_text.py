"""SMS text facts: GSM-7 or UCS-2, how many segments a body costs, E.164 phone numbers.

Pure functions, no framework. Segment sizes are those of GSM 03.40 with a concatenation
header (UDH): one GSM-7 message holds 160 septets, a concatenated part 153; one UCS-2
message holds 70 UTF-16 code units, a part 67. A character is never split across parts
(an escaped GSM-7 pair or a UTF-16 surrogate pair moves whole to the next part), as
carriers' encoders do, so the count can exceed a plain division.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import phonenumbers

# GSM 03.38 default alphabet (the escape 0x1B itself excluded: it only introduces the
# extension table).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Extension table: each costs two septets (escape + code).
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

GSM7_SINGLE_UNITS = 160
GSM7_PART_UNITS = 153
UCS2_SINGLE_UNITS = 70
UCS2_PART_UNITS = 67


class SmsEncoding(StrEnum):
    GSM7 = "GSM-7"
    UCS2 = "UCS-2"


@dataclass(frozen=True, slots=True)
class SmsSize:
    encoding: SmsEncoding
    units: int  # septets (GSM-7) or UTF-16 code units (UCS-2)
    segments: int


def is_gsm7(text: str) -> bool:
    return all(char in GSM7_BASIC or char in GSM7_EXTENSION for char in text)


def encoding_of(text: str) -> SmsEncoding:
    return SmsEncoding.GSM7 if is_gsm7(text) else SmsEncoding.UCS2


def _gsm7_units(char: str) -> int:
    return 2 if char in GSM7_EXTENSION else 1


def _ucs2_units(char: str) -> int:
    return 2 if ord(char) > 0xFFFF else 1  # outside the BMP: a surrogate pair


def _pack(unit_sizes: list[int], single: int, part: int) -> int:
    """Parts needed, never splitting one character's units across two parts."""
    if sum(unit_sizes) <= single:
        return 1
    parts, used = 1, 0
    for size in unit_sizes:
        if used + size > part:
            parts, used = parts + 1, 0
        used += size
    return parts


def measure(text: str) -> SmsSize:
    """Encoding, units and segments of an SMS body (an empty body is still one message)."""
    if is_gsm7(text):
        sizes = [_gsm7_units(char) for char in text]
        segments = _pack(sizes, GSM7_SINGLE_UNITS, GSM7_PART_UNITS)
        return SmsSize(SmsEncoding.GSM7, sum(sizes), segments)
    sizes = [_ucs2_units(char) for char in text]
    segments = _pack(sizes, UCS2_SINGLE_UNITS, UCS2_PART_UNITS)
    return SmsSize(SmsEncoding.UCS2, sum(sizes), segments)


def count_segments(text: str) -> int:
    return measure(text).segments


def normalize_phone(
    text: str, default_region: str | None = None, *, require_valid: bool = True
) -> str:
    """The number in E.164 (`+14155552671`), or ValueError saying what is wrong.

    Without a leading `+`, `default_region` (ISO 3166 alpha-2, e.g. "GB") says which
    country the number is in. `require_valid=False` accepts numbers that merely have a
    possible length (fictional ranges such as +1 555 01xx)."""
    if not text or not text.strip():
        raise ValueError("phone number is empty")
    try:
        parsed = phonenumbers.parse(text, default_region)
    except phonenumbers.NumberParseException as exc:
        hint = "" if default_region else " (international numbers must start with +)"
        raise ValueError(f"not a phone number: {text!r}: {exc}{hint}") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise ValueError(f"phone number {text!r} has an impossible length for its country")
    if require_valid and not phonenumbers.is_valid_number(parsed):
        raise ValueError(f"phone number {text!r} is not an assigned number range")
    return str(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))
