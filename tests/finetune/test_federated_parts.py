"""The federated parts on their own: privacy accounting, clipping, the strategy's
aggregation (with Flower's own result types), the federation's certificates."""

from __future__ import annotations

import math
import stat
from pathlib import Path

import numpy as np
import pytest

from autoglm.errors import ConfigError
from autoglm.federated.pki import Credentials, check_site_name, make_federation
from autoglm.federated.privacy import Accountant, DPConfig, clip, gdp_epsilon, l2_norm

from .conftest import needs_train

# --- accounting ------------------------------------------------------------------------


def test_epsilon_matches_the_analytic_gaussian_mechanism():
    # Balle and Wang (2018): noise sigma = 3.73 gives (1, 1e-5)-DP for sensitivity 1; the
    # classical calibration (sigma = 4.84) is loose, so it must come out below 1
    assert gdp_epsilon(1 / 3.73, 1e-5) == pytest.approx(1.0, abs=0.01)
    assert gdp_epsilon(1 / 4.84, 1e-5) < 0.8


def test_rounds_compose_as_one_gaussian_with_less_noise():
    acc = Accountant(DPConfig(noise_multiplier=2.0, clip=1.0))
    eps = [acc.spend() for _ in range(4)]
    assert eps == sorted(eps) and len(set(eps)) == 4  # each round costs something
    # 4 rounds at z = 2 are exactly one round at z = 1
    assert eps[-1] == pytest.approx(gdp_epsilon(1.0, 1e-5), rel=1e-6)
    # tighter than the classical RDP conversion for the same mechanism, never looser
    rdp = min(4 * a / (2 * 4.0) + math.log(1e5) / (a - 1) for a in np.linspace(1.1, 200, 4000))
    assert eps[-1] < rdp < eps[-1] * 1.5


def test_budget_refuses_the_round_that_would_overspend():
    acc = Accountant(DPConfig(noise_multiplier=1.0, clip=1.0, epsilon_budget=9.0))
    spent = []
    while acc.allows_another():
        spent.append(acc.spend())
    assert len(spent) == 3  # 4.38, 8.39, then 11.5 would pass 9
    assert spent[-1] <= 9.0 < acc.epsilon_after(4)


def test_noise_is_scaled_by_the_largest_site_weight():
    acc = Accountant(DPConfig(noise_multiplier=0.5, clip=2.0))
    assert acc.noise_std(0.4) == pytest.approx(0.4)


@pytest.mark.parametrize("cfg, fault", [
    (DPConfig(noise_multiplier=1.0), "clip"),
    (DPConfig(noise_multiplier=1.0, clip=1.0, delta=0), "delta"),
    (DPConfig(clip=1.0, epsilon_budget=5.0), "noise"),
    (DPConfig(noise_multiplier=-1.0, clip=1.0), "negative"),
])
def test_bad_privacy_settings_are_refused(cfg, fault):
    with pytest.raises(ConfigError, match=fault):
        cfg.check()


def test_clip_bounds_the_whole_update_and_keeps_its_direction():
    update = [np.full((3, 4), 2.0, np.float32), np.full(5, -1.0, np.float32)]
    clipped, norm = clip(update, 1.5)
    assert norm == pytest.approx(math.sqrt(12 * 4 + 5))
    assert l2_norm(clipped) == pytest.approx(1.5, rel=1e-5)
    assert clipped[0][0, 0] / clipped[1][0] == pytest.approx(-2.0)
    small, _ = clip(update, 100.0)
    assert small is update


# --- the strategy --------------------------------------------------------------------------


class _Proxy:
    def __init__(self, cid: str) -> None:
        self.cid = cid


def _result(site: str, arrays: list[np.ndarray], n: int):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    return _Proxy(site), FitRes(status=Status(code=Code.OK, message="ok"),
                                parameters=ndarrays_to_parameters(arrays), num_examples=n,
                                metrics={"train_loss": 1.0})


def _strategy(dp: DPConfig, events: list, min_sites: int = 2, initial=None):
    from autoglm.federated.strategy import make_strategy

    initial = initial or [np.zeros((2, 2), np.float32), np.ones((2, 2), np.float32)]
    # tensor 0 plays a LoRA B (trained), tensor 1 an A (frozen)
    return make_strategy(initial=initial, trained=[True, False], min_sites=min_sites,
                         accountant=Accountant(dp), fit_config={},
                         on_site=lambda *a: events.append(a))


@needs_train
def test_updates_are_averaged_by_examples_and_frozen_tensors_stay():
    from flwr.common import parameters_to_ndarrays

    events: list = []
    strat = _strategy(DPConfig(), events)
    a = [np.full((2, 2), 1.0, np.float32), np.full((2, 2), 5.0, np.float32)]
    b = [np.full((2, 2), 4.0, np.float32), np.full((2, 2), 5.0, np.float32)]
    params, metrics = strat.aggregate_fit(1, [_result("a", a, 30), _result("b", b, 10)], [])
    new = parameters_to_ndarrays(params)
    assert np.allclose(new[0], 0.75 * 1.0 + 0.25 * 4.0)  # weighted by examples
    assert np.allclose(new[1], 1.0)  # an update to a frozen tensor is dropped
    assert metrics["sites"] == 2
    assert {(e[1], e[2]) for e in events} == {("a", "aggregated"), ("b", "aggregated")}


@needs_train
def test_the_server_clips_again_and_adds_noise_of_the_stated_size():
    from flwr.common import parameters_to_ndarrays

    events: list = []
    init = [np.zeros((200, 200), np.float32), np.zeros((2, 2), np.float32)]
    # no noise: a site that did not clip is clipped by the server (norm 1 of 400)
    strat = _strategy(DPConfig(clip=1.0), events, initial=init)
    huge = [np.full((200, 200), 2.0, np.float32), np.zeros((2, 2), np.float32)]
    params, _ = strat.aggregate_fit(1, [_result("a", huge, 1), _result("b", huge, 1)], [])
    assert l2_norm(parameters_to_ndarrays(params)) == pytest.approx(1.0, rel=1e-4)
    # noise: std z * clip * max weight on the trained tensor, none on the frozen one
    strat = _strategy(DPConfig(noise_multiplier=0.5, clip=1.0), events, initial=init)
    zero = [np.zeros((200, 200), np.float32), np.zeros((2, 2), np.float32)]
    params, _ = strat.aggregate_fit(1, [_result("a", zero, 3), _result("b", zero, 1)], [])
    new = parameters_to_ndarrays(params)
    assert float(new[0].std()) == pytest.approx(0.5 * 1.0 * 0.75, rel=0.03)
    assert not new[1].any()
    assert strat.reports[1].epsilon == pytest.approx(gdp_epsilon(2.0, 1e-5))


@needs_train
def test_a_round_with_too_few_sites_changes_nothing():
    events: list = []
    strat = _strategy(DPConfig(noise_multiplier=1.0, clip=1.0), events, min_sites=2)
    strat.sampled[2] = ["a", "c"]  # what configure_fit asked
    one = [np.ones((2, 2), np.float32), np.zeros((2, 2), np.float32)]
    params, metrics = strat.aggregate_fit(
        2, [_result("a", one, 5)], [(_Proxy("c"), None), RuntimeError("stream broke")])
    assert params is None and metrics["applied"] == 0
    outcomes = {(e[1], e[2]) for e in events}
    assert ("a", "discarded") in outcomes and ("c", "failed") in outcomes
    assert strat.reports[2].epsilon is None  # nothing released, nothing spent
    bad = [np.ones((3, 3), np.float32), np.zeros((2, 2), np.float32)]
    params, _ = strat.aggregate_fit(3, [_result("a", one, 5), _result("b", bad, 5)], [])
    assert params is None and strat.reports[3].refused["b"].startswith("update does not")


# --- certificates ------------------------------------------------------------------------


def test_certs_name_sites_and_keep_keys_private(tmp_path: Path):
    written = make_federation(tmp_path / "pki", ["a", "hospital-2"])
    assert set(written) == {"ca", "server", "site-a", "site-hospital-2"}
    creds = Credentials.load(tmp_path / "pki/ca.pem", tmp_path / "pki/site-hospital-2.pem",
                             tmp_path / "pki/site-hospital-2.key")
    assert creds.common_name() == "hospital-2"
    for key in (tmp_path / "pki").glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    with pytest.raises(ConfigError, match="exists"):
        make_federation(tmp_path / "pki", ["b"])
    with pytest.raises(ConfigError, match="different"):
        make_federation(tmp_path / "other", ["a", "a"])
    with pytest.raises(ConfigError, match="not found"):
        Credentials.load(tmp_path / "nope.pem", tmp_path / "pki/ca.pem", tmp_path / "pki/ca.key")


@pytest.mark.parametrize("name", ["A", "-a", "a b", "x" * 33, ""])
def test_bad_site_names_are_refused(name):
    with pytest.raises(ConfigError, match="site name"):
        check_site_name(name)
