"""Helpers of the deploy tests: where the files are, and the chart rendered by Helm itself.

The chart is rendered by Helm's own engine (the Go library of Helm 4, packaged for Python as
``helm-python-sdk``; no ``helm`` binary, no cluster, no network), so what is checked here is
what ``helm template`` / ``helm install`` produce.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "autoglm"
ENTRYPOINT = DEPLOY / "docker-entrypoint.sh"
HEALTHCHECK = DEPLOY / "healthcheck.py"
KUBERNETES_VERSION = "1.30.0"  # the schemas every manifest is validated against

PEPPER = "0123456789abcdef0123456789abcdef0123456789abcdef"
ADMIN = "deploy-test-admin-key-0123456789abcdefghij"

# Values of the "from one machine to a cluster" topology in README.md: three gateways on
# one external PostgreSQL and one Redis, behind an Ingress with TLS, autoscaled, with a
# vLLM upstream pool next to the embedded model.
CLUSTER_VALUES: dict[str, Any] = {
    "replicaCount": 3,
    "secrets": {"keyPepper": PEPPER, "adminKey": ADMIN},
    "auditKeys": {"existingSecret": "autoglm-audit-keys"},
    "postgresql": {"url": "postgresql+psycopg://autoglm:pw@pg.db.svc:5432/autoglm"},
    "redis": {"url": "redis://:pw@redis.db.svc:6379/0"},
    "settings": {"workers": 2, "slots": 4, "log_level": "info",
                 "forwarded_allow_ips": ["10.42.0.0/16"],
                 "rate_limits": {"key": {"requests_per_minute": 600}}},
    "upstreams": [
        {"id": "smollm2-135m-instruct", "engine": "llamacpp"},
        {"id": "qwen2.5-72b", "engine": "vllm", "max_fails": 3, "fail_timeout_s": 10,
         "probe": {"interval_s": 5, "path": "/models", "timeout_s": 2},
         "instances": [
             {"url": "http://vllm-0.vllm.gpu.svc:8000/v1", "name": "gpu-a", "weight": 2},
             {"url": "http://vllm-1.vllm.gpu.svc:8000/v1", "name": "gpu-b",
              "api_key": "upstream-secret", "upstream_model": "Qwen/Qwen2.5-72B-Instruct"},
         ]},
    ],
    "ingress": {"enabled": True, "className": "nginx",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-buffering": "off"},
                "hosts": [{"host": "llm.example.com",
                           "paths": [{"path": "/", "pathType": "Prefix"}]}],
                "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}]},
    "autoscaling": {"enabled": True, "minReplicas": 3, "maxReplicas": 12,
                    "targetCPUUtilizationPercentage": 70,
                    "targetMemoryUtilizationPercentage": 80},
    "grpc": {"enabled": True, "port": 9090},
}

SINGLE_VALUES: dict[str, Any] = {"replicaCount": 1, "secrets": {"keyPepper": PEPPER}}


def helm():
    return pytest.importorskip(
        "helm_python", reason="helm-python-sdk (the [test] extra) renders the chart")


def render(values: dict[str, Any], *, name: str = "prod", namespace: str = "llm") -> list[dict]:
    """Every Kubernetes object the chart renders with ``values``, in template order."""
    chart = helm().Chart.load(CHART)
    manifests = chart.render(values, name=name, namespace=namespace, is_install=True)
    objects: list[dict] = []
    for path in sorted(manifests):
        if not path.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        objects += [doc for doc in yaml.safe_load_all(manifests[path]) if doc]
    return objects


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"{len(found)} {kind} objects"
    return found[0]
