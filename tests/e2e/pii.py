"""Personal data for the PII scan (``test_e2e_pii_scan``): making valid values, and finding
them again in whatever the platform wrote.

Values are valid to the platform's own recognisers (GB 11643 check character, Luhn,
GB 32100 and GB 11714 check characters), computed with ``autoglm.privacy.checks``. Each
place a client can put data in gets a set of its own (``Places``), so a value found names
the place it came from.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from urllib.parse import quote

from autoglm.privacy import PiiGuard
from autoglm.privacy.checks import (
    id_check_char,
    is_card_number,
    is_cn_id,
    is_uscc,
    luhn_ok,
    org_code_check_char,
    uscc_check_char,
)

CATEGORIES = ("cn_id", "cn_mobile", "bank_card", "cn_uscc", "email", "ipv4", "ipv6", "passport")
MOBILE_STYLES = ("+86 {}", "0086-{}", "{}", "+86{}")


def values(n: int) -> dict[str, str]:
    """The ``n``-th set (1 to 150) of valid values, one per category, as a client would
    write them: each check character computed, phones and cards in several styles."""
    body = f"310104{1960 + n % 40}{1 + n % 12:02d}{10 + n % 18:02d}{100 + n:03d}"
    mobile = f"1{3 + n % 7}{n % 10}{(47_110_000 + n * 7_919) % 100_000_000:08d}"
    card = f"6217{3_000_000 + n * 104_729:014d}"
    card += next(d for d in "0123456789" if luhn_ok(card + d))
    org = f"MA{(100_000 + n * 7_331) % 1_000_000:06d}"
    uscc = f"91310104{org}{org_code_check_char(org)}"
    return {
        "cn_id": body + id_check_char(body),
        "cn_mobile": MOBILE_STYLES[n % len(MOBILE_STYLES)].format(mobile),
        "bank_card": " ".join(card[i:i + 4] for i in range(0, 19, 4)) if n % 2 else card,
        "cn_uscc": uscc + uscc_check_char(uscc),
        "email": f"wang.fang{n}@pii-scan.example.com",
        "ipv4": f"203.0.113.{100 + n}",
        "ipv6": f"2001:db8:{0x100 + n:x}::8a2e:370:7334",
        "passport": f"E{(27_182_818 + n * 3_141) % 100_000_000:08d}",
    }


def sentence(v: dict[str, str], skip: tuple[str, ...] = ()) -> str:
    """The values in a text, as a person would write them."""
    parts = {"cn_id": "身份证 {}", "cn_mobile": "手机 {}", "bank_card": "卡号 {}",
             "cn_uscc": "信用代码 {}", "email": "邮箱 {}", "ipv4": "IP {}", "ipv6": "IPv6 {}",
             "passport": "护照 {}"}
    return "我叫王芳，" + "，".join(parts[c].format(v[c]) for c in CATEGORIES
                                if c not in skip) + "。请回答：好。"


def id_safe(v: dict[str, str]) -> str:
    """The values a request-id header keeps ([A-Za-z0-9._:-], at most 128 characters)."""
    digits = "".join(c for c in v["cn_mobile"] if c.isdigit())[-11:]
    card = v["bank_card"].replace(" ", "")
    return "-".join((v["cn_id"], digits, card, v["cn_uscc"], v["ipv4"], v["passport"]))


def label(v: dict[str, str]) -> str:
    """The values in a purpose or consent label ([\\w .:/@-], no '+')."""
    return " ".join(v[c].replace("+", "00") for c in CATEGORIES)


def spellings(category: str, value: str) -> set[str]:
    """How a raw value could be written down: as sent, without separators, in another case,
    percent-encoded, and for a phone without its country code."""
    out = {value, value.upper(), value.lower(), quote(value, safe="")}
    if category in ("cn_id", "cn_mobile", "bank_card", "passport", "cn_uscc"):
        compact = "".join(c for c in value if c.isalnum())
        out |= {compact, compact.upper(), compact.lower()}
    if category == "cn_mobile":
        digits = "".join(c for c in value if c.isdigit())
        national = digits[-11:]
        out |= {digits, national, "86" + national, "+86" + national, "0086" + national}
    if category == "ipv6":
        out.add(ipaddress.IPv6Address(value).exploded)
    return {s for s in out if len(s) >= 8}


class Places:
    """The value set of each place a client can put personal data."""

    def __init__(self) -> None:
        self.sets: dict[str, dict[str, str]] = {}

    def __call__(self, place: str) -> dict[str, str]:
        if place not in self.sets:
            self.sets[place] = values(len(self.sets) + 1)
        return self.sets[place]


def check_values_are_recognised(v: dict[str, str]) -> None:
    """The values are real personal data to the platform's own recognisers, else the scan
    would prove nothing."""
    if not (is_cn_id(v["cn_id"]) and is_uscc(v["cn_uscc"])
            and is_card_number(v["bank_card"].replace(" ", ""))):
        raise AssertionError(f"an invalid test value: {v}")
    text = sentence(v)
    found = {f.category: text[f.start:f.end] for f in PiiGuard().scan(text)}
    assert found == v, (found, v)


def id_shaped(v: dict[str, str]) -> list[str]:
    """Values shaped like the store's ids (``prj_...``): they pass the id check and reach a
    database lookup, where a malformed one is turned away before it."""
    digits = "".join(c for c in v["cn_mobile"] if c.isdigit())[-11:]
    return [f"prj_{v['cn_id'].lower()}", f"prn_{digits}", f"key_{v['bank_card'].replace(' ', '')}"]


def leaks(files: list[Path], p: Places) -> list[str]:
    """Every raw value found, as 'place/category spelling in file @offset: context'."""
    needles = [(place, cat, s.encode()) for place, v in p.sets.items() for cat, value in v.items()
               for s in spellings(cat, value)]
    found = []
    for path in files:
        data = path.read_bytes()
        for place, cat, needle in needles:
            at, seen = data.find(needle), 0
            while at >= 0 and seen < 3:  # a few of each: enough to tell the fields apart
                context = data[max(0, at - 120):at + len(needle) + 60]
                found.append(f"{place}/{cat} {needle.decode()!r} in {path.name} @{at}: "
                             f"{context.decode('utf-8', 'replace')!r}")
                at, seen = data.find(needle, at + 1), seen + 1
    return found
