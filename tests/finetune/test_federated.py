"""Federated LoRA end to end: `autoglm federated server` and three `autoglm federated site`
processes on loopback, mutual TLS, non-IID data (each site holds only its own teams'
topics), differential privacy on.

- the federated adapter beats every site's local-only adapter (same steps, same data) on
  the union of the sites' held-out sets; it is registered, bound to its base, signed, and
  every round and every site's part in it is an audit record in an intact chain;
- a site killed in the middle of a round does not stop it (min-sites 2), and a site whose
  certificate another CA signed never takes part.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autoglm.federated.evaluate import BASE, heldout_losses
from autoglm.federated.pki import make_federation
from autoglm.finetune.housestyle import write_site_tasks
from tests.e2e.support import free_port
from tests.supply.test_signing import keypair

from .conftest import THREADS, link_base, needs_train

pytestmark = [needs_train, pytest.mark.e2e]

SITES = ("a", "b", "c")
# the shipped test's federation: 4 rounds of 6 local steps, the averaged update applied
# twice over (server lr 2), DP at noise multiplier Z with updates clipped to CLIP
ROUNDS, STEPS, LR, SERVER_LR = 4, 6, 2e-3, 2.0
Z, CLIP = 0.02, 2.0


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "autoglm", *args]


class Federation:
    def __init__(self, root: Path, bundled) -> None:
        self.root = root
        self.pki = root / "pki"
        make_federation(self.pki, list(SITES))
        self.tasks = write_site_tasks(root / "task")
        self.bundled = bundled
        self.port = free_port()
        self.procs: dict[str, subprocess.Popen] = {}

    def data_dir(self, who: str) -> Path:
        d = self.root / who
        link_base(self.bundled, d)
        return d

    def env(self, who: str) -> dict[str, str]:
        return {**os.environ, "AUTOGLM_DATA_DIR": str(self.data_dir(who)),
                "PYTHONUNBUFFERED": "1"}

    def server(self, name: str, *extra: str) -> subprocess.Popen:
        p = self.pki
        log = (self.root / f"server-{name}.log").open("w")
        proc = subprocess.Popen(_cli(
            "federated", "server", "--name", name, "--ca", str(p / "ca.pem"),
            "--cert", str(p / "server.pem"), "--key", str(p / "server.key"),
            "--listen", f"127.0.0.1:{self.port}", "--join-timeout", "300",
            "--round-timeout", "300", *extra), env=self.env("server"), stdout=log,
            stderr=subprocess.STDOUT)
        self.procs["server"] = proc
        return proc

    def site(self, site: str, pki: Path | None = None, *extra: str) -> subprocess.Popen:
        p = pki or self.pki
        train, held = self.tasks.get(site, self.tasks["a"])  # an intruder: site a's data
        log = (self.root / f"site-{site}.log").open("w")
        proc = subprocess.Popen(_cli(
            "federated", "site", "--server", f"localhost:{self.port}", "--data", str(train),
            "--heldout", str(held), "--ca", str(p / "ca.pem"), "--cert",
            str(p / f"site-{site}.pem"), "--key", str(p / f"site-{site}.key"),
            "--threads", str(THREADS), *extra), env=self.env(site), stdout=log,
            stderr=subprocess.STDOUT)
        self.procs[site] = proc
        return proc

    def log(self, who: str) -> str:
        name = who if who.startswith("server") else f"site-{who}"
        return (self.root / f"{name}.log").read_text()

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def audit(self) -> list[tuple[str, str, str, dict]]:
        db = sqlite3.connect(self.root / "server" / "autoglm.db")
        try:
            rows = db.execute("SELECT action, actor, decision, detail FROM audit_log "
                              "WHERE action LIKE 'federated.%' ORDER BY seq").fetchall()
        finally:
            db.close()
        return [(a, actor, d, json.loads(detail or "{}")) for a, actor, d, detail in rows]


@pytest.fixture
def federation(tmp_path: Path, bundled_base):
    fed = Federation(tmp_path, bundled_base)
    yield fed
    fed.close()


def _wait(proc: subprocess.Popen, timeout: float, what: str, fed: Federation, who: str) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{what} did not finish in {timeout} s:\n{fed.log(who)[-3000:]}")


def test_three_sites_with_dp_beat_each_site_alone(federation: Federation, tmp_path: Path):
    from autoglm.finetune.job import FinetuneRequest, finetune
    from autoglm.finetune.train import TrainConfig
    from autoglm.supply.registry import Registry
    from autoglm.supply.signing import verify

    priv, pub = keypair(tmp_path, "federation")
    server = federation.server(
        "acme-fed", "--sites", "3", "--min-sites", "2", "--rounds", str(ROUNDS),
        "--local-steps", str(STEPS), "--lr", str(LR), "--server-lr", str(SERVER_LR),
        "--noise-multiplier", str(Z),
        "--clip", str(CLIP), "--sign-key", str(priv), "--json")
    for site in SITES:
        federation.site(site)
    t0 = time.monotonic()
    assert _wait(server, 900, "the federated run", federation, "server-acme-fed") == 0, \
        federation.log("server-acme-fed")
    fed_seconds = time.monotonic() - t0
    for site in SITES:
        assert _wait(federation.procs[site], 30, f"site {site}", federation, site) == 0
        assert f"site {site}: the server ended the run; this site trained in {ROUNDS} round" \
            in federation.log(site)
    out = federation.log("server-acme-fed")
    summary = json.loads(out[out.index("{\n"):])["summary"]
    eps = summary["dp"]["epsilon"]
    assert summary["rounds_applied"] == ROUNDS and 0 < eps < float("inf")
    assert [r["sites"] and sorted(r["sites"]) for r in summary["rounds"]] == [list(SITES)] * ROUNDS

    # registered, bound to the base, signed by the server's key
    data_dir = federation.root / "server"
    registry = Registry(data_dir)
    entry = registry.get("acme-fed")
    assert entry["kind"] == "adapter" and entry["source"].startswith("federated:")
    assert entry["base"]["sha256"] == federation.bundled[0].sha256
    assert verify(registry, "acme-fed", pub) == entry["signed_by"]

    # each site alone: the same steps on its own data, the same settings
    for site in SITES:
        finetune(data_dir, FinetuneRequest(federation.tasks[site][0], f"local-{site}",
                                           config=TrainConfig(
            max_steps=ROUNDS * STEPS, batch_size=4, lr=LR, val_fraction=0.0,
            threads=THREADS)))
    union = [federation.tasks[s][1] for s in SITES]
    losses = heldout_losses(data_dir, [BASE, "acme-fed", *(f"local-{s}" for s in SITES)],
                            union)
    print(f"\nunion held-out loss: {json.dumps({k: round(v, 4) for k, v in losses.items()})}; "
          f"epsilon {eps:.1f} at delta 1e-5 (z={Z}, clip={CLIP}); federated run "
          f"{fed_seconds:.0f} s")
    for site in SITES:
        assert losses["acme-fed"] < losses[f"local-{site}"], losses
    assert losses["acme-fed"] < 0.5 * losses[BASE]

    # the audit trail: every round, every site's part in it, the release; chain intact
    records = federation.audit()
    rounds = [d for a, _, _, d in records if a == "federated.round"]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    parts = {(d["round"], actor) for a, actor, dec, d in records
             if a == "federated.site" and dec == "allow" and d["outcome"] == "aggregated"}
    assert parts == {(r, f"site:{s}") for r in range(1, ROUNDS + 1) for s in SITES}
    finish = [d for a, _, _, d in records if a == "federated.finish"]
    assert finish and finish[0]["epsilon"] == pytest.approx(eps)
    check = subprocess.run(_cli("audit", "verify"), env=federation.env("server"),
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 0 and "intact" in check.stderr + check.stdout


def test_a_site_killed_mid_round_and_a_site_with_a_foreign_cert(federation: Federation,
                                                                 tmp_path: Path):
    foreign = tmp_path / "foreign-pki"
    make_federation(foreign, ["mallory"])
    # DP with a budget that two rounds fit in (epsilon 284, then 520) and three do not (747)
    server = federation.server("fed-drop", "--sites", "3", "--min-sites", "2", "--rounds", "3",
                               "--local-steps", "3", "--noise-multiplier", "0.05", "--clip",
                               "2", "--epsilon-budget", "600")
    intruder = federation.site("mallory", foreign, "--connect-timeout", "5")
    for site in SITES:
        federation.site(site)
    # the foreign certificate is refused in the TLS handshake: the intruder gives up
    assert _wait(intruder, 120, "the foreign site", federation, "mallory") != 0
    assert "TLS handshake failed" in federation.log("mallory")
    # kill site c once round 2 has begun (its round-1 evaluation is done, it is training)
    deadline = time.monotonic() + 600
    while "round 1: held-out loss" not in federation.log("c"):
        assert time.monotonic() < deadline, federation.log("server-fed-drop")
        assert server.poll() is None, federation.log("server-fed-drop")
        time.sleep(0.2)
    time.sleep(1.0)
    federation.procs["c"].send_signal(signal.SIGKILL)
    assert _wait(server, 600, "the run", federation, "server-fed-drop") == 0, \
        federation.log("server-fed-drop")
    log = federation.log("server-fed-drop")
    assert "round 2/3: applied, sites" in log and "(failed: c)" in log, log
    assert "privacy budget: round 3 would reach epsilon 746.80 > 600.0; stopping" in log
    records = federation.audit()
    round2 = [d for a, _, _, d in records if a == "federated.round" and d["round"] == 2][0]
    assert sorted(round2["sites"]) == ["a", "b"] and round2["failed"] == ["c"]
    assert ("federated.site", "site:c", "error") in {(a, actor, dec) for a, actor, dec, d
                                                      in records if d.get("round") == 2}
    assert not [r for r in records if r[1] == "site:mallory"]
    stop = [d for a, _, _, d in records if a == "federated.budget_stop"]
    assert stop and stop[0]["round"] == 3 and stop[0]["epsilon_spent"] == pytest.approx(519.7,
                                                                                       abs=0.1)
    assert [d["round"] for a, _, _, d in records if a == "federated.round"] == [1, 2]
    for site in ("a", "b"):
        assert _wait(federation.procs[site], 30, f"site {site}", federation, site) == 0
