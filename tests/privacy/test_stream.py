"""The streaming guard gives exactly the one-shot result however the text is cut, holds
back no more than a value could still need, and never releases a blocked value."""

from __future__ import annotations

import random

import pytest

from autoglm.privacy import GuardPolicy, PiiGuard
from tests.privacy import corpus

ID = "11010519491231002X"
TEXTS = (
    f"身份证号码{ID}，请核对。",
    "Call me at +86 138-1234-5678 tomorrow.",
    "卡号 6222 0200 0000 0000 004 到期 12/28",  # 19-digit card split in groups
    "信用代码91350100M000100Y43已登记",
    "mail: zhang.san@example.com.cn, thanks",
    "来自 10.20.30.40:8080 的请求",
    "地址:2001:0db8:85a3:0000:0000:8a2e:0370:7334；",
    "护照号码：E12345678 Passport No. P1234567",
    "手机13812345678@qq.com 和 ::ffff:192.168.1.10。",
    "no values here, only 2024-03-15 and ¥1,234.56 at 10:30",
    f"all at once {ID} 13812345678 4111 1111 1111 1111 a@b.cn 1.2.3.4 fe80::1 E12345678",
)
POLICIES = (GuardPolicy(), GuardPolicy({"cn_id": "block", "email": "allow"}, default="mask"))


def run_stream(guard: PiiGuard, chunks: list[str]) -> tuple[str, list[str], int]:
    """The output, the blocked categories and the largest amount held back."""
    stream, out, most = guard.stream(), [], 0
    for chunk in chunks:
        out.append(stream.feed(chunk))
        most = max(most, stream.held)
        assert stream.held <= stream.max_hold
    out.append(stream.finish())
    assert stream.held == 0
    return "".join(out), stream.blocked, most


@pytest.mark.parametrize("policy", POLICIES, ids=["mask", "block-id-allow-email"])
@pytest.mark.parametrize("text", TEXTS)
def test_every_split_point_gives_the_one_shot_result(text: str, policy: GuardPolicy) -> None:
    guard = PiiGuard(policy)
    expected = guard.apply(text)
    for i in range(len(text) + 1):
        out, blocked, _ = run_stream(guard, [text[:i], text[i:]])
        assert out == expected.text, i
        assert tuple(blocked) == expected.blocked, i


@pytest.mark.parametrize("text", TEXTS)
def test_one_character_at_a_time(text: str) -> None:
    guard = PiiGuard(POLICIES[1])
    out, blocked, _ = run_stream(guard, list(text))
    assert out == guard.apply(text).text
    assert tuple(blocked) == guard.apply(text).blocked


@pytest.mark.parametrize(("fed", "released", "held"), [
    ("今天天气很好，", "今天天气很好，", 0),         # nothing a value could start with
    ("电话 138", "电话 ", 3),
    ("card 6222 0212", "card ", 9),                 # spaces between digits may be a card's
    ("hello world", "hello ", 5),                   # "world" may be an e-mail's local part
    ("IP 1.2.3.4.", "IP ", 8),                      # "1.2.3.4.5" would be no address
    ("号码 13812345678，", "号码 138****5678，", 0),  # decided by the comma
])
def test_holds_back_only_what_a_value_could_still_need(fed: str, released: str, held: int) -> None:
    stream = PiiGuard().stream()
    assert stream.feed(fed) == released
    assert stream.held == held


def test_a_long_run_of_value_characters_is_bounded() -> None:
    guard = PiiGuard()
    text = "x" * 500 + "@example.com " + "7" * 400 + " 13812345678 " + "ab." * 200 + "a@b.cn"
    out, _, most = run_stream(guard, list(text))
    assert out == guard.apply(text).text
    assert most == guard.stream().max_hold  # the bound was reached, never passed


@pytest.mark.parametrize("step", [1, 2, 5])
def test_cut_inside_a_long_run_keeps_enough_context(step: int) -> None:
    """A 70-character local part is no e-mail (over 64), so the passport number after the
    "@" is masked; a stream cut inside the run must not read the local part cut short as
    an e-mail that hides the passport number."""
    guard = PiiGuard()
    for domain in (5, 10, 30):
        text = "x" * 70 + "@" + "a" * domain + ".E12345678.com" + "+" * 200 + " 好"
        out, _, _ = run_stream(guard, [text[i:i + step] for i in range(0, len(text), step)])
        assert out == guard.apply(text).text and "E12345678" not in out


def test_blocked_value_never_released_and_reported() -> None:
    guard = PiiGuard(GuardPolicy({"cn_id": "block"}))
    stream, released = guard.stream(), ""
    for c in f"客户身份证{ID}，完毕":
        released += stream.feed(c)
        assert ID[:6] not in released or "[blocked" in released
    released += stream.finish()
    assert stream.blocked == ["cn_id"] and ID not in released
    assert released == "客户身份证[blocked:cn_id]，完毕"


def test_random_texts_and_random_cuts() -> None:
    """Fuzz: corpus sentences and runs of value characters glued together, cut at random."""
    rng = random.Random(corpus.SEED)
    samples = corpus.build(n_per_category=40, n_per_miss=10)
    noise = "0123456789abcdefABCDEF:.@-+() 号"
    for policy in POLICIES:
        guard = PiiGuard(policy)
        for _ in range(150):
            parts = [rng.choice(samples).text for _ in range(rng.randint(1, 4))]
            parts.insert(rng.randrange(len(parts) + 1),
                         "".join(rng.choice(noise) for _ in range(rng.randint(0, 300))))
            text = "".join(parts)
            cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(1, 40))))
            chunks = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
            out, blocked, _ = run_stream(guard, chunks)
            expected = guard.apply(text)
            assert out == expected.text, text
            assert tuple(blocked) == expected.blocked
