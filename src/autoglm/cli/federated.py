"""``autoglm federated certs|server|site``: federated LoRA with Flower (the train extra)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from autoglm.cli.output import fail
from autoglm.errors import AutoGLMError
from autoglm.settings import load_settings

app = typer.Typer(help="Federated LoRA: sites train on their own data and share only clipped, "
                  "noised adapter updates over mutual TLS; the server registers and signs "
                  "the result.", no_args_is_help=True)

ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file.")]
CaOpt = Annotated[Path, typer.Option(help="The federation's CA certificate (PEM).")]
CertOpt = Annotated[Path, typer.Option(help="This party's certificate (PEM).")]
KeyOpt = Annotated[Path, typer.Option(help="This party's private key (PEM).")]


class _Notes:
    def __init__(self) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

    def note(self, text: str) -> None:
        self.console.print(text)


@app.command("certs")
def certs(
    out: Annotated[Path, typer.Argument(help="Directory for the CA, server and site files.")],
    site: Annotated[list[str], typer.Option(help="A site's name (repeat per site).")],
    host: Annotated[Optional[list[str]], typer.Option(
        help="Name or address sites dial the server at (repeat; default localhost, "
             "127.0.0.1).")] = None,
) -> None:
    """Make a federation's CA, the server's certificate and one per site (keys 0600)."""
    from autoglm.federated.pki import make_federation

    try:
        written = make_federation(out, site, server_hosts=tuple(host or ("localhost",
                                                                         "127.0.0.1")))
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    Console(stderr=True, highlight=False).print(
        f"wrote {', '.join(p.name for p in written.values())} (and their .key files) to {out}; "
        "give each site its site-NAME.pem/.key and ca.pem; keep ca.key offline")


@app.command("server")
def server(
    name: Annotated[str, typer.Option(help="Registry name of the federated adapter.")],
    ca: CaOpt, cert: CertOpt, key: KeyOpt,
    listen: Annotated[str, typer.Option(help="host:port to listen on.")] = "0.0.0.0:9092",
    sites: Annotated[int, typer.Option(help="Sites to wait for before the first round.")] = 3,
    min_sites: Annotated[int, typer.Option(
        help="Results a round needs; a site that drops out does not stop a round.")] = 2,
    rounds: Annotated[int, typer.Option(help="Federated rounds.")] = 3,
    local_steps: Annotated[int, typer.Option(help="Optimizer steps per site per round.")] = 4,
    batch_size: Annotated[int, typer.Option(help="Examples per step.")] = 4,
    lr: Annotated[float, typer.Option(help="Peak learning rate at the sites.")] = 2e-3,
    server_lr: Annotated[float, typer.Option(
        help="Scale of the averaged update applied each round (1: plain FedAvg).")] = 1.0,
    rank: Annotated[int, typer.Option(help="LoRA rank.")] = 8,
    alpha: Annotated[float, typer.Option(help="LoRA alpha.")] = 16.0,
    noise_multiplier: Annotated[float, typer.Option(
        help="Gaussian noise, as a multiple of the clip norm times the largest site weight "
             "(0: no differential privacy).")] = 0.0,
    clip: Annotated[float, typer.Option(
        help="L2 bound of a site's update (0: not clipped; needed with noise).")] = 0.0,
    delta: Annotated[float, typer.Option(help="The delta the epsilon is reported at.")] = 1e-5,
    epsilon_budget: Annotated[Optional[float], typer.Option(
        help="Stop before a round that would spend more than this epsilon.")] = None,
    round_timeout: Annotated[float, typer.Option(
        help="Seconds a site may take for a round before it counts as dropped.")] = 900.0,
    join_timeout: Annotated[float, typer.Option(
        help="Seconds to wait for the sites to connect.")] = 600.0,
    base: Annotated[Optional[str], typer.Option(help="Registered base model.")] = None,
    sign_key: Annotated[Optional[Path], typer.Option(
        help="Private key (PEM) to sign the released adapter with.")] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Coordinate federated rounds and register (and sign) the aggregated adapter."""
    from autoglm.audit import AuditLog
    from autoglm.federated.pki import Credentials
    from autoglm.federated.privacy import DPConfig
    from autoglm.federated.server import FederatedServer, ServerRequest
    from autoglm.store.db import Database, database_url

    notes = _Notes()
    try:
        settings = load_settings(config)
        req = ServerRequest(
            name=name, address=listen, credentials=Credentials.load(ca, cert, key),
            sites=sites, min_sites=min_sites, rounds=rounds, local_steps=local_steps,
            batch_size=batch_size, lr=lr, server_lr=server_lr, rank=rank, alpha=alpha, base=base,
            dp=DPConfig(noise_multiplier=noise_multiplier, clip=clip, delta=delta,
                        epsilon_budget=epsilon_budget),
            round_timeout_s=round_timeout, join_timeout_s=join_timeout, sign_key=sign_key)
        req.check()
        db = Database(database_url(settings))
        db.upgrade()
        audit = AuditLog.from_settings(settings, db)
        try:
            result = FederatedServer(settings, req, audit, notes).run()
        finally:
            audit.close()
            db.close()
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    s = result.summary
    if as_json:
        print(json.dumps({"entry": result.entry, "summary": s}, indent=2, default=str))
        return
    eps = s["dp"]["epsilon"]
    notes.note(f"registered adapter {name} on {result.entry['base']['name']}: "
               f"{s['rounds_applied']} round(s) applied"
               + (f", epsilon {eps:.2f} at delta {delta:g}" if eps is not None else
                  ", no differential privacy")
               + (f"; signed by {result.entry['signed_by']}" if result.entry.get("signed_by")
                  else ""))


@app.command("site")
def site(
    server: Annotated[str, typer.Option(help="The server's host:port.")],
    data: Annotated[Path, typer.Option(help="This site's training chats (JSONL).")],
    ca: CaOpt, cert: CertOpt, key: KeyOpt,
    heldout: Annotated[Optional[Path], typer.Option(
        help="Held-out chats (JSONL); default: 10 % of --data.")] = None,
    base: Annotated[Optional[str], typer.Option(help="Registered base model.")] = None,
    connect_timeout: Annotated[float, typer.Option(help="Seconds to reach the server.")] = 60.0,
    threads: Annotated[int, typer.Option(help="torch threads (0: all cores).")] = 0,
    config: ConfigOpt = None,
) -> None:
    """Take part in a federated run: train locally, send only clipped adapter updates."""
    from autoglm.federated.pki import Credentials
    from autoglm.federated.site import Site, SiteRequest

    notes = _Notes()
    try:
        settings = load_settings(config)
        req = SiteRequest(server=server, credentials=Credentials.load(ca, cert, key),
                          data=data.expanduser(), heldout=heldout, base=base,
                          connect_timeout_s=connect_timeout, threads=threads)
        member = Site(settings, req, notes)
        member.prepare()
        done = member.run()
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    notes.note(f"site {member.name}: the server ended the run; this site trained in "
               f"{done} round(s)")
