"""The PII guard's one-shot API: recognisers on published examples, boundaries, mask
shapes, block, allow, policy validation, and a recogniser added in a few lines."""

from __future__ import annotations

import pytest

from autoglm.errors import ConfigError, InvalidRequestError
from autoglm.privacy import (
    DEFAULT_RECOGNISERS,
    GuardPolicy,
    PiiBlockedError,
    PiiGuard,
    Recogniser,
    keep,
)

ID = "11010519491231002X"  # the worked example of GB 11643-1999
USCC = "91350100M000100Y43"  # a published business licence code (GB 32100 and GB 11714 check)


def found(text: str, guard: PiiGuard | None = None) -> list[tuple[str, str]]:
    return [(f.category, text[f.start:f.end]) for f in (guard or PiiGuard()).scan(text)]


@pytest.mark.parametrize(("text", "expected"), [
    (f"身份证{ID}。", [("cn_id", ID)]),
    ("身份证110105194912310021。", []),                    # wrong check character
    ("身份证11010519491331002X。", []),                    # month 13
    ("old ID 110105491231002 on file", [("cn_id", "110105491231002")]),  # 15-digit form
    (f"信用代码{USCC}", [("cn_uscc", USCC)]),
    ("信用代码91350100M000100Y44", []),
    ("Visa 4111111111111111.", [("bank_card", "4111111111111111")]),
    ("Visa 4111111111111112.", []),                       # Luhn
    ("卡号 4111-1111-1111-1111 到期", [("bank_card", "4111-1111-1111-1111")]),
    ("tel:+86 138 1234 5678", [("cn_mobile", "+86 138 1234 5678")]),
    ("电话12812345678", []),                               # no 12x mobile numbers
    ("server 192.168.1.20:8080", [("ipv4", "192.168.1.20")]),
    ("version 1.2.3.4.5 and 300.1.1.1", []),
    ("[2001:db8::8a2e:370:7334]:443", [("ipv6", "2001:db8::8a2e:370:7334")]),
    ("at 12:30:45, std::vector", []),
    ("护照E12345678，签证", [("passport", "E12345678")]),
    ("ticket P1234567", []),                               # no context word: not a passport
    ("Passport No. P1234567", [("passport", "P1234567")]),
])
def test_recognisers(text: str, expected: list[tuple[str, str]]) -> None:
    assert found(text) == expected


def test_no_match_inside_longer_runs_and_words() -> None:
    assert found(f"9{ID}") == [] and found(f"{ID[:17]}12") == []
    assert found("x13812345678") == [] and found("138123456789") == []
    assert found("abcE12345678") == []
    # Chinese characters are a boundary (where \b would not be)
    assert found("电话13812345678号") == [("cn_mobile", "13812345678")]


def test_overlaps_keep_the_longer_value() -> None:
    assert found("mail 13812345678@qq.com now") == [("email", "13812345678@qq.com")]
    assert found("地址::ffff:10.1.2.3。") == [("ipv6", "::ffff:10.1.2.3")]


def test_text_without_digits_or_at_holds_nothing() -> None:
    assert PiiGuard().scan("没有任何号码的一段话, nothing here: at all." * 50) == []


@pytest.mark.parametrize(("value", "masked"), [
    ("13812345678", "138****5678"),
    ("+86 138-1234-5678", "+86 138-****-5678"),
    ("0086 13812345678", "0086 138****5678"),
    ("(+86) 138 1234 5678", "(+86) 138 **** 5678"),
    (ID, "110105********002X"),
    ("110105491231002", "110105*****1002"),
    ("4111 1111 1111 1111", "4111 **** **** 1111"),
    ("4111111111111111", "4111********1111"),
    ("3782 822463 10005", "3782 ****** *0005"),
    (USCC, "9135************43"),
    ("zhang.san@example.com", "z***@example.com"),
    ("10.1.2.3", "10.*.*.*"),
    ("2001:db8::1", "2001:***::*"),
    ("E12345678", "E******78"),
])
def test_mask_keeps_the_shape(value: str, masked: str) -> None:
    result = PiiGuard().apply(f"值：{value}。")
    assert result.text == f"值：{masked}。"
    assert result.blocked == ()


def test_block_names_the_category_never_the_value() -> None:
    guard = PiiGuard(GuardPolicy({"cn_id": "block"}))
    result = guard.apply(f"我的身份证是{ID}，手机13812345678，身份证再说一遍{ID}")
    assert result.blocked == ("cn_id",)
    assert ID not in result.text and "[blocked:cn_id]" in result.text
    assert "138****5678" in result.text
    err = result.error()
    assert isinstance(err, PiiBlockedError) and isinstance(err, InvalidRequestError)
    assert err.status == 400 and err.code == "pii_blocked"
    assert "cn_id" in err.message and ID not in str(err.to_dict()) and "1949" not in err.message


def test_allow_leaves_the_value_and_reports_it() -> None:
    guard = PiiGuard(GuardPolicy({"email": "allow"}))
    text = "mail zhang@example.com, tel 13812345678"
    result = guard.apply(text)
    assert result.text == "mail zhang@example.com, tel 138****5678"
    assert [f.category for f in result.findings] == ["email", "cn_mobile"]
    assert result.error() is None


def test_all_allowed_is_a_pass_through() -> None:
    guard = PiiGuard(GuardPolicy(default="allow"))
    text = f"{ID} 13812345678"
    assert guard.apply(text).text == text
    stream = guard.stream()
    assert stream.feed(text[:5]) + stream.feed(text[5:]) + stream.finish() == text


def test_default_applies_to_unnamed_categories() -> None:
    guard = PiiGuard(GuardPolicy({"cn_mobile": "mask"}, default="block"))
    result = guard.apply("13812345678 zhang@example.com")
    assert result.text == "138****5678 [blocked:email]" and result.blocked == ("email",)


@pytest.mark.parametrize(("make", "words"), [
    (lambda: GuardPolicy({"cn_id": "hide"}), ["cn_id", "allow, mask, block", "hide"]),
    (lambda: GuardPolicy(default="drop"), ["default", "drop"]),
    (lambda: PiiGuard(GuardPolicy({"ssn": "block"})), ["ssn", "cn_id"]),
    (lambda: GuardPolicy.from_mapping({"default": "mask", "email": 3}), ["email", "string"]),
    (lambda: PiiGuard(recognisers=(*DEFAULT_RECOGNISERS, DEFAULT_RECOGNISERS[0])), ["unique"]),
    (lambda: PiiGuard(recognisers=[Recogniser("Bad-Name", "0-9", "[0-9]{6}", keep(1, 1), 7)]),
     ["lower-case"]),
    (lambda: PiiGuard(recognisers=[Recogniser("emp", "E", "(MP)-[0-9]{6}", keep(1, 1), 10)]),
     ["(?:...)"]),
    (lambda: PiiGuard(recognisers=[Recogniser("emp", "E", "MP-[0-9", keep(1, 1), 10)]),
     ["emp", "does not compile"]),
])
def test_bad_configuration_is_refused_with_a_clear_message(make, words) -> None:
    with pytest.raises(ConfigError) as exc:
        make()
    for word in words:
        assert word in exc.value.message


def test_policy_from_settings() -> None:
    policy = GuardPolicy.from_mapping({"default": "allow", "cn_id": "block", "email": "mask"})
    assert policy.action("cn_id") == "block" and policy.action("ipv4") == "allow"
    assert hash(policy) == hash(GuardPolicy({"email": "mask", "cn_id": "block"}, "allow"))
    with pytest.raises(TypeError):
        policy.actions["ipv4"] = "block"  # type: ignore[index]


def test_a_new_recogniser_in_a_few_lines() -> None:
    employee = Recogniser("employee_id", first="E", rest=r"MP-[0-9]{6}", mask=keep(3, 2),
                          max_len=10)
    guard = PiiGuard(GuardPolicy({"employee_id": "mask"}),
                     recognisers=(*DEFAULT_RECOGNISERS, employee))
    result = guard.apply("工号EMP-123456，手机13812345678；工号XEMP-123456不算")
    assert result.text == "工号EMP-****56，手机138****5678；工号XEMP-123456不算"
    stream = guard.stream()
    assert "".join(stream.feed(c) for c in "工号EMP-123456。") + stream.finish() == "工号EMP-****56。"
