"""Bundle refusals that need no pip run (the full create/install/serve path is e2e)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoglm.errors import ConfigError, IntegrityError, NotFoundError
from autoglm.supply import bundle
from autoglm.supply.registry import Registry


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    model = tmp_path / "m"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"w" * 4096)
    (model / "config.json").write_text("{}")
    r = Registry(tmp_path / "data")
    r.add(model, "m")
    return r


def test_create_refuses_an_existing_directory_and_unknown_models(reg, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "x").write_text("keep me")
    with pytest.raises(ConfigError, match="already exists"):
        bundle.create(out, ["m"], reg, print)
    with pytest.raises(NotFoundError, match="no model named 'nope'"):
        bundle.create(tmp_path / "new", ["nope"], reg, print)
    with pytest.raises(ConfigError, match="at least one model"):
        bundle.create(tmp_path / "new", [], reg, print)
    assert (out / "x").read_text() == "keep me"


def test_a_model_changed_since_registration_is_refused_and_nothing_is_left(
        reg, tmp_path: Path) -> None:
    weights = tmp_path / "m" / "weights.bin"
    weights.write_bytes(b"x" * 4096)  # same size: only the hash tells
    with pytest.raises(IntegrityError, match="weights.bin changed since it was registered"):
        bundle.create(tmp_path / "out", ["m"], reg, print)
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / ".out.partial").exists()


def test_verify_and_install_refuse_what_is_not_a_bundle(reg, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a bundle"):
        bundle.verify(tmp_path)
    (tmp_path / "bundle.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="damaged"):
        bundle.install(tmp_path, reg, print)
