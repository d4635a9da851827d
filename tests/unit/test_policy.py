import os
from pathlib import Path

import pytest

from autoglm.security.keystore import Binding, Identity
from autoglm.security.policy import DEFAULT_POLICY, PolicyStore, Resource, authorize, parse_policy

T1, T2, P1, P2 = "ten_a", "ten_b", "prj_a1", "prj_b1"


def who(*bindings: Binding, projects=None, models=None, actions=None) -> Identity:
    return Identity("key_x", "prn_x", "x", None, tuple(bindings), projects, models, actions, None)


@pytest.fixture
def policy():
    return PolicyStore(None).current()


def test_platform_admin_may_do_anything_anywhere(policy) -> None:
    admin = who(Binding("platform_admin", None, None))
    assert authorize(policy, admin, "tenant.create", Resource())
    assert authorize(policy, admin, "key.revoke", Resource(T2, P2))


def test_tenant_admin_stays_in_its_tenant(policy) -> None:
    ta = who(Binding("tenant_admin", T1, None))
    assert authorize(policy, ta, "project.create", Resource(T1))
    assert authorize(policy, ta, "key.create", Resource(T1, P1))
    assert not authorize(policy, ta, "project.create", Resource(T2))
    assert not authorize(policy, ta, "tenant.create", Resource())
    assert not authorize(policy, ta, "policy.read", Resource(T1))


def test_member_uses_allowed_models_of_its_project_only(policy) -> None:
    m = who(Binding("member", T1, P1))
    ok = Resource(T1, P1, "m1", allowed_models=("m1",))
    assert authorize(policy, m, "inference", ok)
    assert not authorize(policy, m, "inference", Resource(T1, P1, "m2", allowed_models=("m1",)))
    assert not authorize(policy, m, "inference", Resource(T2, P2, "m1", allowed_models=("m1",)))
    assert not authorize(policy, m, "project.create", Resource(T1))
    assert authorize(policy, m, "usage.read", Resource(T1, P1))


def test_guest_reads_but_does_not_infer(policy) -> None:
    g = who(Binding("guest", T1, P1))
    assert authorize(policy, g, "usage.read", Resource(T1, P1))
    assert not authorize(policy, g, "inference", Resource(T1, P1, "m1", allowed_models=("m1",)))


def test_key_narrowing_never_widens(policy) -> None:
    res = Resource(T1, P1, "m1", allowed_models=("m1", "m2"))
    b = Binding("member", T1, P1)
    assert not authorize(policy, who(b, actions=("usage.read",)), "inference", res)
    assert not authorize(policy, who(b, models=("m2",)), "inference", res)
    assert not authorize(policy, who(b, projects=("prj_other",)), "inference", res)
    assert authorize(policy, who(b, models=("m1",), projects=(P1,)), "inference", res)
    # a narrowed key of a guest still cannot infer
    assert not authorize(policy, who(Binding("guest", T1, P1), actions=("*",)), "inference", res)


def test_no_binding_no_right(policy) -> None:
    assert not authorize(policy, who(), "model.list", Resource(T1, P1))


def test_bad_policies_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        parse_policy("version: 1\nroles:\n  wizard: []\n", "p.yaml")
    with pytest.raises(ValueError, match="scope"):
        parse_policy("version: 1\nroles:\n  guest:\n    - {actions: ['*'], scope: galaxy}\n",
                     "p.yaml")
    with pytest.raises(ValueError, match="not valid YAML"):
        parse_policy("roles: [", "p.yaml")


def _touch_write(path: Path, text: str) -> None:
    path.write_text(text)
    st = path.stat()
    os.utime(path, (st.st_atime, st.st_mtime + 1))  # make the change visible to the stat check


def test_reload_valid_invalid_removed(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(DEFAULT_POLICY.read_text())
    store = PolicyStore(path, check_interval_s=0)
    guest = who(Binding("guest", T1, P1))
    res = Resource(T1, P1, "m1", allowed_models=("m1",))
    assert not authorize(store.current(), guest, "inference", res)
    # valid change: guests may now infer
    _touch_write(path, DEFAULT_POLICY.read_text().replace(
        'actions: ["model.list", "usage.read", "job.read"]\n      scope: project',
        'actions: ["model.list", "usage.read", "job.read", "inference"]\n      scope: project'))
    assert authorize(store.current(), guest, "inference", res)
    # invalid file: refused, the last good policy stays
    _touch_write(path, "version: 1\nroles:\n  wizard: []\n")
    assert authorize(store.current(), guest, "inference", res)
    assert "unknown role" in (store.last_error or "")
    # removed file: the last good policy stays
    path.unlink()
    assert authorize(store.current(), guest, "inference", res)
    assert "removed" in (store.last_error or "")
    # back with the default: guests cannot infer again
    _touch_write(path, DEFAULT_POLICY.read_text())
    assert not authorize(store.current(), guest, "inference", res)
    assert store.last_error is None


def test_policy_values_are_strict_and_depth_is_bounded() -> None:
    from autoglm.security.policy import parse_policy

    with pytest.raises(ValueError, match="version"):
        parse_policy("version: true\nroles: {}\n", "p")
    deep = "version: 1\nroles: " + "[" * 1000 + "]" * 1000 + "\n"
    with pytest.raises(ValueError, match="nested"):
        parse_policy(deep, "p")


def test_every_reload_is_reported_applied_or_refused(tmp_path) -> None:
    from autoglm.security.policy import DEFAULT_POLICY, PolicyStore

    path = tmp_path / "policy.yaml"
    path.write_text(DEFAULT_POLICY.read_text())
    told: list[tuple[bool, str | None]] = []
    store = PolicyStore(path, check_interval_s=0, on_reload=lambda ok, err: told.append((ok, err)))
    path.write_text("version: 1\nroles: {nobody: []}\n")
    assert store.reload() is False
    path.write_text(DEFAULT_POLICY.read_text())
    assert store.reload() is True
    assert told[0][0] is False and "unknown role" in told[0][1] and told[1] == (True, None)
