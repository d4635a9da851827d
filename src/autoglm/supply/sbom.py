"""A CycloneDX 1.6 software bill of materials for an offline bundle: every wheel (name,
version, purl, SHA-256, licence as its metadata states it) and every model (as a
``machine-learning-model`` component, with each of its files and their SHA-256)."""

from __future__ import annotations

import email.parser
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any

from autoglm import __version__
from autoglm.timefmt import stamp

SPEC_VERSION = "1.6"


def wheel_name_version(path: Path) -> tuple[str, str]:
    """Distribution name (normalized, PEP 503) and version from a wheel's file name."""
    parts = path.name.removesuffix(".whl").split("-")
    if len(parts) < 5:
        raise ValueError(f"not a wheel file name: {path.name}")
    return re.sub(r"[-_.]+", "-", parts[0]).lower(), parts[1]


def _wheel_metadata(path: Path) -> dict[str, str]:
    with zipfile.ZipFile(path) as zf:
        name = next((n for n in zf.namelist() if n.endswith(".dist-info/METADATA")), None)
        if name is None:
            return {}
        msg = email.parser.HeaderParser().parsestr(zf.read(name).decode("utf-8", "replace"))
    return {"summary": msg.get("Summary") or "",
            "license": msg.get("License-Expression") or msg.get("License") or ""}


def wheel_component(path: Path, sha256: str) -> dict[str, Any]:
    name, version = wheel_name_version(path)
    meta = _wheel_metadata(path)
    comp: dict[str, Any] = {
        "type": "library", "bom-ref": f"pkg:pypi/{name}@{version}", "name": name,
        "version": version, "purl": f"pkg:pypi/{name}@{version}",
        "hashes": [{"alg": "SHA-256", "content": sha256}],
        "properties": [{"name": "autoglm:file", "value": f"wheels/{path.name}"}],
    }
    if meta.get("summary"):
        comp["description"] = meta["summary"][:500]
    lic = meta.get("license", "").strip()
    if lic and "\n" not in lic and len(lic) < 100:
        comp["licenses"] = [{"license": {"name": lic}}]
    return comp


def model_component(entry: dict[str, Any]) -> dict[str, Any]:
    name = entry["name"]
    files = [{"type": "file", "bom-ref": f"model:{name}/{f['path']}", "name": f["path"],
              "hashes": [{"alg": "SHA-256", "content": f["sha256"]}]}
             for f in entry["manifest"]["files"]]
    props = [{"name": "autoglm:source", "value": entry.get("source") or "local"},
             {"name": "autoglm:format", "value": entry.get("format") or "other"}]
    if entry.get("quantization"):
        props.append({"name": "autoglm:quantization", "value": entry["quantization"]})
    if entry.get("signed_by"):
        props.append({"name": "autoglm:signed-by", "value": entry["signed_by"]})
    return {"type": "machine-learning-model", "bom-ref": f"model:{name}", "name": name,
            "version": entry.get("revision") or "local", "components": files,
            "properties": props}


def document(wheels: list[dict[str, Any]], models: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "bomFormat": "CycloneDX", "specVersion": SPEC_VERSION,
        "serialNumber": f"urn:uuid:{uuid.uuid4()}", "version": 1,
        "metadata": {
            "timestamp": stamp(),
            "tools": {"components": [{"type": "application", "name": "autoglm",
                                      "version": __version__}]},
            "component": {"type": "application", "bom-ref": "autoglm-bundle",
                          "name": "autoglm-bundle", "version": __version__},
        },
        "components": wheels + models,
        "dependencies": [{"ref": "autoglm-bundle",
                          "dependsOn": [c["bom-ref"] for c in wheels + models]}],
    }
