"""The recognisers: one small declaration per category of personal data.

A :class:`Recogniser` names the characters its values start with (``first``, the body of a
regex character class), a regular expression for the rest of the value (``rest``), a
``check`` that confirms a candidate (checksums, dates, context) and how to ``mask`` it. The
scanner joins every recogniser into one compiled expression, so the text is read once and
the checks run on candidates only. Boundaries are added by the scanner: a value is never
preceded or followed by an ASCII letter or digit (``\\b`` is no use next to Chinese text),
so nothing fires inside a longer run of digits. ``rest`` may look back at the first
character with ``(?<=...)``; it must not capture (use ``(?:...)``).

Values that cannot be found from their first character (an e-mail's local part is any
word) use an :class:`AnchoredRecogniser`: a fast expression for a character every value
holds (``@``), and a ``locate`` function that widens the hit to the whole value.

Adding a category, e.g. an employee number ``EMP-123456``::

    Recogniser("employee_id", first="E", rest=r"MP-[0-9]{6}", mask=keep(3, 2), max_len=10)

Every value and every right-hand context a check looks at consists of characters in
``VALUE_CHARS`` (plus single spaces between digits); the streaming guard relies on it to
decide how much text to hold back.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass

from autoglm.privacy.checks import is_card_number, is_cn_id, is_uscc

Check = Callable[[str, int, int], bool]  # (text, start, end) -> is it really a value
Mask = Callable[[str], str]              # value -> the same value with its secret part hidden

VALUE_CHARS = "0-9A-Za-z+\\-.@:_%()"  # character-class body; see the module docstring
# What the first ``min_len`` characters of a Recogniser's value are made of: the scanner
# skips any candidate that does not start so, before trying the recognisers one by one
# (times, prices, short numbers and capitalised words fail here in a few steps).
HEAD_CHARS = "0-9A-Z+() .\\-"


def _always(text: str, start: int, end: int) -> bool:
    return True


@dataclass(frozen=True)
class Recogniser:
    """A category found by a regular expression and confirmed by ``check``."""

    category: str
    first: str  # character-class body: the characters a value can start with
    rest: str   # regular expression for the rest of the value
    mask: Mask
    max_len: int
    check: Check = _always
    needs: str = "0123456789"  # every value holds one of these characters
    min_len: int = 7  # the shortest value; its first min_len characters are in HEAD_CHARS


@dataclass(frozen=True)
class AnchoredRecogniser:
    """A category found from a character every value contains (``anchor``, an expression
    with a literal prefix so the search is fast) and widened by ``locate`` to the value's
    span, or ``None`` when the hit is not a value."""

    category: str
    anchor: str
    locate: Callable[[str, re.Match[str]], tuple[int, int] | None]
    mask: Mask
    max_len: int
    needs: str  # every value holds one of these characters
    literal: str = ""  # when set, hits are found with str.find (faster for a rare character)


def keep(head: int, tail: int) -> Mask:
    """A mask that keeps the first ``head`` and the last ``tail`` letters and digits and
    stars the ones between, separators left in place: ``138****5678``."""

    def mask(value: str) -> str:
        if value.isalnum():
            hidden = len(value) - head - tail
            return value[:head] + "*" * hidden + value[-tail:] if hidden > 0 else value
        total = sum(c.isalnum() for c in value)
        out, seen = [], 0
        for c in value:
            if c.isalnum():
                out.append(c if seen < head or seen >= total - tail else "*")
                seen += 1
            else:
                out.append(c)
        return "".join(out)

    return mask


_MASK_MOBILE = keep(3, 4)


def _mask_mobile(value: str) -> str:
    if len(value) == 11:
        return _MASK_MOBILE(value)
    prefix = sum(c.isdigit() for c in value) - 11  # 86 / 0086 before the 11 digits
    return keep(prefix + 3, 4)(value)


def _mask_email(value: str) -> str:
    local, _, domain = value.rpartition("@")
    return f"{local[0]}***@{domain}"


def _mask_ipv4(value: str) -> str:
    return value.split(".", 1)[0] + ".*.*.*"


def _mask_ipv6(value: str) -> str:
    head, sep, rest = value.partition(":")
    return head + sep + re.sub(r"[0-9A-Fa-f]", "*", rest)


def _cn_id(text: str, start: int, end: int) -> bool:
    return is_cn_id(text[start:end])


def _uscc(text: str, start: int, end: int) -> bool:
    return is_uscc(text[start:end])


def _card(text: str, start: int, end: int) -> bool:
    value = text[start:end]
    return is_card_number(value if value.isdigit() else value.replace(" ", "").replace("-", ""))


def _ipv4(text: str, start: int, end: int) -> bool:
    return all(int(part) <= 255 for part in text[start:end].split("."))


_STRICT_PASSPORT = re.compile(r"[EG][0-9]{8}|E[A-HJ-NP-Z][0-9]{7}")
_PASSPORT_WORDS = ("护照", "passport")


def _passport(text: str, start: int, end: int) -> bool:
    """The mainland formats (E or G and 8 digits, E, a letter and 7 digits) stand alone;
    other letter-and-digit numbers count only after a word such as 护照 or passport."""
    if _STRICT_PASSPORT.fullmatch(text, start, end):
        return True
    before = text[max(0, start - 24):start].lower()
    return any(word in before for word in _PASSPORT_WORDS)


_LOCAL_TAIL = re.compile(r"[A-Za-z0-9._%+\-]{1,65}\Z", re.ASCII)


def _locate_email(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    at = m.start()
    local = _LOCAL_TAIL.search(text, max(0, at - 65), at)
    if local is None or at - local.start() > 64:
        return None  # no local part, or one over 64 characters
    start = local.start()
    while start < at and text[start] in ".-+":
        start += 1
    if start == at or text[at - 1] == "." or m.end() - start > 128:
        return None
    return start, m.end()


# The run of address characters around a hit, each side bounded so a long run costs no more.
_HEX_LEFT = re.compile(r"[0-9A-Fa-f:.]{0,48}\Z", re.ASCII)
_HEX_RIGHT = re.compile(r"[0-9A-Fa-f:.]{0,48}", re.ASCII)


def _locate_ipv6(text: str, m: re.Match[str]) -> tuple[int, int] | None:
    left = _HEX_LEFT.search(text, max(0, m.start() - 48), m.start())
    right = _HEX_RIGHT.match(text, m.end())
    if left is None or right is None:  # (never: both match the empty string)
        return None
    start, end = left.start(), right.end()
    if end - start > 47:
        return None  # a run longer than any address (with a colon glued on each side)
    while end > start and text[end - 1] == ".":
        end -= 1  # the full stop of a sentence
    # A colon glued on either side ("地址:fe80::1", ":::ffff:1.2.3.4") is punctuation.
    if text.startswith(":", start) and not text.startswith("::", start) \
            or text.startswith(":::", start):
        start += 1
    if text.endswith(":", start, end) and not text.endswith("::", start, end) \
            or text.endswith(":::", start, end):
        end -= 1
    if (start > 0 and text[start - 1].isascii() and text[start - 1].isalnum()) \
            or (end < len(text) and text[end].isascii() and text[end].isalnum()):
        return None  # "xfe80::1" or "fe80::1g": part of a word
    value = text[start:end]
    if not any(c.isdigit() for c in value):
        return None  # "abc::def" and "std::" read as words, not addresses
    try:
        ipaddress.IPv6Address(value)
    except ValueError:
        return None
    return start, end


# The first two digits of a resident ID (checks.PROVINCES) and its birth date, in the
# expression, so that most digit runs that are no ID never leave the regex engine. (A
# look-behind over two literal characters is the cheapest way to test the first two.)
_PROVINCE = r"[0-9](?<=1[1-5]|2[1-3]|3[1-7]|4[1-6]|5[0-4]|6[1-5]|71|8[1-3]|91)"
_MMDD = r"(?:0[1-9]|1[0-2])(?:0[1-9]|[12][0-9]|3[01])"
# Card issuer ranges (checks.CARD_PREFIXES) by their first two digits.
_ISSUER = r"[0-9](?<=2[2-7]|3[0-9]|4[0-9]|5[1-5]|6[0245]|95)"

DEFAULT_RECOGNISERS: tuple[Recogniser | AnchoredRecogniser, ...] = (
    # Order is priority where two could read the same characters.
    Recogniser("cn_id", first="1-9",
               rest=rf"{_PROVINCE}[0-9]{{4}}(?:(?:19|20)[0-9]{{2}}{_MMDD}[0-9]{{3}}[0-9Xx]"
                    rf"|[0-9]{{2}}{_MMDD}[0-9]{{3}})",
               check=_cn_id, mask=keep(6, 4), max_len=18),
    Recogniser("cn_uscc", first="1-9ANY", rest=r"[1-9][0-9]{6}[0-9A-HJ-NP-RTUWXY]{10}",
               check=_uscc, mask=keep(4, 2), max_len=18),
    Recogniser("bank_card", first="2-69",
               rest=rf"{_ISSUER}(?:[0-9]{{11,17}}|[0-9]{{2}}(?:[ -][0-9]{{4}}){{2,3}}"
                    rf"(?:[ -][0-9]{{1,3}})?|[0-9]{{2}}[ -][0-9]{{6}}[ -][0-9]{{4,5}})",
               check=_card, mask=keep(4, 4), max_len=23),
    Recogniser("cn_mobile", first="018+(",
               rest=r"(?:(?<=1)|(?<=\+)86[ -]?1|(?<=0)086[ -]?1|(?<=8)6[ -]?1|(?<=\()\+?86\)[ -]?1)"
                    r"[3-9][0-9](?:[ -]?[0-9]{4}){2}",
               mask=_mask_mobile, max_len=20),
    Recogniser("ipv4", first="0-9",
               rest=r"(?<![0-9]\.[0-9])[0-9]{0,2}+(?:\.[0-9]{1,3}+){3}(?!\.[0-9])",
               check=_ipv4, mask=_mask_ipv4, max_len=15),
    Recogniser("passport", first="A-Z", rest=r"[A-Z][0-9]{7}|[0-9]{7,8}",
               check=_passport, mask=keep(1, 2), max_len=9, min_len=8),
    AnchoredRecogniser(
        "email", anchor=r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}"
                        r"(?![A-Za-z0-9-])",
        locate=_locate_email, mask=_mask_email, max_len=128, needs="@", literal="@"),
    AnchoredRecogniser("ipv6", anchor=r":[0-9A-Fa-f]{0,4}:", locate=_locate_ipv6,
                       mask=_mask_ipv6, max_len=45, needs="0123456789"),
)
