"""``autoglm model add|verify|list|remove``: the model registry and its manifests."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from autoglm.cli.model_evaluate import model_evaluate
from autoglm.cli.output import fail
from autoglm.errors import AutoGLMError
from autoglm.settings import load_settings
from autoglm.state.locks import Locks
from autoglm.supply import manifest as mf
from autoglm.supply.registry import Registry

model_app = typer.Typer(
    help="Models: pull, register, verify, sign, encrypt, quantize, evaluate, list, remove.",
    no_args_is_help=True)
Config = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML settings file.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def _registry(config: Path | None) -> Registry:
    return Registry(load_settings(config).data_dir)


@contextmanager
def _hashing(total: int, what: str):
    """A progress bar with speed and ETA on stderr; nothing when not a terminal."""
    console = Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    with Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def _size(root: Path) -> int:
    return sum(p.stat().st_size for p in mf.model_files(root)) if root.exists() else 0


@model_app.command("add")
def model_add(path: Path, name: Annotated[Optional[str], typer.Option(
        help="Registry name (default: the file or directory name).")] = None,
              config: Config = None, as_json: AsJson = False) -> None:
    """Register a model copied in by hand: hash every file into its manifest."""
    try:
        with _hashing(_size(path.expanduser()), "hashing") as progress:
            entry = _registry(config).add(path, name, progress=progress)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    if as_json:
        print(json.dumps(entry, indent=2))
        return
    Console(stderr=True).print(f"registered {entry['name']}: {len(entry['manifest']['files'])} "
                               f"file(s), {entry['manifest']['total_size']:,} bytes",
                               highlight=False)


@model_app.command("verify")
def model_verify(name: str, pubkey: Annotated[Optional[Path], typer.Option(
        help="Also check the model's signature with this public key (PEM).")] = None,
                 config: Config = None, as_json: AsJson = False) -> None:
    """Re-hash every file; report changed, missing and extra files (and, with --pubkey, the
    signature). Exit 0 only if intact."""
    signer = None
    try:
        reg = _registry(config)
        entry = reg.get(name)
        with _hashing(entry["manifest"]["total_size"], f"verifying {name}") as progress:
            result = reg.verify(name, progress=progress)
        if pubkey is not None and result.intact:
            from autoglm.supply.signing import verify as verify_signature

            signer = verify_signature(reg, name, pubkey)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    report = {"name": name, "intact": result.intact, "changed": result.changed,
              "missing": result.missing, "extra": result.extra, "signed_by": signer}
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        err = Console(stderr=True)
        if result.intact:
            err.print(f"{name}: intact ({len(entry['manifest']['files'])} file(s))"
                      + (f", signature valid ({signer})" if signer else ""), highlight=False)
        for kind in ("changed", "missing", "extra"):
            for f in report[kind]:
                err.print(f"{name}: {kind}: {f}", highlight=False)
    if not result.intact:
        raise typer.Exit(1)


@model_app.command("list")
def model_list(config: Config = None, as_json: AsJson = False) -> None:
    """Registered models: source, revision, size, format, quantization, verified, signer."""
    try:
        entries = _registry(config).list()
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    if as_json:
        print(json.dumps(entries, indent=2))
        return
    table = Table(title="models")
    for col in ("name", "source", "revision", "size", "format", "quantization", "verified",
                "signed by", "path"):
        table.add_column(col, overflow="fold")
    for e in entries:
        v = e.get("verified") or {}
        table.add_row(e["name"], e["source"], e.get("revision") or "-",
                      f"{e['manifest']['total_size']:,}", e["format"], e.get("quantization") or "-",
                      ("yes" if v.get("intact") else "[red]NO[/]") + f" ({v.get('at', '?')[:19]})",
                      e.get("signed_by") or "-", e["path"])
    (Console() if sys.stdout.isatty() else Console(width=200)).print(table)


@model_app.command("remove")
def model_remove(name: str, config: Config = None) -> None:
    """Forget a model (its files are left where they are)."""
    try:
        entry = _registry(config).remove(name)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    Console(stderr=True).print(f"removed {name} from the registry; files stay at {entry['path']}",
                               highlight=False)


@model_app.command("quantize")
def model_quantize(name: str,
                   qtype: Annotated[str, typer.Option("--type", help="q8_0, q4_k_m, q4_0, ...")],
                   out: Annotated[Optional[str], typer.Option(
                       help="Name of the result (default NAME-TYPE).")] = None,
                   config: Config = None, as_json: AsJson = False) -> None:
    """Quantize a registered GGUF model with llama.cpp; the result is registered."""
    from autoglm.supply.quantize import quantize

    err = Console(stderr=True)
    try:
        with err.status(f"quantizing {name} to {qtype} with llama.cpp..."):
            entry = quantize(_registry(config), name, qtype, out)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    if as_json:
        print(json.dumps(entry, indent=2))
        return
    err.print(f"registered {entry['name']} ({entry['manifest']['total_size']:,} bytes); serve it "
              f"with `autoglm serve --model {entry['name']}`", highlight=False)


model_app.command("evaluate")(model_evaluate)


@model_app.command("sign")
def model_sign(name: str, key: Annotated[Path, typer.Option(
        help="Elliptic-curve private key (PEM) to sign with.")],
               config: Config = None) -> None:
    """Sign a registered model (OpenSSF model-signing, key-based, offline)."""
    from autoglm.supply.signing import sign

    err = Console(stderr=True)
    try:
        with err.status(f"signing {name}..."):
            entry = sign(_registry(config), name, key)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    err.print(f"signed {name} with {entry['signed_by']}", highlight=False)


@model_app.command("keygen")
def model_keygen(private: Annotated[Path, typer.Argument(
        help="Where to write the new private key (PEM, mode 0600).")],
                 public: Annotated[Optional[Path], typer.Option(
                     help="Where to write its public key (default: PRIVATE with .pub).")
                 ] = None) -> None:
    """Make an X25519 key pair for encrypted models: give the public key to whoever runs
    `model encrypt --recipient`, the private one to the engine (model_key_file)."""
    from autoglm.supply.encryption import generate_keypair

    public = public or private.with_suffix(".pub")
    try:
        kid = generate_keypair(private, public)
    except FileExistsError:
        raise fail(f"{private} already exists") from None
    Console(stderr=True).print(f"key {kid}: private {private}, public {public}",
                               highlight=False)


@model_app.command("encrypt")
def model_encrypt(name: str, recipient: Annotated[list[Path], typer.Option(
        help="A recipient's X25519 public key (PEM); repeatable.")],
                  out: Annotated[Optional[str], typer.Option(
                      help="Name of the encrypted package (default NAME-enc).")] = None,
                  config: Config = None, as_json: AsJson = False) -> None:
    """Write an encrypted copy of a registered GGUF model (AES-256-GCM in authenticated
    1 MiB chunks, the data key wrapped for each recipient) and register it."""
    from autoglm.supply.encryption import encrypt_registered

    try:
        reg = _registry(config)
        entry = reg.get(name)
        with _hashing(entry["manifest"]["total_size"], f"encrypting {name}") as progress:
            new = encrypt_registered(reg, name, recipient, out, progress)
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    if as_json:
        print(json.dumps(new, indent=2))
        return
    enc = new["encryption"]
    Console(stderr=True).print(
        f"registered {new['name']}: {new['manifest']['total_size']:,} bytes, encrypted for "
        f"{len(enc['recipients'])} recipient(s) ({', '.join(enc['recipients'])}); serve it "
        f"with `autoglm serve --model {new['name']}` and model_key_file set", highlight=False)


class _PullProgress:
    """Rich progress for ``model pull``: one bar over all bytes, with speed and ETA, on
    stderr (plain lines when stderr is not a terminal)."""

    def __init__(self) -> None:
        self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.bar: Progress | None = None
        self.task = None

    def waiting(self, name: str) -> None:
        self.console.print(f"another pull of {name} is running; waiting for it to finish...")

    def start(self, snap, files, on_disk: int) -> None:
        total = sum(f.size for f in files)
        self.console.print(f"pulling {snap.repo}@{snap.revision} (commit {snap.commit[:12]}) "
                           f"from {snap.source}: {len(files)} file(s), {total:,} bytes"
                           + (f"; {on_disk:,} already on disk, not fetched again"
                              if on_disk else ""))
        if self.console.is_terminal:
            self.bar = Progress("[progress.description]{task.description}", BarColumn(),
                                DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                console=self.console)
            self.bar.start()
            self.task = self.bar.add_task("downloading", total=total, completed=on_disk)

    def advance(self, path: str, n: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=n, description=path[-40:])

    def retrying(self, what: str, why: str, delay: float) -> None:
        self.console.print(f"[yellow]{what}: {why}; trying again in {delay:.1f} s[/]")

    def unhashed(self, paths: list[str]) -> None:
        self.console.print(f"[yellow]warning: no hash published for {escape(', '.join(paths))}: "
                           "accepted because of --allow-unhashed; their SHA-256 is computed "
                           "here from the bytes received[/]")

    def done(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None


@model_app.command("pull")
def model_pull(repo: Annotated[str, typer.Argument(help="Repository, ORG/NAME.")],
               revision: Annotated[Optional[str], typer.Option(
                   help="Branch, tag or commit (default: main on hf, master on modelscope).")
               ] = None,
               source: Annotated[str, typer.Option(help="hf or modelscope.")] = "hf",
               endpoint: Annotated[Optional[str], typer.Option(
                   help="Hub or mirror URL (default: $HF_ENDPOINT / $MODELSCOPE_ENDPOINT, "
                   "else the public hub).")] = None,
               include: Annotated[Optional[list[str]], typer.Option(
                   help="Only files matching this glob (repeatable), e.g. '*Q4_K_M.gguf'.")
               ] = None,
               name: Annotated[Optional[str], typer.Option(
                   help="Registry name (default: the repository's name).")] = None,
               allow_unhashed: Annotated[bool, typer.Option(
                   "--allow-unhashed", help="Accept files the hub publishes no hash for "
                   "(their SHA-256 is computed here; they are named in a warning).")] = False,
               config: Config = None, as_json: AsJson = False) -> None:
    """Download a model from a hub or mirror, check every file against the hub's hashes,
    and register it. Run it again after an interruption: it resumes."""
    from autoglm.supply.pull import Puller, PullRequest

    reporter = _PullProgress()
    try:
        settings = load_settings(config)
        puller = Puller(Registry(settings.data_dir), retries=settings.pull_retries,
                        backoff_s=settings.pull_backoff_s, timeout_s=settings.pull_timeout_s,
                        reporter=reporter, locks=Locks.from_settings(settings))
        result = puller.pull(PullRequest(repo=repo, source=source, revision=revision,
                                         endpoint=endpoint, include=list(include or []),
                                         name=name, allow_unhashed=allow_unhashed))
    except AutoGLMError as exc:
        raise fail(exc.message) from None
    finally:
        reporter.done()
    entry = result.entry
    if as_json:
        print(json.dumps({"entry": entry, "fetched": result.fetched, "resumed": result.resumed,
                          "up_to_date": result.up_to_date, "unhashed": result.unhashed},
                         indent=2))
        return
    if result.up_to_date:
        reporter.console.print(f"{entry['name']} is already pulled at {entry['revision'][:12]}; "
                               "nothing to do")
        return
    checked = ("every file matches the hub's hashes" if not result.unhashed else
               f"{len(result.unhashed)} file(s) with no published hash (hashed here), every "
               "other file matches the hub's hashes")
    reporter.console.print(
        f"registered {entry['name']}: {len(entry['manifest']['files'])} file(s), "
        f"{entry['manifest']['total_size']:,} bytes, {checked} "
        f"({result.fetched:,} bytes fetched, {result.resumed:,} resumed from disk); serve it "
        f"with `autoglm serve --model {entry['name']}`")
