"""A generated corpus for the PII recognisers: valid values of every category in many
formats, and near-misses, inside mixed Chinese and English sentences (fixed seed).

Check characters are computed here from the standards' own definitions, independently of
``autoglm.privacy.checks``: GB 11643 weights as 2^(17-i) mod 11, GB 32100 weights as
3^i mod 31, GB 11714 from its table, Luhn by doubling every second digit.
"""

from __future__ import annotations

import ipaddress
import random
from dataclasses import dataclass, field

SEED = 20240611
CATEGORIES = ("cn_id", "cn_mobile", "bank_card", "cn_uscc", "email", "ipv4", "ipv6", "passport")
PROVINCES = ("11", "12", "13", "14", "15", "21", "22", "23", "31", "32", "33", "34", "35", "36",
             "37", "41", "42", "43", "44", "45", "46", "50", "51", "52", "53", "54", "61", "62",
             "63", "64", "65")
MOBILE_PREFIXES = ("130", "131", "132", "133", "134", "135", "136", "137", "138", "139", "145",
                   "147", "150", "151", "152", "153", "155", "156", "157", "158", "159", "166",
                   "170", "173", "175", "176", "177", "178", "180", "181", "182", "183", "184",
                   "185", "186", "187", "188", "189", "191", "193", "195", "198", "199")
USCC_SET = "0123456789ABCDEFGHJKLMNPQRTUWXY"


@dataclass
class Sample:
    text: str = ""
    spans: list[tuple[str, int, int]] = field(default_factory=list)  # expected values
    kinds: list[str] = field(default_factory=list)  # near-miss kinds it holds

    def add(self, s: str) -> None:
        self.text += s

    def add_value(self, category: str, value: str) -> None:
        self.spans.append((category, len(self.text), len(self.text) + len(value)))
        self.text += value


# -- check characters, from the standards ---------------------------------------------

def id_check(body17: str) -> str:
    s = sum(int(c) * pow(2, 17 - i, 11) for i, c in enumerate(body17))
    return "10X98765432"[s % 11]


def luhn_digit(body: str) -> str:
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c)
        if i % 2 == 0:  # doubled: it will sit left of the check digit
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def org_check(body8: str) -> str:
    table = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    s = sum(table.index(c) * w for c, w in zip(body8, (3, 7, 9, 10, 5, 8, 4, 2)))
    c = 11 - s % 11
    return {10: "X", 11: "0"}.get(c, str(c))


def uscc_check(body17: str) -> str:
    s = sum(USCC_SET.index(c) * pow(3, i, 31) for i, c in enumerate(body17))
    return USCC_SET[(31 - s % 31) % 31]


# -- valid values -----------------------------------------------------------------------

def _digits(rng: random.Random, n: int) -> str:
    return "".join(rng.choice("0123456789") for _ in range(n))


def _birth(rng: random.Random, lo: int = 1930, hi: int = 2020) -> tuple[int, int, int]:
    y, m = rng.randint(lo, hi), rng.randint(1, 12)
    d = rng.randint(1, 28 if m == 2 else 30)
    return y, m, d


def cn_id(rng: random.Random, *, want_x: bool = False) -> str:
    while True:
        y, m, d = _birth(rng)
        body = f"{rng.choice(PROVINCES)}{_digits(rng, 4)}{y:04d}{m:02d}{d:02d}{_digits(rng, 3)}"
        check = id_check(body)
        if want_x == (check == "X"):
            return body + (check if rng.random() < 0.8 else check.lower())


def cn_id15(rng: random.Random) -> str:
    y, m, d = _birth(rng, 1930, 1999)
    return f"{rng.choice(PROVINCES)}{_digits(rng, 4)}{y % 100:02d}{m:02d}{d:02d}{_digits(rng, 3)}"


def mobile_number(rng: random.Random) -> str:
    return rng.choice(MOBILE_PREFIXES) + _digits(rng, 8)


def format_mobile(rng: random.Random, n: str) -> str:
    a, b, c = n[:3], n[3:7], n[7:]
    return rng.choice((
        n, f"{a} {b} {c}", f"{a}-{b}-{c}", f"+86 {n}", f"+86-{a}-{b}-{c}", f"+86{n}",
        f"0086 {a} {b} {c}", f"86-{n}", f"(+86) {a} {b} {c}", f"+86 {a}-{b}-{c}",
    ))


def card_number(rng: random.Random) -> str:
    prefix, length = rng.choice((
        ("622202", 16), ("622848", 19), ("621700", 19), ("625807", 16), ("4", 16),
        ("4367", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15),
        ("3528", 16), ("6011", 16), ("601382", 19), ("9558", 19),
    ))
    body = prefix + _digits(rng, length - len(prefix) - 1)
    return body + luhn_digit(body)


def format_card(rng: random.Random, n: str) -> str:
    if len(n) == 15:  # American Express: 4-6-5
        sep = rng.choice((" ", "-", None))
        return n if sep is None else sep.join((n[:4], n[4:10], n[10:]))
    sep = rng.choice((" ", "-", None))
    return n if sep is None else sep.join(n[i:i + 4] for i in range(0, len(n), 4))


def uscc(rng: random.Random) -> str:
    head = rng.choice("999999951NY") + rng.choice("1239")
    region = rng.choice(PROVINCES) + _digits(rng, 4)
    org = "".join(rng.choice("0123456789" if rng.random() < 0.8 else "ABCDEFGHJKLMNPQRTUWXY")
                  for _ in range(8))
    body = head + region + org + org_check(org)
    return body + uscc_check(body)


def email(rng: random.Random) -> str:
    local = rng.choice(("zhang.san", "li_si", "wangwu88", "chen+news", "user.name-1", "x",
                        "Service", "hr2024", "a.b.c")) + rng.choice(("", str(rng.randint(1, 99))))
    domain = rng.choice(("example.com", "mail.example.cn", "qq.com", "163.com",
                         "corp.example.com.cn", "sub-domain.example.org", "example.co.uk"))
    return f"{local}@{domain}"


def ipv4(rng: random.Random) -> str:
    return ".".join(str(rng.randint(0, 255) if i else rng.randint(1, 223)) for i in range(4))


def ipv6(rng: random.Random) -> str:
    while True:
        addr = ipaddress.IPv6Address(rng.getrandbits(128))
        if rng.random() < 0.3:  # runs of zero groups, written with ::
            groups = addr.exploded.split(":")
            i = rng.randint(1, 5)
            groups[i:i + 3] = ["0000"] * 3
            addr = ipaddress.IPv6Address(":".join(groups))
        text = rng.choice((addr.compressed, addr.exploded, addr.compressed.upper(),
                           f"::ffff:{ipv4(rng)}"))
        if any(c.isdigit() for c in text):
            return text


def passport(rng: random.Random) -> tuple[str, bool]:
    """A passport number and whether it needs a context word (not a strict mainland form)."""
    kind = rng.randrange(4)
    if kind == 0:
        return "E" + _digits(rng, 8), False
    if kind == 1:
        return "G" + _digits(rng, 8), False
    if kind == 2:
        return "E" + rng.choice("ABCDEFGHJKLMNPQRSTUVWXYZ") + _digits(rng, 7), False
    return rng.choice("PSD") + _digits(rng, 7), True


def valid_value(rng: random.Random, category: str) -> tuple[str, bool]:
    """(value as written, whether it needs a context word before it)"""
    if category == "cn_id":
        r = rng.random()
        return (cn_id15(rng) if r < 0.2 else cn_id(rng, want_x=r > 0.75)), False
    if category == "cn_mobile":
        return format_mobile(rng, mobile_number(rng)), False
    if category == "bank_card":
        return format_card(rng, card_number(rng)), False
    if category == "cn_uscc":
        return uscc(rng), False
    if category == "email":
        return email(rng), False
    if category == "ipv4":
        return ipv4(rng), False
    if category == "ipv6":
        return ipv6(rng), False
    return passport(rng)


# -- near-misses: (kind, text) that hold no value -----------------------------------------

def _other_check(c: str) -> str:
    return "0" if c.upper() == "X" else "X" if c == "9" else str(int(c) + 1)


# Independent copies of the formal rules, so that a near-miss that happens to be a
# well-formed value of another category (a random 15-digit number that is a valid American
# Express number) is drawn again: it is not a near-miss. How often random numbers are
# well-formed values is measured on its own (test_corpus.py::test_random_digit_runs).
_CARD_RULES = (("4", (13, 16, 19)), ("51", (16,)), ("52", (16,)), ("53", (16,)), ("54", (16,)),
               ("55", (16,)), ("34", (15,)), ("37", (15,)), ("36", (14,)), ("62", (16, 17, 19)),
               ("60", (16, 19)), ("65", (16, 19)), ("95", (16, 19)))


def well_formed_somewhere(text: str) -> bool:
    digits = text.replace(" ", "").replace("-", "")
    if not digits.isdigit():
        return len(text) == 18 and all(c in USCC_SET for c in text) and _uscc_ok(text)
    n = len(digits)
    card = any(digits.startswith(p) and n in lengths for p, lengths in _CARD_RULES) or (
        n == 16 and 2221 <= int(digits[:4]) <= 2720) or (
        14 <= n <= 19 and (3528 <= int(digits[:4]) <= 3589 or 300 <= int(digits[:3]) <= 305
                           or 644 <= int(digits[:3]) <= 649))
    if card and int(luhn_digit(digits[:-1])) == int(digits[-1]):
        return True
    if n == 18 and _uscc_ok(digits):
        return True
    return n == 15 and digits[:2] in PROVINCES and _date_ok(1900 + int(digits[6:8]), digits[8:12])


def _date_ok(year: int, mmdd: str) -> bool:
    import datetime

    try:
        datetime.date(year, int(mmdd[:2]), int(mmdd[2:]))
    except ValueError:
        return False
    return True


def _uscc_ok(v: str) -> bool:
    return (v[1] != "0" and (v[2:4] in PROVINCES or v[2:4] == "10")
            and all(c in USCC_SET for c in v)
            and org_check(v[8:16]) == v[16] and uscc_check(v[:17]) == v[17])


def near_miss(rng: random.Random, kind: str) -> str:
    while True:
        text = _near_miss(rng, kind)
        if not well_formed_somewhere(text):
            return text


def _near_miss(rng: random.Random, kind: str) -> str:
    if kind == "id_bad_check":
        v = cn_id(rng)
        return v[:17] + _other_check(v[17])
    if kind == "id_bad_date":
        y = rng.randint(1950, 2010)
        mmdd = rng.choice(("1301", "0230", "0431", "0015", "0932", "0000", "1232"))
        body = f"{rng.choice(PROVINCES)}{_digits(rng, 4)}{y}{mmdd}{_digits(rng, 3)}"
        return body + id_check(body)  # a correct check character: only the date is wrong
    if kind == "id_bad_region":
        region = rng.choice(("00", "10", "20", "39", "49", "55", "66", "80", "99"))
        body = f"{region}{_digits(rng, 4)}"
        body += f"19{rng.randint(50, 99)}0{rng.randint(1, 9)}1{rng.randint(0, 9)}{_digits(rng, 3)}"
        return body + id_check(body)
    if kind == "id15_bad_date":
        return f"{rng.choice(PROVINCES)}{_digits(rng, 4)}{rng.randint(50, 99)}1399{_digits(rng, 3)}"
    if kind == "random_18_digits":
        return str(rng.randint(10**17, 10**18 - 1))
    if kind == "longer_run":
        # (the extra digits start no card issuer range: the run is no card either)
        return rng.choice((
            cn_id(rng) + _digits(rng, 2), rng.choice("0178") + cn_id(rng)[:17] + "5",
            "9" + mobile_number(rng), mobile_number(rng) + _digits(rng, 1),
            "1" + card_number(rng), "7" + card_number(rng), "E" + _digits(rng, 9),
        ))
    if kind == "order_number":
        date = f"2024{rng.randint(1, 12):02d}{rng.randint(1, 28):02d}"
        return date + _digits(rng, rng.randint(8, 14))
    if kind == "timestamp":
        t = rng.randint(1_600_000_000, 1_800_000_000)
        return rng.choice((str(t), f"{t}{_digits(rng, 3)}"))
    if kind == "phone_bad_prefix":
        return rng.choice((
            rng.choice(("10", "11", "12")) + _digits(rng, 9),
            f"0{rng.choice(('10', '21', '755'))}-{_digits(rng, 8)}",
            f"400-{_digits(rng, 3)}-{_digits(rng, 4)}", mobile_number(rng)[:10],
            f"{mobile_number(rng)[:3]} {_digits(rng, 3)} {_digits(rng, 4)}",
        ))
    if kind == "card_bad_luhn":
        v = card_number(rng)
        return format_card(rng, v[:-1] + str((int(v[-1]) + rng.randint(1, 9)) % 10))
    if kind == "card_bad_issuer":
        body = rng.choice(("1", "7", "8", "90", "91", "99")) + _digits(rng, 13)
        body += _digits(rng, 15 - len(body))
        return format_card(rng, body + luhn_digit(body))
    if kind == "uscc_bad_check":
        v = uscc(rng)
        return v[:17] + USCC_SET[(USCC_SET.index(v[17]) + rng.randint(1, 30)) % 31]
    if kind == "uscc_bad_org_check":  # GB 32100 check right, GB 11714 check inside it wrong
        v = uscc(rng)
        body = v[:16] + rng.choice([c for c in "0123456789X" if c != v[16]])
        return body + uscc_check(body)
    if kind == "email_like":
        return rng.choice(("user@localhost", "@zhangsan", "a@b", "name#example.com",
                           "foo@bar.c", "me@-bad-.com", "admin@", "zhang at example dot com"))
    if kind == "ipv4_bad":
        return rng.choice((f"256.{rng.randint(0, 255)}.1.1",
                           f"{rng.randint(1, 9)}.{rng.randint(0, 9)}.3",
                           f"1.2.3.4.{rng.randint(5, 9)}", f"999.{rng.randint(10, 99)}.10.10",
                           f"{rng.randint(300, 999)}.1.1.1"))
    if kind == "ipv6_bad":
        return rng.choice(("12:30:45", "2001:db8:::1", "1:2:3:4:5:6:7:8:9", "fe80::1::2",
                           "std::vector<int>", "a::b",
                           f"{rng.randint(10, 23)}:{rng.randint(10, 59)}"))
    if kind == "passport_bad":
        return rng.choice(("E" + _digits(rng, 7), "G" + _digits(rng, 9), "A" + _digits(rng, 8),
                           "EA" + _digits(rng, 6), "K" + _digits(rng, 8)))
    if kind == "everyday_numbers":
        return rng.choice((f"¥{rng.randint(1, 99)},{_digits(rng, 3)}.{_digits(rng, 2)}",
                           f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                           f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00", "3.14159",
                           f"v{rng.randint(1, 9)}.{rng.randint(0, 20)}.{rng.randint(0, 9)}",
                           f"第{_digits(rng, 7)}号", f"{rng.randint(1, 999)}%",
                           f"ISBN 978-7-{_digits(rng, 3)}-{_digits(rng, 5)}-{rng.randint(0, 9)}"))
    raise ValueError(kind)


NEAR_MISS_KINDS = ("id_bad_check", "id_bad_date", "id_bad_region", "id15_bad_date",
                   "random_18_digits", "longer_run", "order_number", "timestamp",
                   "phone_bad_prefix", "card_bad_luhn", "card_bad_issuer", "uscc_bad_check",
                   "uscc_bad_org_check",
                   "email_like", "ipv4_bad", "ipv6_bad", "passport_bad", "everyday_numbers")

# -- sentences ------------------------------------------------------------------------------

_LABELS = {
    "cn_id": ("身份证号", "ID number"), "cn_mobile": ("手机号", "mobile"),
    "bank_card": ("银行卡号", "card number"), "cn_uscc": ("统一社会信用代码", "credit code"),
    "email": ("邮箱", "e-mail"), "ipv4": ("IP地址", "IP address"),
    "ipv6": ("IPv6地址", "IPv6 address"), "passport": ("证件号", "document no."),
}
_ZH = ("我的{label}是{v}，请帮我查一下。", "请核对{label}：{v}。", "{label}（{v}）已经登记", "联系{v}即可",
       "【{v}】", "「{v}」是他的{label}", "信息如下{v}谢谢", "{label}:{v};", "——{v}——")
_EN = ("My {label} is {v}.", "Please verify the {label}: {v}, thanks.", "({v})", "- {v}\n",
       "value={v};", '"{v}"', "{label} {v} on file", "see <{v}>")
_CONTEXT = ("护照号码：", "护照 ", "Passport No. ", "passport: ")
# English filler starts with a space: "a@b.com.Could" would be one (longer) domain.
_FILLER = ("今天的会议改到下午。", " The meeting moved to the afternoon. ", "谢谢！", "好的，没问题。",
           " Could you check again? ", "另外，", " and ", "……", "\n", "客户反馈说系统很慢。")


def _clause(rng: random.Random, sample: Sample, value: str, category: str | None,
            label: str, context: bool) -> None:
    template = rng.choice(_ZH + _EN)
    head, _, tail = template.format(label=label, v="\x00").partition("\x00")
    sample.add(head)
    if context:
        sample.add(rng.choice(_CONTEXT))
    if category is None:
        sample.add(value)
    else:
        sample.add_value(category, value)
    sample.add(tail)


def build(n_per_category: int = 300, n_per_miss: int = 150, seed: int = SEED) -> list[Sample]:
    """Samples holding 1-3 valid values each (every category n_per_category times) and
    samples holding near-misses (every kind n_per_miss times), with filler between."""
    rng = random.Random(seed)
    jobs = [("value", c) for c in CATEGORIES for _ in range(n_per_category)]
    jobs += [("miss", k) for k in NEAR_MISS_KINDS for _ in range(n_per_miss)]
    rng.shuffle(jobs)
    samples: list[Sample] = []
    i = 0
    while i < len(jobs):
        sample = Sample()
        for kind, what in jobs[i:i + rng.randint(1, 3)]:
            i += 1
            sample.add(rng.choice(_FILLER))
            zh_en = rng.randrange(2)
            if kind == "value":
                value, needs_context = valid_value(rng, what)
                _clause(rng, sample, value, what, _LABELS[what][zh_en], needs_context)
            else:
                sample.kinds.append(what)
                _clause(rng, sample, near_miss(rng, what), None, ("编号", "ref")[zh_en], False)
        sample.add(rng.choice(_FILLER))
        samples.append(sample)
    return samples
