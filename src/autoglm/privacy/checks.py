"""Check characters and plausibility tests behind the recognisers.

Pure functions on a value already cut out of the text:

* GB 11643-1999, citizen identity number: 18 characters, the last a check character over
  the first 17 (ISO 7064 MOD 11-2, ``X`` for 10), a birth date, a province code; the
  legacy 15-digit form has the date as ``YYMMDD`` of the 1900s and no check character.
* GB 32100-2015, unified social credit code: 18 characters from a 31-character set, the
  last a MOD 31 check character; characters 9-17 are a GB 11714-1997 organisation code
  with its own MOD 11 check character.
* Luhn, plus the issuer ranges and lengths of the card schemes seen in mainland China, so
  that one random digit run in ten is not a "card". Mainland UnionPay cards have 16, 17 or
  19 digits; 18 is left out because it is the length of a resident ID, whose province
  codes (62 Gansu) overlap the UnionPay range: a mistyped ID would read as a card.
"""

from __future__ import annotations

from datetime import date

# First two digits of a resident ID: the province-level division (GB/T 2260), plus
# 83 (residence permits of Taiwan residents) and 91 (foreigners' permanent residence).
PROVINCES = frozenset({
    11, 12, 13, 14, 15, 21, 22, 23, 31, 32, 33, 34, 35, 36, 37, 41, 42, 43, 44, 45, 46,
    50, 51, 52, 53, 54, 61, 62, 63, 64, 65, 71, 81, 82, 83, 91,
})
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
ID_CHECK = "10X98765432"  # indexed by the weighted sum mod 11

USCC_CHARS = "0123456789ABCDEFGHJKLMNPQRTUWXY"  # no I, O, S, V, Z
USCC_WEIGHTS = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)
_USCC_VALUE = {c: i for i, c in enumerate(USCC_CHARS)}
ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)

# Issuer prefix -> allowed lengths: the schemes a mainland customer carries. A 13-19 digit
# run outside them is not treated as a card.
CARD_PREFIXES: dict[str, frozenset[int]] = {
    str(prefix): frozenset(lengths)
    for lo, hi, lengths in (
        (4, 4, (13, 16, 19)),                  # Visa
        (51, 55, (16,)),                       # Mastercard
        (2221, 2720, (16,)),                   # Mastercard 2-series
        (34, 34, (15,)), (37, 37, (15,)),      # American Express
        (300, 305, (14,)), (36, 36, (14,)),    # Diners Club
        (3528, 3589, (16, 17, 18, 19)),        # JCB
        (62, 62, (16, 17, 19)),                # UnionPay (18 digits: a resident ID's length)
        (60, 60, (16, 19)), (644, 649, (16, 19)), (65, 65, (16, 19)),  # Discover, BOC
        (95, 95, (16, 19)),                    # older mainland domestic debit cards
    )
    for prefix in range(lo, hi + 1)
}
_LUHN_DOUBLE = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


def valid_date(year: int, month: int, day: int) -> bool:
    """A real calendar day between 1900 and today."""
    if not (1 <= month <= 12 and 1 <= day <= _DAYS[month - 1]):
        return False
    if month == 2 and day == 29 and not (year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)):
        return False
    return 1900 <= year <= date.today().year


def id_check_char(body: str) -> str:
    """The GB 11643 check character of the first 17 digits."""
    return ID_CHECK[sum(int(c) * w for c, w in zip(body, ID_WEIGHTS)) % 11]


def is_cn_id(value: str) -> bool:
    """An 18-character resident ID (check character, birth date, province) or the legacy
    15-digit one (birth date in the 1900s, province)."""
    if int(value[:2]) not in PROVINCES:
        return False
    if len(value) == 18:
        return (valid_date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
                and id_check_char(value) == value[17].upper())
    if len(value) == 15 and value.isdigit():
        return valid_date(1900 + int(value[6:8]), int(value[8:10]), int(value[10:12]))
    return False


def org_code_check_char(body: str) -> str:
    """The GB 11714 check character of an 8-character organisation code body."""
    total = sum((int(c) if c.isdigit() else ord(c) - 55) * w for c, w in zip(body, ORG_WEIGHTS))
    check = 11 - total % 11
    return "X" if check == 10 else "0" if check == 11 else str(check)


def uscc_check_char(body: str) -> str:
    """The GB 32100 check character of the first 17 characters."""
    total = sum(_USCC_VALUE[c] * w for c, w in zip(body, USCC_WEIGHTS))
    return USCC_CHARS[(31 - total % 31) % 31]


def is_uscc(value: str) -> bool:
    """An 18-character unified social credit code: both check characters and a province
    (or ``10``, national) region code."""
    if len(value) != 18 or any(c not in _USCC_VALUE for c in value):
        return False
    if int(value[2:4]) not in PROVINCES and value[2:4] != "10":
        return False
    return (org_code_check_char(value[8:16]) == value[16]
            and uscc_check_char(value[:17]) == value[17])


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check over a string of digits."""
    odd = sum(int(c) for c in digits[-1::-2])
    even = sum(_LUHN_DOUBLE[int(c)] for c in digits[-2::-2])
    return (odd + even) % 10 == 0


def is_card_number(digits: str) -> bool:
    """13-19 digits in a known issuer range with a length that scheme uses, and Luhn."""
    for width in (1, 2, 3, 4):
        lengths = CARD_PREFIXES.get(digits[:width])
        if lengths is not None:
            return len(digits) in lengths and luhn_ok(digits)
    return False
