"""Operations artefacts, validated offline: KServe manifests, the KServe store layout, Grafana, Prometheus.

No cluster runs here. The KServe manifests are checked against the ``kserve`` SDK's model classes in a venv of
their own (``.cache/kserve-venv``, built once with ``pip install kserve==0.21.0``: the SDK's protobuf / grpcio
pins conflict with the project's); PromQL is checked by name against the metrics TorchServe 0.12 exposes and,
when ``promtool`` is on PATH (Debian: ``apt-get install prometheus``), by ``promtool check rules/config`` and
``promtool test rules`` on synthetic series.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from export.kserve_layout import LayoutError, kserve_properties, main, write_layout
from export.launcher import read_properties

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RUNTIME = DEPLOY / "kserve" / "serving-runtime.yaml"
ISVC = DEPLOY / "kserve" / "inference-service.yaml"
DASHBOARD = DEPLOY / "grafana" / "cxrexplain-dashboard.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
PROMETHEUS = DEPLOY / "prometheus" / "prometheus.yml"
STORE = ROOT / "model_store"
KSERVE_VENV = ROOT / ".cache" / "kserve-venv"
KSERVE_VERSION = "0.21.0"
VALIDATOR = ROOT / "scripts" / "kserve_validate.py"
PROMTOOL = shutil.which("promtool")


def load(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


# --------------------------------------------------------------------------------------------- metric names


def known_metrics() -> set[str]:
    """Every series name TorchServe 0.12 exposes with our metrics.yaml, plus Prometheus' own ``up``.

    The frontend bundles the Prometheus simpleclient 0.x: names stay as declared (no ``_total`` added) and a
    histogram adds ``_bucket``, ``_sum`` and ``_count``.
    """
    import ts

    names = {"up"}
    for path in (STORE / "metrics.yaml", Path(ts.__file__).parent / "configs" / "metrics.yaml"):
        config = yaml.safe_load(path.read_text())
        for section in ("ts_metrics", "model_metrics"):
            for kind, specs in (config.get(section) or {}).items():
                for spec in specs:
                    names.add(spec["name"])
                    if kind == "histogram":
                        names.update(spec["name"] + s for s in ("_bucket", "_sum", "_count"))
    return names


KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and numbers removed)."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"\{[^{}]*\}", " ", e)  # label matchers (Grafana variables live there)
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"(?<![A-Za-z0-9_:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?", " ", e)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        if e[match.end():].lstrip().startswith("(") or match.group(0) in KEYWORDS:
            continue  # a function or aggregation, or a keyword
        names.add(match.group(0))
    return names


def test_metric_name_parser_finds_selectors_only():
    expr = ('histogram_quantile(0.99, sum by (Method, le) (rate(a_bucket{Method=~"x|y", job="$job"}'
            '[$__rate_interval]))) / 1e6 > 2.5 and on (ModelName) b_total offset 5m or vector(0)')
    assert metric_names(expr) == {"a_bucket", "b_total"}


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's variables with values so promtool can parse the expression."""
    return (expr.replace("$__rate_interval", "5m").replace("$__range", "1h").replace("$__interval", "1m")
            .replace("${datasource}", "").replace("$job", "cxrexplain.*").replace("$model", ".*"))


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None, "promtool is missing: `make test` installs it (Debian package prometheus)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


# --------------------------------------------------------------------------------------------- KServe


def test_manifests_have_the_expected_kinds_and_agree_with_each_other():
    (runtime,) = load(RUNTIME)
    (isvc,) = load(ISVC)
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ServingRuntime")
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")

    spec = runtime["spec"]
    # Native TorchServe API, not KServe v1/v2: no protocolVersions claimed (empty = any, see the comments).
    assert "protocolVersions" not in spec
    (container,) = spec["containers"]
    assert container["name"] == "kserve-container"
    assert [p["containerPort"] for p in container["ports"]] == [8080]  # one port per Knative revision
    script = " ".join(container["command"] + container["args"])
    assert "--ts-config /mnt/models/config/config.properties" in script
    assert "--model-store /mnt/models/model-store" in script
    assert spec["annotations"]["prometheus.kserve.io/port"] == "8082"
    context = container["securityContext"]
    assert context["runAsNonRoot"] and context["runAsUser"] != 0 and not context["allowPrivilegeEscalation"]
    assert context["readOnlyRootFilesystem"]
    # Everything TorchServe writes lives on mounted emptyDirs.
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert {"/srv/run", "/tmp"} <= mounts
    assert all(env[k].startswith("/srv/run") for k in ("TEMP", "LOG_LOCATION"))
    # /ping needs a token: readiness runs the image's health check, which reads key_file.json.
    assert "export.healthcheck" in " ".join(container["readinessProbe"]["exec"]["command"])
    assert container["livenessProbe"]["tcpSocket"]["port"] == 8080

    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in spec["supportedModelFormats"]}
    assert model["storageUri"].startswith("pvc://")
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] in {"concurrency", "rps", "cpu", "memory"}
    assert predictor["scaleTarget"] > 0
    assert predictor["securityContext"]["runAsNonRoot"] and model["securityContext"]["runAsNonRoot"]
    assert model["readinessProbe"] and model["livenessProbe"]
    # The port the runtime exposes is the one the generated config.properties binds inference to.
    props = kserve_properties(read_properties(STORE / "config.properties"))
    assert props["inference_address"].endswith(":8080")
    assert props["metrics_address"].endswith(":8082")


@pytest.fixture(scope="session")
def kserve_python() -> Path:
    """Python of a venv with the kserve SDK, built once in .cache/kserve-venv (~2-3 min), then reused."""
    python = KSERVE_VENV / "bin" / "python"
    marker = KSERVE_VENV / f".kserve-{KSERVE_VERSION}.ok"
    if marker.exists() and python.exists():
        return python
    shutil.rmtree(KSERVE_VENV, ignore_errors=True)  # half-built from an interrupted run
    base = shutil.which("python3.11") or sys.executable
    subprocess.run([base, "-m", "venv", str(KSERVE_VENV)], check=True, timeout=300)
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", f"kserve=={KSERVE_VERSION}"],
                             capture_output=True, text=True, timeout=900)
    assert install.returncode == 0, f"pip install kserve=={KSERVE_VERSION} failed:\n{install.stderr[-3000:]}"
    marker.touch()
    return python


def validate(python: Path, *paths: Path) -> dict:
    result = subprocess.run([str(python), str(VALIDATOR), *map(str, paths)], capture_output=True, text=True,
                            timeout=300)
    assert result.stdout, result.stderr
    report = json.loads(result.stdout)
    assert (result.returncode == 0) == report["ok"]
    return report


def test_manifests_match_the_kserve_sdk_models(kserve_python):
    report = validate(kserve_python, RUNTIME, ISVC)
    assert report["ok"], report["errors"]
    assert report["documents"] == 2 and report["fields"] > 100 and report["kserve"] == KSERVE_VERSION


def test_a_misspelled_field_is_rejected_at_any_depth(kserve_python, tmp_path):
    typos = {
        ISVC: [("    minReplicas:", "    minReplica:"),                       # V1beta1PredictorSpec
               ("      storageUri:", "      storageURI:"),                    # V1beta1ModelSpec
               ("        periodSeconds: 15", "        periodSecond: 15"),     # V1Probe (kubernetes)
               ("      fsGroup:", "      fsgroup:")],                         # V1PodSecurityContext
        RUNTIME: [("  supportedModelFormats:", "  supportedModelFormat:"),  # V1alpha1ServingRuntimeSpec
                  ("      imagePullPolicy:", "      imagePullPolicyy:"),     # V1Container
                  ("          containerPort: 8080", '          containerPort: "8080"')],  # wrong type
    }
    broken = []
    for source, replacements in typos.items():
        text = source.read_text()
        for old, new in replacements:
            assert old in text, old
            text = text.replace(old, new, 1)
        target = tmp_path / source.name
        target.write_text(text)
        broken.append(target)
    report = validate(kserve_python, *broken)
    assert not report["ok"]
    joined = "\n".join(report["errors"])
    for path in ("predictor.minReplica:", "model.storageURI:", "readinessProbe.periodSecond:",
                 "securityContext.fsgroup:", "spec.supportedModelFormat:", "containers[0].imagePullPolicyy:",
                 "ports[0].containerPort: expected int"):
        assert path in joined, (path, joined)
    assert ".nvidia.com/gpu:" not in joined and ".scaleMetric:" not in joined  # valid fields stay valid
    # A wrong kind is refused as such, not silently skipped.
    wrong_kind = tmp_path / "kind.yaml"
    wrong_kind.write_text(ISVC.read_text().replace("kind: InferenceService", "kind: InferenceSvc"))
    assert "unsupported apiVersion/kind" in "\n".join(validate(kserve_python, wrong_kind)["errors"])


def test_runtime_entrypoint_stops_torchserve_on_sigterm(tmp_path):
    """The runtime's shell (PID 1 in the pod) must turn SIGTERM into `torchserve --stop`, then exit."""
    (runtime,) = load(RUNTIME)
    container = runtime["spec"]["containers"][0]
    script = container["args"][0].replace("/srv/run", str(tmp_path / "run"))
    fake = tmp_path / "bin" / "torchserve"
    fake.parent.mkdir()
    calls = tmp_path / "calls.log"
    # A stand-in for TorchServe: --start stays in the foreground until --stop kills it via its pid file.
    fake.write_text(f"""#!/bin/sh
echo "$*" >> {calls}
case "$1" in
  --start) echo $$ > {tmp_path}/ts.pid; exec sleep 60 ;;
  --stop) kill "$(cat {tmp_path}/ts.pid)" ;;
esac
""")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    shell = subprocess.Popen([*container["command"], script], env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not (tmp_path / "ts.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (tmp_path / "run" / "tmp").is_dir() and (tmp_path / "run" / "logs").is_dir()
        shell.send_signal(signal.SIGTERM)
        shell.wait(timeout=10)
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("--start --foreground")
    assert "--ts-config /mnt/models/config/config.properties" in lines[0]
    assert lines[1] == "--stop"


# --------------------------------------------------------------------------------------------- KServe layout


def make_store(tmp_path: Path, extra: str = "") -> Path:
    store = tmp_path / "model_store"
    store.mkdir()
    (store / "config.properties").write_text((STORE / "config.properties").read_text() + extra)
    shutil.copy(STORE / "metrics.yaml", store / "metrics.yaml")
    with zipfile.ZipFile(store / "cxr-densenet.mar", "w") as mar:
        mar.writestr("MAR-INF/MANIFEST.json", json.dumps({"model": {"modelName": "cxr-densenet"}}))
        mar.writestr("serve.json", "{}")
    return store


def test_kserve_layout_writes_the_tree_kserve_expects(tmp_path):
    store = make_store(tmp_path, extra="disable_token_authorization=true\n")
    out = tmp_path / "kserve"
    assert main(["--store", str(store), "--out", str(out)]) == 0
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["config/config.properties", "config/metrics.yaml", "model-store/cxr-densenet.mar"]
    with zipfile.ZipFile(out / "model-store" / "cxr-densenet.mar") as mar:
        assert json.loads(mar.read("MAR-INF/MANIFEST.json"))["model"]["modelName"] == "cxr-densenet"
    assert (out / "config" / "metrics.yaml").read_bytes() == (STORE / "metrics.yaml").read_bytes()

    props = read_properties(out / "config" / "config.properties")
    source = read_properties(STORE / "config.properties")
    # Token auth stays on: the key is absent (a store that disabled it gets it back on).
    assert "disable_token_authorization" not in props
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["metrics_config"] == "/mnt/models/config/metrics.yaml"
    # Inference and metrics reachable inside the pod; management only on its loopback.
    assert props["inference_address"] == "http://0.0.0.0:8080"
    assert props["grpc_inference_address"] == "0.0.0.0"
    assert props["metrics_address"] == "http://0.0.0.0:8082"
    assert props["management_address"] == "http://127.0.0.1:8081"
    assert props["grpc_management_address"] == "127.0.0.1"
    assert props["enable_model_api"] == "false" and props["enable_envvars_config"] == "false"
    assert props["allowed_urls"] == "file:///mnt/models/model-store/[^/]+\\\\.mar"
    # Everything else (sizes, timeouts, metrics mode, JVM heap, token expiry) is carried over unchanged.
    changed = {"inference_address", "management_address", "metrics_address", "grpc_inference_address",
               "grpc_management_address", "grpc_inference_port", "grpc_management_port", "model_store",
               "metrics_config", "allowed_urls", "load_models", "enable_model_api", "enable_envvars_config",
               "install_py_dep_per_model"}
    for key in set(source) - changed:
        assert props[key] == source[key], key
    assert {"max_request_size", "metrics_mode", "token_expiration_min"} <= set(source) - changed


def test_kserve_layout_cli_runs_as_a_module_and_refuses_an_empty_store(tmp_path):
    store = make_store(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "export.kserve_layout", "--store", str(store), "--out", str(out)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "model-store" / "cxr-densenet.mar").is_file()
    (store / "cxr-densenet.mar").unlink()
    with pytest.raises(LayoutError, match="cxrexplain-export"):
        write_layout(store, tmp_path / "empty")


# --------------------------------------------------------------------------------------------- Grafana


def dashboard_exprs(dashboard: dict) -> dict[str, list[str]]:
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    return {p["title"]: [t["expr"] for t in p["targets"]] for p in panels}


def test_dashboard_is_valid_and_queries_only_existing_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    assert 38 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])
    # Panels do not overlap on the 24-column grid.
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, p["title"]
        cells |= area
    for p in panels:
        assert p["datasource"]["uid"] == "${datasource}"
        assert all(t["datasource"]["uid"] == "${datasource}" for t in p["targets"])

    known = known_metrics()
    exprs = dashboard_exprs(dashboard)
    for title, queries in exprs.items():
        for expr in queries:
            unknown = metric_names(expr) - known
            assert not unknown, (title, unknown)
    for v in variables.values():  # label_values(metric, label) of the query variables
        if v["type"] == "query":
            metric = re.match(r"label_values\((\w+),", v["query"]["query"]).group(1)
            assert metric in known

    everything = "\n".join(e for queries in exprs.values() for e in queries)
    for needed in ("cxrexplain_requests_total", "cxrexplain_decode_errors_total",
                   "cxrexplain_reconstruction_gap_bucket", "cxrexplain_worker_starts_total",
                   "ts_queue_latency_microseconds", "Requests5XX"):
        assert needed in everything, needed
    quantiles = re.findall(r"histogram_quantile\(([\d.]+), sum by \(Method, le\) \(rate\("
                           r"cxrexplain_method_latency_seconds_bucket", everything)
    assert sorted(quantiles) == ["0.5", "0.95", "0.99"]
    assert re.search(r'Status=~"4\.\."', everything) and re.search(r'Status=~"5\.\."', everything)


def test_dashboard_promql_parses_with_promtool(tmp_path):
    exprs = dashboard_exprs(json.loads(DASHBOARD.read_text()))
    rules = [{"record": f"dashboard:query_{i}", "expr": grafana_to_promql(e)}
             for i, e in enumerate(e for queries in exprs.values() for e in queries)]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules)} rules found" in done.stdout


# --------------------------------------------------------------------------------------------- Prometheus


def alert_rules() -> dict[str, dict]:
    config = yaml.safe_load(ALERTS.read_text())
    return {r["alert"]: r for group in config["groups"] for r in group["rules"]}


def test_alert_rules_structure_and_metric_names():
    config = yaml.safe_load(ALERTS.read_text())
    assert set(config) == {"groups"}
    known = known_metrics()
    for group in config["groups"]:
        assert set(group) <= {"name", "rules", "interval"} and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"])
            assert rule["labels"]["severity"] in {"critical", "warning", "info"}
            assert {"summary", "description"} <= set(rule["annotations"])
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"])
            assert not metric_names(rule["expr"]) - known, (rule["alert"], metric_names(rule["expr"]) - known)
            assert rule["expr"].count("(") == rule["expr"].count(")")

    rules = alert_rules()
    error = rules["CxrexplainHighErrorRate"]
    assert error["for"] == "10m" and "> 0.05" in error["expr"] and 'Status=~"5.."' in error["expr"]
    for name in ("CxrexplainMethodLatencyHigh", "CxrexplainSlowMethodLatencyHigh"):
        assert rules[name]["for"] == "10m" and "histogram_quantile(0.99" in rules[name]["expr"]
        assert "by (ModelName, Method, le)" in rules[name]["expr"]
    assert "increase(cxrexplain_worker_starts_total[15m])" in rules["CxrexplainWorkerRestarted"]["expr"]
    assert "cxrexplain_decode_errors_total" in rules["CxrexplainDecodeErrorSurge"]["expr"]
    assert "up{" in rules["CxrexplainTargetDown"]["expr"] and "== 0" in rules["CxrexplainTargetDown"]["expr"]
    assert "ts_inference_requests_total" in rules["CxrexplainNoTraffic"]["expr"]


def test_prometheus_config_structure():
    config = yaml.safe_load(PROMETHEUS.read_text())
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    assert jobs["cxrexplain"]["static_configs"][0]["targets"] == ["localhost:8082"]
    assert jobs["cxrexplain"]["metrics_path"] == "/metrics"
    alerts = ALERTS.read_text()
    assert all(name in alerts for name in jobs)  # the alerts' job matchers cover every job


def test_promtool_checks_rules_and_config(tmp_path):
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout
    done = promtool("check", "config", str(PROMETHEUS))
    if done.returncode != 0 and "kubernetes_sd_configs not found" in done.stdout + done.stderr:
        # Debian builds Prometheus without Kubernetes service discovery: check the rest of the file.
        config = yaml.safe_load(PROMETHEUS.read_text())
        config["scrape_configs"] = [j for j in config["scrape_configs"] if "kubernetes_sd_configs" not in j]
        config["rule_files"] = [str(ALERTS)]
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        done = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{text}}}", "values": values}


def expect(alert: str, at: str, *fired: dict[str, str]) -> dict:
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": labels} for labels in fired]}


def test_alerts_fire_on_synthetic_series(tmp_path):
    """`promtool test rules`: each alert fires when it should, after its `for`, and not otherwise."""
    config = yaml.safe_load(ALERTS.read_text())
    for group in config["groups"]:  # annotations are template-checked by `check rules`; compare labels here
        for rule in group["rules"]:
            rule.pop("annotations")
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(config))
    job = {"job": "cxrexplain", "instance": "pod-a:8082"}
    m, host = "cxr-densenet", "pod-a"

    def req(status: str, values: str, model: str = m) -> dict[str, str]:
        return series("cxrexplain_requests_total", values, ModelName=model, Method="cam", Status=status,
                      Hostname=host, **job)

    def latency(method: str) -> list[dict[str, str]]:  # every call between 2.5 s and 5 s
        return [series("cxrexplain_method_latency_seconds_bucket", v, ModelName=m, Method=method, le=le,
                       Hostname=host, **job)
                for le, v in (("1.0", "0x40"), ("2.5", "0x40"), ("5.0", "0+6x40"), ("10.0", "0+6x40"),
                              ("+Inf", "0+6x40"))]

    def starts(values: str, device: str = "cuda", job_name: str = "cxrexplain") -> dict[str, str]:
        return series("cxrexplain_worker_starts_total", values, ModelName=m, Device=device, Hostname=host,
                      job=job_name, instance="pod-a:8082")

    tests = [
        {   # 10 % of rows fail with 500 for a model, 2 % for another: only the first alerts, after 10 min
            "interval": "1m",
            "input_series": [req("200", "0+90x40"), req("500", "0+10x40"),
                             req("200", "0+98x40", "cxr-ae"), req("500", "0+2x40", "cxr-ae")],
            "alert_rule_test": [expect("CxrexplainHighErrorRate", "8m"),
                                expect("CxrexplainHighErrorRate", "20m",
                                       {"severity": "critical", "ModelName": m})],
        },
        {   # the first start of a worker (the series appearing at 1) does not count
            "interval": "1m",
            "input_series": [starts("_x5 1x55")],
            "alert_rule_test": [expect("CxrexplainWorkerRestarted", "10m"),
                                expect("CxrexplainWorkerRestarted", "30m")],
        },
        {   # a second start does, for the 15 min window; one restart is no crash loop
            "interval": "1m",
            "input_series": [starts("1x10 2x50")],
            "alert_rule_test": [
                expect("CxrexplainWorkerRestarted", "8m"),
                expect("CxrexplainWorkerRestarted", "14m",
                       {"severity": "warning", "ModelName": m, "Device": "cuda", "Hostname": host}),
                expect("CxrexplainWorkerRestarted", "40m"),
                expect("CxrexplainWorkerCrashLoop", "14m"),
            ],
        },
        {   # four restarts in four minutes: a crash loop, until the window has passed
            "interval": "1m",
            "input_series": [starts("1 2 3 4 5x56")],
            "alert_rule_test": [
                expect("CxrexplainWorkerCrashLoop", "5m",
                       {"severity": "critical", "ModelName": m, "Hostname": host}),
                expect("CxrexplainWorkerCrashLoop", "30m"),
            ],
        },
        {   # a worker on the CPU matters in a KServe (GPU) pod, not in the local CPU demo
            "interval": "1m",
            "input_series": [starts("1x20", device="cpu", job_name="cxrexplain-kserve"),
                             series("cxrexplain_worker_starts_total", "1x20", ModelName="cxr-ae",
                                    Device="cpu", Hostname=host, **job)],
            "alert_rule_test": [
                expect("CxrexplainWorkerOnCpu", "3m"),
                expect("CxrexplainWorkerOnCpu", "10m",
                       {"severity": "warning", "ModelName": m, "Hostname": host}),
            ],
        },
        {   # p99 between 2.5 s and 5 s: too slow for cam, fine for latent_shift
            "interval": "1m",
            "input_series": latency("cam") + latency("latent_shift"),
            "alert_rule_test": [
                expect("CxrexplainMethodLatencyHigh", "8m"),
                expect("CxrexplainMethodLatencyHigh", "20m",
                       {"severity": "warning", "ModelName": m, "Method": "cam"}),
                expect("CxrexplainSlowMethodLatencyHigh", "20m"),
            ],
        },
        {   # half the requests do not decode, 5 a minute
            "interval": "1m",
            "input_series": [req("200", "0+10x40"),
                             series("cxrexplain_decode_errors_total", "0+5x40", ModelName=m,
                                    Reason="invalid_input", Hostname=host, **job)],
            "alert_rule_test": [expect("CxrexplainDecodeErrorSurge", "20m",
                                       {"severity": "warning", "ModelName": m})],
        },
        {   # a target down for 5 min; no inference request at all for 30 min
            "interval": "1m",
            "input_series": [series("up", "1x5 0x40", **job)],
            "alert_rule_test": [
                expect("CxrexplainTargetDown", "8m"),
                expect("CxrexplainTargetDown", "12m", {"severity": "critical", **job}),
                expect("CxrexplainNoTraffic", "20m"),
                expect("CxrexplainNoTraffic", "40m", {"severity": "warning"}),
            ],
        },
        {   # steady traffic: no "no traffic" alert
            "interval": "1m",
            "input_series": [series("ts_inference_requests_total", "0+10x60", model_name=m,
                                    model_version="1.0", hostname=host, **job)],
            "alert_rule_test": [expect("CxrexplainNoTraffic", "45m")],
        },
    ]
    spec = tmp_path / "alerts_test.yml"
    spec.write_text(yaml.safe_dump({"rule_files": ["alerts.yml"], "evaluation_interval": "1m",
                                    "tests": tests}))
    done = promtool("test", "rules", str(spec), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout
