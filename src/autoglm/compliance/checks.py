"""The checks the catalogue names, by name: each reads the evidence (``evidence.collect``)
and the catalogue's parameters and says met, not met, not applicable, or manual (the
operator must attest it), with the evidence it went by in words (``findings.Finding``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from autoglm.compliance.checks_access import (
    accounts_assigned,
    admin_count,
    admin_network,
    audit_content,
    audit_enabled,
    audit_integrity,
    audit_process,
    audit_protection,
    auth_enforced,
    default_account,
    failed_logins,
    granularity,
    input_validation,
    intrusion_detection,
    key_rotation,
    log_retention,
    manual_labels,
    manual_mfa,
    manual_minimal_install,
    manual_vulnerabilities,
    model_integrity,
    model_signed,
    policy_in_force,
    services_closed,
    stale_accounts,
    transport_confidentiality,
    transport_tls,
)
from autoglm.compliance.checks_data import (
    access_control_summary,
    backup_recent,
    integrity_confidentiality,
    manual,
    manual_offsite,
    manual_pia,
    pii_guard,
    privacy_defaults,
    prompt_storage,
    pseudonymisation,
    redundancy,
    storage_confidentiality,
    storage_integrity,
    storage_limitation,
    tenant_isolation,
)
from autoglm.compliance.findings import STATUSES, Ev, Finding, Params

__all__ = ["CHECKS", "STATUSES", "Finding"]

CHECKS: Mapping[str, Callable[[Ev, Params], Finding]] = MappingProxyType({
    "auth_enforced": auth_enforced, "key_rotation": key_rotation,
    "failed_logins": failed_logins, "transport_tls": transport_tls,
    "transport_confidentiality": transport_confidentiality, "manual_mfa": manual_mfa,
    "accounts_assigned": accounts_assigned, "default_account": default_account,
    "stale_accounts": stale_accounts, "admin_count": admin_count,
    "policy_in_force": policy_in_force, "granularity": granularity,
    "manual_labels": manual_labels, "audit_enabled": audit_enabled,
    "audit_content": audit_content, "audit_integrity": audit_integrity,
    "audit_protection": audit_protection, "log_retention": log_retention,
    "audit_process": audit_process, "services_closed": services_closed,
    "admin_network": admin_network, "input_validation": input_validation,
    "intrusion_detection": intrusion_detection,
    "manual_minimal_install": manual_minimal_install,
    "manual_vulnerabilities": manual_vulnerabilities, "model_integrity": model_integrity,
    "model_signed": model_signed, "storage_integrity": storage_integrity,
    "storage_confidentiality": storage_confidentiality, "backup_recent": backup_recent,
    "manual_offsite": manual_offsite, "redundancy": redundancy,
    "prompt_storage": prompt_storage, "pii_guard": pii_guard,
    "tenant_isolation": tenant_isolation, "storage_limitation": storage_limitation,
    "integrity_confidentiality": integrity_confidentiality,
    "privacy_defaults": privacy_defaults, "pseudonymisation": pseudonymisation,
    "access_control_summary": access_control_summary,
    "manual_ropa": manual("the audit log records purpose and consent ids per request where "
                           "callers send them; usage totals per tenant and project"),
    "manual_testing": manual("`autoglm audit verify`, `autoglm model verify` and this report "
                              "are the software's tests; their schedule is yours"),
    "manual_organisational": manual("organisational measures: outside this software"),
    "manual_pia": manual_pia,
})
