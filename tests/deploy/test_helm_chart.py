"""deploy/helm/autoglm: rendered by Helm's own engine (helm-python-sdk), linted, and every
manifest validated against the Kubernetes OpenAPI schemas of KUBERNETES_VERSION
(kubernetes-validate ships them; strict: unknown fields are errors). All offline."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy.support import (
    ADMIN,
    CHART,
    CLUSTER_VALUES,
    ENTRYPOINT,
    KUBERNETES_VERSION,
    PEPPER,
    SINGLE_VALUES,
    by_kind,
    helm,
    one,
    render,
)

EXISTING_SECRETS = {
    "replicaCount": 2,
    "secrets": {"existingSecret": "autoglm-keys"},
    "auditKeys": {"existingSecret": "autoglm-audit-keys"},
    "postgresql": {"existingSecret": "autoglm-db", "existingSecretKey": "url"},
    "redis": {"existingSecret": "autoglm-redis"},
    "dataVolume": {"existingClaim": "autoglm-data"},
}
VALUE_SETS = {"single": SINGLE_VALUES, "cluster": CLUSTER_VALUES,
              "existing-secrets": EXISTING_SECRETS}


def pod_spec(objects: list[dict]) -> dict:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_every_manifest_is_valid_for_kubernetes(values: dict) -> None:
    kv = pytest.importorskip("kubernetes_validate.utils",
                             reason="kubernetes-validate (the [test] extra) has the schemas")
    objects = render(values)
    assert objects
    for obj in objects:
        try:
            kv.validate(obj, KUBERNETES_VERSION, strict=True)
        except kv.ValidationError as exc:
            pytest.fail(f"{obj['kind']} {obj['metadata']['name']}: {exc.message} at "
                        f"{'.'.join(map(str, exc.path))}")
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "prod"


@pytest.mark.parametrize("values", VALUE_SETS.values(), ids=VALUE_SETS.keys())
def test_helm_lint_strict(values: dict) -> None:
    report = helm().lint(CHART, values, strict=True, kube_version=f"v{KUBERNETES_VERSION}")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


def test_the_cluster_topology() -> None:
    objects = render(CLUSTER_VALUES)
    kinds = sorted(o["kind"] for o in objects)
    assert kinds == sorted(["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Ingress",
                            "PodDisruptionBudget", "Secret", "Secret", "Service",
                            "ServiceAccount"])
    deployment = one(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"]  # the autoscaler owns the count

    def selects(selector: dict) -> bool:
        return all(pod_labels.get(k) == v for k, v in selector.items())

    service = one(objects, "Service")
    assert selects(service["spec"]["selector"])
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        "http": "http", "grpc": "grpc"}
    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    pdb = one(objects, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"]) and pdb["spec"]["minAvailable"] == 1
    ingress = one(objects, "Ingress")
    assert ingress["spec"]["tls"] == [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}]
    (rule,) = ingress["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": service["metadata"]["name"], "port": {"number": 80}}
    container = pod_spec(objects)["containers"][0]
    assert {"name": "AUTOGLM_GRPC_PORT", "value": "9090"} in container["env"]


def test_single_replica_has_no_autoscaler_budget_or_ingress() -> None:
    objects = render(SINGLE_VALUES)
    assert not by_kind(objects, "HorizontalPodAutoscaler")
    assert not by_kind(objects, "PodDisruptionBudget")
    assert not by_kind(objects, "Ingress")
    assert one(objects, "Deployment")["spec"]["replicas"] == 1


def test_pod_is_hardened_and_probed() -> None:
    spec = pod_spec(render(CLUSTER_VALUES))
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] and psc["runAsUser"] == 10001 and psc["fsGroup"] == 10001
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    (c,) = spec["containers"]
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] and not sc["allowPrivilegeEscalation"]
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert all(c[p]["httpGet"]["port"] == "http" for p in
               ("startupProbe", "livenessProbe", "readinessProbe"))
    assert c["resources"]["requests"] and c["resources"]["limits"]
    # with a read-only root, the only writable mounts are the data dir and /tmp
    volumes = {v["name"]: v for v in spec["volumes"]}
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/var/lib/autoglm", "/tmp"}
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["AUTOGLM_DATA_DIR"] == "/var/lib/autoglm"
    assert "emptyDir" in volumes["tmp"] and "emptyDir" in volumes["data"]


def test_tls_settings_switch_the_probes_to_https() -> None:
    values = copy.deepcopy(SINGLE_VALUES)
    values["settings"] = {"ssl_certfile": "/tls/tls.crt", "ssl_keyfile": "/tls/tls.key"}
    (c,) = pod_spec(render(values))["containers"]
    assert {c[p]["httpGet"]["scheme"] for p in ("startupProbe", "readinessProbe")} == {"HTTPS"}


def test_secrets_reach_the_pod_only_as_files() -> None:
    objects = render(CLUSTER_VALUES)
    secret_values = [PEPPER, ADMIN, "postgresql+psycopg://autoglm:pw@", "redis://:pw@",
                     "upstream-secret"]
    for obj in objects:
        text = json.dumps(obj)
        if obj["kind"] == "Secret":
            continue
        for value in secret_values:
            assert value not in text, f"{value!r} in {obj['kind']}"
    spec = pod_spec(objects)
    (c,) = spec["containers"]
    env = {e["name"]: e["value"] for e in c["env"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    projected = {v["name"]: v for v in spec["volumes"]}["secrets"]["projected"]
    files = {f"{mounts['secrets']}/{item['path']}": src["secret"]["name"]
             for src in projected["sources"] for item in src["secret"]["items"]}
    wanted = {"AUTOGLM_KEY_PEPPER_FILE", "AUTOGLM_ADMIN_KEY_FILE", "AUTOGLM_DATABASE_URL_FILE",
              "AUTOGLM_REDIS_URL_FILE", "AUTOGLM_MODELS_FILE"}
    assert wanted <= set(env)
    for name in wanted:
        assert env[name] in files, name  # each points at a file of the projected volume
    secrets = {s["metadata"]["name"]: s["stringData"] for s in by_kind(objects, "Secret")}
    assert set(files.values()) <= set(secrets)
    assert env["AUDIT_KEYS_DIR"] == mounts["audit-keys"]


def test_existing_secrets_are_referenced_not_created() -> None:
    objects = render(EXISTING_SECRETS)
    assert not by_kind(objects, "Secret")
    spec = pod_spec(objects)
    projected = {v["name"]: v for v in spec["volumes"]}["secrets"]["projected"]
    refs = {src["secret"]["name"]: [i["key"] for i in src["secret"]["items"]]
            for src in projected["sources"]}
    assert refs == {"autoglm-keys": ["key-pepper", "admin-key"], "autoglm-db": ["url"],
                    "autoglm-redis": ["redis-url"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["data"] == {"name": "data",
                               "persistentVolumeClaim": {"claimName": "autoglm-data"}}
    assert volumes["audit-keys"]["secret"]["secretName"] == "autoglm-audit-keys"


@pytest.mark.parametrize("change, message", [
    ({"secrets": {"keyPepper": ""}}, "secrets.keyPepper"),
    ({"postgresql": {"url": ""}}, "external PostgreSQL"),
    ({"auditKeys": {"existingSecret": ""}}, "shared audit keys"),
    ({"settings": {"port": 9000}}, "settings.port is set by the chart"),
    ({"settings": {"models": []}}, "settings.models is set by the chart"),
])
def test_values_that_would_split_replicas_are_refused(change: dict, message: str) -> None:
    values = copy.deepcopy(CLUSTER_VALUES)
    for key, sub in change.items():
        values[key] = {**values[key], **sub} if key != "settings" else sub
    with pytest.raises(helm().HelmError, match=message):
        render(values)


def test_rendered_settings_and_secrets_load_in_autoglm(tmp_path: Path) -> None:
    """The pod's files (ConfigMap, projected Secret) and environment, laid out here and given
    to the image's entrypoint and `autoglm config show`: every name is a real setting."""
    objects = render(CLUSTER_VALUES)
    spec = pod_spec(objects)
    (c,) = spec["containers"]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    root = tmp_path / "pod"

    def here(path: str) -> str:
        return str(root / path.lstrip("/"))

    settings = one(objects, "ConfigMap")["data"]["settings.yaml"]
    Path(here(mounts["settings"])).mkdir(parents=True)
    Path(here(mounts["settings"]), "settings.yaml").write_text(settings)
    secrets = {s["metadata"]["name"]: s["stringData"] for s in by_kind(objects, "Secret")}
    projected = {v["name"]: v for v in spec["volumes"]}["secrets"]["projected"]
    Path(here(mounts["secrets"])).mkdir(parents=True)
    for src in projected["sources"]:
        for item in src["secret"]["items"]:
            Path(here(mounts["secrets"]), item["path"]).write_text(
                secrets[src["secret"]["name"]][item["key"]])
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    for e in c["env"]:
        if e["name"] == "AUDIT_KEYS_DIR":
            continue  # the audit Secret is the operator's; the entrypoint test covers it
        env[e["name"]] = here(e["value"]) if e["value"].startswith("/") else e["value"]
    autoglm = str(Path(sys.executable).with_name("autoglm"))
    r = subprocess.run(["sh", str(ENTRYPOINT), autoglm, "config", "show", "--json"],
                       env=env, check=False, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["workers"] == 2 and shown["host"] == "0.0.0.0"
    assert "requests_per_minute=600" in shown["rate_limits"]["key"]
    assert [m["id"] for m in shown["models"]] == ["smollm2-135m-instruct", "qwen2.5-72b"]
    assert [i["name"] for i in shown["models"][1]["instances"]] == ["gpu-a", "gpu-b"]
    for name in ("key_pepper", "admin_key", "database_url", "redis_url"):
        assert shown[name], name
    assert PEPPER not in r.stdout and "upstream-secret" not in r.stdout  # masked
    assert yaml.safe_load(settings) == CLUSTER_VALUES["settings"]


def test_the_readme_cluster_values_render_and_validate() -> None:
    kv = pytest.importorskip("kubernetes_validate.utils")
    readme = (CHART.parents[2] / "README.md").read_text()
    block = readme.split("# values-prod.yaml", 1)[1].split("\n", 1)[1].split("```", 1)[0]
    values = yaml.safe_load(block)
    objects = render(values)
    for obj in objects:
        kv.validate(obj, KUBERNETES_VERSION, strict=True)
    assert {"Deployment", "Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "Service", "ConfigMap"} <= {o["kind"] for o in objects}
