"""Checks of identification, access control, security audit and intrusion prevention
(MLPS 2.0 8.1.4.1 to 8.1.4.6), each reading the evidence and the catalogue's parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from autoglm.compliance.findings import (
    MANUAL,
    MET,
    NOT_APPLICABLE,
    NOT_MET,
    Ev,
    Finding,
    Params,
    unread,
)


# --- identification ---------------------------------------------------------------------------
def auth_enforced(ev: Ev, p: Params) -> Finding:
    net = ev["network"]
    if net["auth_disabled"]:
        return Finding(NOT_MET, [("dangerously_disable_auth is on: every request is served "
                                 "without a key, as an anonymous platform admin")])
    keys = ev["keys"]
    n = len(keys.get("active", [])) if "error" not in keys else "?"
    return Finding(MET, [("every request needs an API key (HTTP and gRPC); a key belongs to one "
                         "principal and only its keyed HMAC-SHA256 hash is stored"),
                         f"{n} active key(s)"])


def key_rotation(ev: Ev, p: Params) -> Finding:
    keys = ev["keys"]
    if (bad := unread(keys, "the API keys")) is not None:
        return bad
    limit = p["key_max_age_days"]
    old = [k for k in keys["active"] if (k["age_days"] or 0) > limit and not k["expires_at"]]
    lines = [(f"{len(keys['active'])} active key(s); {keys['rotations']} rotation(s) made; "
             f"{keys['revoked']} revoked, {keys['expired']} expired"),
             f"oldest active key: {keys['active'][0]['age_days']} day(s)" if keys["active"]
             else "no active key"]
    if old:
        named = ", ".join(f"{k['id']} ({k['age_days']} d)" for k in old[:8])
        return Finding(NOT_MET, [*lines, (f"older than {limit} days, unrotated and without "
                                 f"expiry: {named}")],
                       f"Rotate {', '.join(k['id'] for k in old[:8])} "
                       "(`autoglm keys rotate KEY`).")
    return Finding(MET, [*lines, f"no active key is older than {limit} days without an expiry"])


def failed_logins(ev: Ev, p: Params) -> Finding:
    net = ev["network"]
    lines = [(f"auth_failure_limit: {net['auth_failure_limit']} failures per client address per "
             f"{net['auth_failure_window_s']} s, then 429 until the window ends; every failure "
             "is an audit record"),
             (f"connections time out: headers {net['header_timeout_s']} s, body "
             f"{net['body_timeout_s']} s; API keys have no sessions (each request is "
             "authenticated), keys may expire")]
    if net["auth_disabled"]:
        return Finding(NOT_MET, ["dangerously_disable_auth is on: there is no login", *lines])
    if net["auth_failure_limit"] > p["auth_failure_limit_max"]:
        return Finding(NOT_MET, [*lines, (f"more than {p['auth_failure_limit_max']} attempts "
                                 "per window allowed")])
    return Finding(MET, lines)


def _tls_lines(ev: Ev) -> list[str]:
    tls, net = ev["tls"], ev["network"]
    if not tls["enabled"]:
        return [f"TLS is off; the server binds to {net['host']}"]
    lines = [f"TLS on, minimum {tls['min_version']}, certificate {tls.get('certfile')}"]
    if "error" in tls:
        return [*lines, tls["error"]]
    lines.append(f"certificate {tls['subject']}, {tls['key']}, expires {tls['not_after']} "
                 f"({tls['days_left']} days left)")
    if tls.get("keyfile_mode"):
        lines.append(f"private key file mode {tls['keyfile_mode']}")
    return lines


def transport_tls(ev: Ev, p: Params) -> Finding:
    tls, net = ev["tls"], ev["network"]
    lines = _tls_lines(ev)
    if not tls["enabled"]:
        if net["loopback"]:
            return Finding(MANUAL, [*lines, ("only local clients reach it: a TLS-terminating "
                                    "proxy in front must be attested")],
                           "Attest the TLS proxy in front (its certificate and protocol "
                           "versions), or set ssl_certfile and ssl_keyfile.")
        return Finding(NOT_MET, [*lines, "credentials and prompts cross the network in clear"])
    if "error" in tls:
        return Finding(NOT_MET, lines, "Point ssl_certfile at a readable PEM certificate.")
    if tls["days_left"] < p["cert_min_days_left"]:
        return Finding(NOT_MET, [*lines, f"expires within {p['cert_min_days_left']} days"],
                       "Renew the certificate (the server reloads it at restart).")
    if tls.get("keyfile_mode") and int(tls["keyfile_mode"], 8) & 0o077:
        return Finding(NOT_MET, [*lines, "the private key can be read by other users"],
                       f"`chmod 600 {tls.get('keyfile', 'the key file')}`.")
    return Finding(MET, lines)


def transport_confidentiality(ev: Ev, p: Params) -> Finding:
    api = transport_tls(ev, p)
    db = ev["installation"]["database"]
    lines = list(api.evidence)
    if db["kind"] == "sqlite":
        lines.append("the database is a local SQLite file: nothing crosses the network")
        return Finding(api.status, lines, api.remedy)
    mode = db.get("sslmode")
    lines.append(f"PostgreSQL at {db['host']}, sslmode {mode or 'unset (libpq: prefer)'}")
    if not db["local"] and mode not in ("require", "verify-ca", "verify-full"):
        return Finding(NOT_MET, [*lines, "the database connection may fall back to clear text"],
                       "Add ?sslmode=verify-full (or require) to database_url.")
    return Finding(api.status, lines, api.remedy)


def manual_mfa(ev: Ev, p: Params) -> Finding:
    admins = ev["principals"].get("platform_admins", [])
    return Finding(MANUAL, ["an API key is one factor", (f"{len(admins)} platform admin "
                            "principal(s) to cover")])


# --- access control ---------------------------------------------------------------------------
def accounts_assigned(ev: Ev, p: Params) -> Finding:
    pr = ev["principals"]
    if (bad := unread(pr, "the principals")) is not None:
        return bad
    if ev["network"]["auth_disabled"]:
        return Finding(NOT_MET, ["dangerously_disable_auth is on: no account is used"])
    roles = ", ".join(f"{r}: {n}" for r, n in sorted(pr["roles"].items())) or "none"
    lines = [(f"{pr['total']} principal(s) in {pr['tenants']} tenant(s), {pr['disabled']} "
             f"disabled; role bindings: {roles}")]
    if pr["unbound"]:
        lines.append(f"principals without a role (their keys can do nothing: deny by default): "
                     f"{', '.join(pr['unbound'][:8])}")
    return Finding(MET, lines)


def default_account(ev: Ev, p: Params) -> Finding:
    net = ev["network"]
    if net["auth_disabled"]:
        return Finding(NOT_MET, ["dangerously_disable_auth is on: anyone is the default admin"])
    how = ("admin_key from the settings (at least 32 characters or an agk_ key, checked at "
           "start)" if net["admin_key_from_settings"] else
           "the admin key was generated at first start (random, shown once, hash kept)")
    return Finding(MET, [how, "no account has a default password"])


def stale_accounts(ev: Ev, p: Params) -> Finding:
    keys = ev["keys"]
    if (bad := unread(keys, "the API keys")) is not None:
        return bad
    left = [k for k in keys["active"] if k["principal_disabled"]]
    per: dict[str, int] = {}
    for k in keys["active"]:
        per[k["principal"]] = per.get(k["principal"], 0) + 1
    lines = [(f"{len(keys['active'])} active key(s) over {len(per)} principal(s); "
             f"{keys['expired']} expired and {keys['revoked']} revoked key(s) no longer work")]
    if left:
        return Finding(NOT_MET, [*lines, "active keys of disabled principals: "
                                 + ", ".join(k["id"] for k in left[:8])],
                       f"Revoke {', '.join(k['id'] for k in left[:8])} (`autoglm keys revoke`).")
    return Finding(MANUAL, [*lines, "no disabled principal holds an active key"])


def admin_count(ev: Ev, p: Params) -> Finding:
    pr = ev["principals"]
    if (bad := unread(pr, "the principals")) is not None:
        return bad
    admins = pr["platform_admins"]
    names = ", ".join(f"{a['id']} ({a['name']})" for a in admins[:8])
    lines = [f"{len(admins)} platform admin(s): {names or 'none'}",
             (f"{pr['roles'].get('tenant_admin', 0)} tenant admin binding(s); "
             f"{pr['roles'].get('member', 0)} member, {pr['roles'].get('guest', 0)} guest")]
    if ev["network"]["auth_disabled"]:
        return Finding(NOT_MET, ["dangerously_disable_auth: every caller is a platform admin",
                                 *lines])
    if len(admins) > p["max_platform_admins"]:
        return Finding(NOT_MET, [*lines, (f"more than {p['max_platform_admins']} platform "
                                 "admins")], "Remove platform_admin bindings that are not "
                       "needed; use tenant_admin at tenant scope.")
    return Finding(MET, lines)


def policy_in_force(ev: Ev, p: Params) -> Finding:
    pol = ev["policy"]
    lines = [f"policy: {pol['source']}" + (f", sha256 {pol['sha256']}" if "sha256" in pol
                                            else "")]
    if not pol.get("valid"):
        return Finding(NOT_MET, [*lines, pol.get("error", "invalid")])
    rules = ", ".join(f"{r}: {n}" for r, n in pol["rules"].items())
    return Finding(MET, [*lines, f"deny by default; action patterns per role: {rules}",
                         ("only a platform admin (or whoever can edit the file) changes it; a "
                         "reload is audited")])


def granularity(ev: Ev, p: Params) -> Finding:
    if ev["network"]["auth_disabled"]:
        return Finding(NOT_MET, ["dangerously_disable_auth is on"])
    return Finding(MET, ["subjects: each principal (person or service) and each of its keys",
                         ("objects: tenant, project, model and action (role x action x scope); "
                         "a key may be narrowed to projects, models and actions")])


def manual_labels(ev: Ev, p: Params) -> Finding:
    pr = ev["principals"]
    return Finding(MANUAL, [(f"{pr.get('tenants', '?')} tenant(s) keep departments' data "
                            "apart; there are no per-object security labels")])


# --- security audit ---------------------------------------------------------------------------
def chain_of(ev: Ev) -> tuple[Finding | None, dict[str, Any]]:
    audit = ev["audit"]
    bad = unread(audit, "the audit chain")
    return bad, ({} if bad else audit["verify"])


def chain_line(v: Mapping[str, Any]) -> str:
    if v["intact"]:
        start = f" from seq {v['anchor'] + 1}" if v["anchor"] else ""
        return (f"`audit verify`: intact, {v['records']} record(s){start}, head seq "
                f"{v['head_seq']}, {v['checkpoints']} signed checkpoint(s) match")
    f = v["fault"]
    return f"`audit verify`: BROKEN at seq {f['seq']}: {f['kind']} ({f['detail']})"


def audit_enabled(ev: Ev, p: Params) -> Finding:
    bad, v = chain_of(ev)
    if bad:
        return bad
    lines = [chain_line(v), ("recorded: every admin act, refusal, authentication failure and "
             "inference request (HTTP, gRPC, batch)")]
    return Finding(MET if v["records"] else NOT_MET, lines)


def audit_content(ev: Ev, p: Params) -> Finding:
    bad, v = chain_of(ev)
    if bad:
        return bad
    return Finding(MET, [("each record: time (UTC, ms), actor (principal), key, tenant, project, "
                         "action, resource, decision, HTTP status, client address (sealed), "
                         "request id, model, tokens, latency"), chain_line(v)])


def audit_integrity(ev: Ev, p: Params) -> Finding:
    bad, v = chain_of(ev)
    if bad:
        return bad
    return Finding(MET if v["intact"] else NOT_MET,
                   [chain_line(v), ("HMAC chain (key outside the database) with Ed25519-signed "
                    "checkpoints outside the database")])


def audit_protection(ev: Ev, p: Params) -> Finding:
    bad, v = chain_of(ev)
    if bad:
        return bad
    audit, backups = ev["audit"], ev["backups"]
    latest = backups.get("latest")
    fresh = latest is not None and (latest["age_days"] or 0) <= p["backup_max_age_days"]
    lines = [chain_line(v), f"last signed checkpoint: {audit['last_checkpoint_at'] or 'none'}",
             f"audit_syslog: {'on (checkpoints also off the host)' if audit['syslog'] else 'off'}",
             f"latest backup: {latest['created_at'] if latest else 'none'}"]
    if not v["intact"]:
        return Finding(NOT_MET, lines)
    if not (audit["syslog"] or fresh):
        return Finding(NOT_MET, [*lines, ("no copy of the audit evidence outside this "
                                 f"installation within {p['backup_max_age_days']} days")],
                       "Enable audit_syslog (checkpoints to a remote syslog) or run "
                       "`autoglm backup` regularly.")
    return Finding(MET, lines)


def log_retention(ev: Ev, p: Params) -> Finding:
    audit = ev["audit"]
    if (bad := unread(audit, "the audit chain")) is not None:
        return bad
    days, prune = audit["first_record_age_days"], audit["last_prune"]
    lines = [f"oldest record kept: {audit['first_record_at'] or 'none'}"
             + (f" ({days} days old)" if days is not None else ""),
             f"last prune: anchor at seq {prune['seq']}, {prune['at']}" if prune
             else "never pruned: every record since the first is kept"]
    if prune is None:
        return Finding(MET, lines)
    if days is None or days < p["log_retention_days"]:
        return Finding(NOT_MET, [*lines, (f"records younger than {p['log_retention_days']} days "
                                 "were pruned")])
    return Finding(MET, lines)


def audit_process(ev: Ev, p: Params) -> Finding:
    audit = ev["audit"]
    if (bad := unread(audit, "the audit settings")) is not None:
        return bad
    lines = [("admin acts and refusals are committed before their response; a full queue "
             "makes requests wait, never drops a record")]
    if audit["strict"]:
        return Finding(MET, [*lines, "audit_strict: on (every response waits for its record)"])
    return Finding(MANUAL, [*lines, (f"audit_strict: off (inference records group-committed "
                            f"within {audit['flush_ms']} ms: a crash can lose that much)")])


# --- intrusion prevention ---------------------------------------------------------------------
def services_closed(ev: Ev, p: Params) -> Finding:
    net = ev["network"]
    lines = [f"HTTP port {net['port']}" + (f", gRPC port {net['grpc_port']}"
                                           if net["grpc_port"] is not None else ", no gRPC"),
             (f"ops_public: {net['ops_public']}; CORS origins: "
             f"{', '.join(net['cors_allow_origins']) or 'none'}")]
    if net["ops_public"]:
        return Finding(NOT_MET, [*lines, "/readyz details and /metrics answer without a key"],
                       "Set ops_public: false.")
    if net["auth_disabled"]:
        return Finding(NOT_MET, [*lines, "dangerously_disable_auth is on"])
    return Finding(MET, lines)


def admin_network(ev: Ev, p: Params) -> Finding:
    net = ev["network"]
    if net["loopback"]:
        return Finding(MET, [f"binds to {net['host']}: only this host reaches it"])
    return Finding(MANUAL, [(f"binds to {net['host']}: who reaches port {net['port']} is up to "
                            "the network")])


def input_validation(ev: Ev, p: Params) -> Finding:
    net = ev["network"]
    return Finding(MET, [(f"request bodies at most {net['max_body_bytes']} bytes (413 beyond); "
                         "every body validated against its schema (400 naming the field)"),
                         (f"at most {net['max_connections']} connections per process; header "
                         f"and body timeouts {net['header_timeout_s']} / "
                         f"{net['body_timeout_s']} s")])


def intrusion_detection(ev: Ev, p: Params) -> Finding:
    net, audit = ev["network"], ev["audit"]
    syslog = audit.get("syslog") if "error" not in audit else None
    return Finding(MANUAL, [(f"failed authentications limited ({net['auth_failure_limit']} per "
                            f"{net['auth_failure_window_s']} s per address) and audited"),
                            f"audit_syslog: {syslog}; alarms are the SIEM's"])


def manual_minimal_install(ev: Ev, p: Params) -> Finding:
    return Finding(MANUAL, [f"autoglm {ev['installation']['version']}"])


def manual_vulnerabilities(ev: Ev, p: Params) -> Finding:
    return Finding(MANUAL, ["offline bundles carry a CycloneDX SBOM of every wheel and model"])


def model_lines(m: Mapping[str, Any]) -> list[str]:
    regs = m["registered"]
    lines = [f"model_trust: {m['trust']}; {len(m['trusted_keys'])} trusted key(s)",
             f"{len(regs)} registered model(s)"]
    for r in regs[:8]:
        v = r.get("verified") or {}
        lines.append(f"{r['name']}: {r['files']} file(s), last check "
                     f"{'intact' if v.get('intact') else 'NOT intact'} at {v.get('at')}, "
                     f"{'signed by ' + r['signed_by'] if r.get('signed_by') else 'unsigned'}")
    return lines


def model_integrity(ev: Ev, p: Params) -> Finding:
    m = ev["models"]
    if not m["serves_local_model"]:
        return Finding(NOT_APPLICABLE, [("every model is an upstream server: no model bytes are "
                                        "loaded here")])
    lines = model_lines(m)
    if m["trust"] == "any":
        return Finding(NOT_MET, [*lines, "model_trust: any loads any file unchecked"])
    return Finding(MET, [*lines, ("every file hashed at load against its manifest (or the "
                         "bundled model's package RECORD); a mismatch is refused")])


def model_signed(ev: Ev, p: Params) -> Finding:
    m = ev["models"]
    if not m["serves_local_model"]:
        return Finding(NOT_APPLICABLE, ["every model is an upstream server"])
    lines = model_lines(m)
    if m["trust"] != "signed":
        return Finding(NOT_MET, [*lines, (f"model_trust is '{m['trust']}': signatures are not "
                                 "required at load")])
    if not m["trusted_keys"] or any("error" in k for k in m["trusted_keys"]):
        return Finding(NOT_MET, [*lines, "trusted_keys is empty or unreadable"])
    unsigned = [r["name"] for r in m["registered"] if not r.get("signed_by")]
    if unsigned:
        return Finding(NOT_MET, [*lines, (f"unsigned: {', '.join(unsigned[:8])} (refused at "
                                 "load)")], f"Sign {', '.join(unsigned[:8])} (`autoglm model "
                       "sign NAME --key PRIV.pem`).")
    return Finding(MET, [*lines, ("a model loads only with a signature from a trusted key that "
                         "vouches for exactly the bytes loaded")])
