"""Checks of data integrity, confidentiality, backup and personal information (MLPS 2.0
8.1.4.7 to 8.1.4.11, GDPR, PIPL), and the composite ones built from several checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from autoglm.compliance.checks_access import (
    admin_count,
    audit_integrity,
    auth_enforced,
    chain_line,
    chain_of,
    model_lines,
    policy_in_force,
    transport_confidentiality,
    transport_tls,
)
from autoglm.compliance.findings import (
    MANUAL,
    MET,
    NOT_MET,
    SENSITIVE_PII,
    Ev,
    Finding,
    Params,
)


# --- integrity, confidentiality -----------------------------------------------------------------
def storage_integrity(ev: Ev, p: Params) -> Finding:
    bad, v = chain_of(ev)
    if bad:
        return bad
    broken = [r["name"] for r in ev["models"]["registered"]
              if not (r.get("verified") or {}).get("intact")]
    lines = [chain_line(v), ("API keys stored as keyed hashes; model files against SHA-256 "
             "manifests"), *(model_lines(ev["models"])[1:])]
    if not v["intact"] or broken:
        return Finding(NOT_MET, lines + ([(f"models failing their last check: "
                                          f"{', '.join(broken)}")] if broken else []))
    return Finding(MET, lines)


def storage_confidentiality(ev: Ev, p: Params) -> Finding:
    sec, priv = ev["secrets"], ev["privacy"]
    exposed = [f["name"] for f in sec["files"] if not f["private"]]
    lines = [f"secrets folder mode {sec['folder_mode']}: " + ", ".join(
        f"{f['name']} {f['mode']}" for f in sec["files"]),
        ("API keys: only HMAC-SHA256 with the pepper stored; client addresses, purposes and "
        "kept texts sealed (AES-GCM) under per-subject keys"),
        f"log_prompts: {priv['log_prompts']}"]
    if exposed:
        return Finding(NOT_MET, [*lines, f"readable by other users: {', '.join(exposed)}"],
                       "`chmod 600` " + " ".join(f"data_dir/secrets/{n}" for n in exposed))
    if priv["log_prompts"]:
        return Finding(NOT_MET, [*lines, "prompt and answer text goes to the logs in clear"],
                       "Set log_prompts: false.")
    return Finding(MET, lines)


# --- backup -------------------------------------------------------------------------------------
def backup_recent(ev: Ev, p: Params) -> Finding:
    b = ev["backups"]
    latest = b["latest"]
    if latest is None:
        return Finding(NOT_MET, ["no backup was ever made by `autoglm backup` here"])
    lines = [(f"{b['count']} backup(s) made; latest {latest['created_at']} ({latest['age_days']} "
             f"days ago), {latest.get('database')} database at audit seq "
             f"{latest.get('audit_head_seq')}, sha256 {latest.get('sha256')}"),
             f"at {latest.get('path')}: " + ("present, size matches" if latest["present"]
                                             else "not found there")]
    if (latest["age_days"] or 0) > p["backup_max_age_days"]:
        return Finding(NOT_MET, [*lines, f"older than {p['backup_max_age_days']} days"])
    if not latest["present"]:
        return Finding(MANUAL, [*lines, "moved elsewhere (off-site?): attest where it is"])
    return Finding(MET, lines)


def manual_offsite(ev: Ev, p: Params) -> Finding:
    latest = ev["backups"]["latest"]
    return Finding(MANUAL, [f"latest backup written to {latest['path']}" if latest
                            else "no backup made yet"])


def redundancy(ev: Ev, p: Params) -> Finding:
    db = ev["installation"]["database"]
    net = ev["network"]
    lines = [(f"database: {db['kind']}; {net['workers']} gateway process(es); shared state in "
             f"{'Redis' if net['redis'] else 'each process'}")]
    if db["kind"] == "sqlite":
        return Finding(NOT_MET, [*lines, "a single SQLite file has no hot standby"])
    return Finding(MANUAL, [*lines, ("replicas share the PostgreSQL database: attest its "
                            "standby and the replicas")])


# --- personal information -----------------------------------------------------------------------
def prompt_storage(ev: Ev, p: Params) -> Finding:
    priv = ev["privacy"]
    kept = priv["audit_text_tenants"]
    lines = [f"log_prompts: {priv['log_prompts']}",
             (f"audit_text_tenants: {', '.join(kept) or 'none'} (prompt text kept in audit "
             "records only for these, sealed and erasable)")]
    if priv["log_prompts"]:
        return Finding(NOT_MET, [*lines, "prompts and answers are written to the logs"],
                       "Set log_prompts: false.")
    if kept:
        return Finding(MANUAL, lines, "Attest the purpose that needs the text kept for "
                       f"{', '.join(kept)}, or empty audit_text_tenants.")
    return Finding(MET, [*lines, "no prompt or answer text is stored"])


def _guard_gaps(priv: Mapping[str, Any]) -> list[str]:
    """Sensitive categories the guard lets through, platform-wide and per tenant (a
    tenant's actions are laid over the platform's, as the guard does)."""
    def allowed(acts: Mapping[str, str]) -> list[str]:
        return [c for c in SENSITIVE_PII if acts.get(c, acts.get("default", "mask")) == "allow"]

    base = priv["pii_actions"]
    gaps = [f"{c}: allow" for c in allowed(base)]
    for tenant, over in priv["pii_tenant_actions"].items():
        gaps += [f"{c}: allow for {tenant}" for c in allowed({**base, **over})
                 if c not in allowed(base)]
    return gaps


def pii_guard(ev: Ev, p: Params) -> Finding:
    priv = ev["privacy"]
    lines = [f"pii_actions: {priv['pii_actions']}",
             f"tenant overrides: {priv['pii_tenant_actions'] or 'none'}"]
    gaps = _guard_gaps(priv)
    if gaps:
        return Finding(NOT_MET, [*lines, (f"sensitive categories passed in clear: "
                                 f"{', '.join(gaps)}")])
    return Finding(MET, [*lines, (f"sensitive categories ({', '.join(SENSITIVE_PII)}) masked "
                         "or blocked in prompts and answers")])


def tenant_isolation(ev: Ev, p: Params) -> Finding:
    priv = ev["privacy"]
    lines = [(f"prefix_cache_scope: {priv['prefix_cache_scope']}; response cache never shared "
             "across tenants"), "personal fields of audit records sealed per data subject"]
    if priv["prefix_cache_scope"] == "platform":
        return Finding(NOT_MET, [*lines, "one tenant can time another's cached prompts"],
                       "Set prefix_cache_scope: tenant.")
    return Finding(MET, lines)


def storage_limitation(ev: Ev, p: Params) -> Finding:
    priv, audit = ev["privacy"], ev["audit"]
    lines = [(f"{priv.get('erased_subjects', '?')} of {priv.get('subject_keys', '?')} data "
             "subjects erased (`autoglm privacy erase`)")]
    if "error" not in audit:
        lines.append(f"oldest audit record kept: {audit['first_record_at'] or 'none'}; last "
                     f"prune: {audit['last_prune']['at'] if audit['last_prune'] else 'never'}")
    if not priv["personal_data_key"]:
        lines.append("no personal-data key yet (nothing sealed)")
    return Finding(MANUAL, lines)


def integrity_confidentiality(ev: Ev, p: Params) -> Finding:
    parts = {"transport": transport_confidentiality(ev, p),
             "storage": storage_confidentiality(ev, p), "audit": audit_integrity(ev, p)}
    lines = [f"{name}: {f.status.replace('_', ' ')}" for name, f in parts.items()]
    statuses = {f.status for f in parts.values()}
    status = NOT_MET if NOT_MET in statuses else MANUAL if MANUAL in statuses else MET
    return Finding(status, lines)


def privacy_defaults(ev: Ev, p: Params) -> Finding:
    priv, net = ev["privacy"], ev["network"]
    off = []
    if priv["log_prompts"]:
        off.append("log_prompts: true")
    if priv["audit_text_tenants"]:
        off.append(f"audit_text_tenants: {priv['audit_text_tenants']}")
    if priv["pii_actions"].get("default", "mask") == "allow":
        off.append("pii_actions default: allow")
    if priv["prefix_cache_scope"] != "tenant":
        off.append(f"prefix_cache_scope: {priv['prefix_cache_scope']}")
    if net["ops_public"]:
        off.append("ops_public: true")
    if net["auth_disabled"]:
        off.append("dangerously_disable_auth: true")
    lines = [("defaults: no prompt text stored or logged, PII masked, caches per tenant, "
             "operational details behind a key")]
    if off:
        return Finding(NOT_MET, [*lines, "changed from the default: " + "; ".join(off)])
    return Finding(MET, [*lines, "all in force"])


def pseudonymisation(ev: Ev, p: Params) -> Finding:
    priv = ev["privacy"]
    tls = transport_tls(ev, p)
    lines = [f"PII guard default: {priv['pii_actions'].get('default', 'mask')}",
             ("personal fields of audit records sealed (AES-GCM) under per-subject keys; "
             "erasure destroys the key"), f"TLS: {tls.status.replace('_', ' ')}"]
    if priv["pii_actions"].get("default", "mask") == "allow" or tls.status == NOT_MET:
        return Finding(NOT_MET, lines)
    return Finding(tls.status if tls.status == MANUAL else MET, lines)


def access_control_summary(ev: Ev, p: Params) -> Finding:
    parts = {"authentication": auth_enforced(ev, p), "policy": policy_in_force(ev, p),
             "admins": admin_count(ev, p), "audit": audit_integrity(ev, p)}
    lines = [f"{name}: {f.status.replace('_', ' ')}" for name, f in parts.items()]
    return Finding(NOT_MET if any(f.status == NOT_MET for f in parts.values()) else MET, lines)


def manual(*lines: str) -> Callable[[Ev, Params], Finding]:
    def check(ev: Ev, p: Params) -> Finding:
        return Finding(MANUAL, list(lines))
    return check


def manual_pia(ev: Ev, p: Params) -> Finding:
    gaps = _guard_gaps(ev["privacy"])
    kept = ev["privacy"]["audit_text_tenants"]
    return Finding(MANUAL, [f"sensitive categories passed in clear: {', '.join(gaps) or 'none'}",
                            f"tenants whose text is kept: {', '.join(kept) or 'none'}"])
