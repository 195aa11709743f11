"""The deployment files, checked offline without Docker or a cluster (docs/deployment.md): `compose.yaml` against
the Compose Specification's schema, `deploy/k8s/` against Kubernetes' schemas, the rules no schema sees (flags the
services accept, one GPU per replica, health checks, grace periods, ...), the observability files, and
`adaspec healthcheck` against a real gRPC health server."""

from __future__ import annotations

import asyncio
import functools
import json
import re
import tomllib
from pathlib import Path
from unittest import mock

import jsonschema
import kubernetes_validate
import pytest
import yaml

from adaspec import cli
from adaspec.service_runtime.server import ServiceHost
from adaspec.v1 import coordinator_pb2, draft_pb2, verify_pb2
from tests.test_metrics import metrics_table

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.34"  # the schemas kubernetes-validate ships for it
GRPC_SERVICES = {
    "coordinator": coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name,
    "verify": verify_pb2.DESCRIPTOR.services_by_name["Verify"].full_name,
    "draft": draft_pb2.DESCRIPTOR.services_by_name["Draft"].full_name,
}
REPLICAS = ("verify", "draft")
IDENTITY_FLAGS = ("--host", "--replica-id")  # where a process is reached and known: differs by platform on purpose
REDIS_URL = "redis://redis:6379/0"
COLLECTOR = "http://otel-collector:4317"
HISTOGRAM_SERIES = ("_bucket", "_sum", "_count")


# --- compose.yaml


@functools.cache
def compose_file() -> dict:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def with_defaults(value):
    """compose.yaml with every variable unset: `${VAR:-default}` is its default. Any other `$` form fails, so
    that nothing here passes on a value compose would read otherwise."""
    if isinstance(value, dict):
        return {key: with_defaults(item) for key, item in value.items()}
    if isinstance(value, list):
        return [with_defaults(item) for item in value]
    if not isinstance(value, str):
        return value
    text = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
    assert "$" not in text, f"compose.yaml: only ${{VAR:-default}} is interpolated by these tests: {value!r}"
    return text


@functools.cache
def compose() -> dict:
    return with_defaults(compose_file())


def services(profile: str | None = None) -> dict[str, dict]:
    """The services `docker compose --profile PROFILE up` starts (no profile: those without one)."""
    return {name: spec for name, spec in compose()["services"].items()
            if not spec.get("profiles") or profile in spec["profiles"]}


def adaspec_services(profile: str | None = None) -> dict[str, dict]:
    return {name: spec for name, spec in services(profile).items() if spec.get("command", [None])[0] == "serve"}


def role(argv: list[str]) -> str:
    assert argv[0] == "serve", argv
    return argv[1]


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def duration_s(text: str) -> float:
    units = {"ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a compose duration: {text}"
    return sum(float(n) * units[u] for n, u in parts)


# --- deploy/k8s


@functools.cache
def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


@functools.cache
def manifests() -> tuple[tuple[str, dict], ...]:
    return tuple((name, doc) for name in kustomization()["resources"]
                 for doc in yaml.safe_load_all((K8S / name).read_text()) if doc)


def objects(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def adaspec_deployments() -> dict[str, dict]:
    return {name: d for name, d in objects("Deployment").items() if container(d).get("args", [None])[0] == "serve"}


def container(deployment: dict) -> dict:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def k8s_args(deployment: dict) -> list[str]:
    """The container's args as the kubelet expands them: `$(VAR)` from its env and ConfigMaps; a downward-API
    field reads as `<fieldPath>`."""
    c = container(deployment)
    env = {}
    for source in c.get("envFrom", []):
        env.update(objects("ConfigMap")[source["configMapRef"]["name"]]["data"])
    for var in c.get("env", []):
        env[var["name"]] = var["value"] if "value" in var else f"<{var['valueFrom']['fieldRef']['fieldPath']}>"

    def expand(arg: str) -> str:
        return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)

    return [expand(arg) for arg in c["args"]]


def k8s_env(deployment: dict) -> dict[str, str]:
    c = container(deployment)
    env = {}
    for source in c.get("envFrom", []):
        env.update(objects("ConfigMap")[source["configMapRef"]["name"]]["data"])
    env.update({var["name"]: var.get("value") for var in c.get("env", [])})
    return env


# --- the CLI's own parser


def parse_serve(argv: list[str]):
    """`argv` parsed by `adaspec`'s parser, as the container's `adaspec serve ...` would be (nothing started).
    Every flag must be spelled out: argparse would take an abbreviation or a prefix of another flag."""
    parsed = []
    with mock.patch.dict(cli.COMMANDS, serve=lambda args: parsed.append(args) or 0):
        try:
            cli.main(argv)
        except SystemExit as exit_:
            pytest.fail(f"adaspec {' '.join(argv)}: rejected by the CLI's parser (exit {exit_.code})")
    (args,) = parsed
    for token in argv:
        if token.startswith("--") and token[2:].replace("-", "_") not in vars(args):
            pytest.fail(f"adaspec {' '.join(argv)}: {token} is no flag of its own")
    return args


def every_command_line() -> list[list[str]]:
    """Every `adaspec serve` command line in compose.yaml (all profiles) and deploy/k8s."""
    return ([spec["command"] for spec in compose()["services"].values() if spec.get("command", [None])[0] == "serve"]
            + [k8s_args(deployment) for deployment in adaspec_deployments().values()])


# --- docs/deployment.md's metrics table


@functools.cache
def planned_metrics() -> dict[str, str]:
    """{Prometheus name: type} from the metrics table of docs/deployment.md."""
    return {name: kind for name, (kind, _, _) in metrics_table().items()}


def queried_metrics(expr: str) -> set[str]:
    """The planned metric each `gen_ai_*` / `adaspec_*` series in a PromQL expression belongs to."""
    found = set()
    for series in re.findall(r"\b(?:gen_ai|adaspec)_[a-z0-9_]+", expr):
        base = next((series.removesuffix(s) for s in HISTOGRAM_SERIES if series.endswith(s)), series)
        found.add(base if planned_metrics().get(base) == "histogram" else series)
    return found


# === schemas


def test_compose_matches_the_compose_specification():
    schema = json.loads((ROOT / "deploy" / "schemas" / "compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose())]
    assert not errors, "\n".join(errors)
    typo = json.loads(json.dumps(compose()))
    typo["services"]["coordinator"]["stop_grace"] = typo["services"]["coordinator"].pop("stop_grace_period")
    assert not validator.is_valid(typo), "the schema must reject a misspelled key"


def test_kubernetes_manifests_match_the_kubernetes_schemas():
    for name, doc in manifests():
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{name} {doc['kind']}/{doc['metadata']['name']}: {'.'.join(map(str, error.path))}: "
                        f"{error.message}")
    typo = json.loads(json.dumps(objects("Deployment")["verify-a"]))
    container(typo)["readinesProbe"] = container(typo).pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest():
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization()["resources"]) == sorted(files)
    assert list(objects("Namespace")) == [kustomization()["namespace"]]



# === the services' command lines


def test_every_serve_command_line_parses_with_the_cli():
    lines = every_command_line()
    assert len(lines) == 12  # compose: 7 (gpu and cpu replicas), k8s: 5
    for argv in lines:
        parse_serve(argv)
    with pytest.raises(pytest.fail.Exception, match="rejected"):
        parse_serve(["serve", "verify", "--grace-sec", "10"])
    with pytest.raises(pytest.fail.Exception, match="no flag of its own"):
        parse_serve(["serve", "verify", "--grace", "10"])  # argparse alone takes it for --grace-s


def test_each_role_has_the_same_image_and_arguments_in_compose_and_kubernetes():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    deployments = adaspec_deployments()
    gpu = adaspec_services("gpu")
    assert sorted(deployments) == sorted(gpu) == ["coordinator", "draft", "http", "verify-a", "verify-b"]

    def masked(argv: list[str]) -> list[str]:
        return [("<identity>" if i and argv[i - 1] in IDENTITY_FLAGS else a) for i, a in enumerate(argv)]

    for name, spec in gpu.items():
        assert masked(spec["command"]) == masked(k8s_args(deployments[name])), name
        assert spec["image"] == container(deployments[name])["image"] == f"adaspec:{version}", name
    assert {spec["image"] for spec in adaspec_services("cpu").values()} == {f"adaspec:{version}"}


def test_services_listen_where_they_are_reached():
    """A replica's heartbeat publishes the address it listens on, and coordinators dial it: replicas listen on a
    name or IP that reaches that one container (compose: the service name; Kubernetes: the pod IP), under a
    unique replica id. The others listen on all interfaces."""
    for profile in ("gpu", "cpu"):
        for name, spec in adaspec_services(profile).items():
            argv = spec["command"]
            if role(argv) in REPLICAS:
                assert flag(argv, "--host") == flag(argv, "--replica-id") == name
            else:
                assert flag(argv, "--host") == "0.0.0.0", name
    for name, deployment in adaspec_deployments().items():
        argv = k8s_args(deployment)
        if role(argv) in REPLICAS:
            assert (flag(argv, "--host"), flag(argv, "--replica-id")) == ("<status.podIP>", "<metadata.name>"), name
        else:
            assert flag(argv, "--host") == "0.0.0.0", name


def test_every_service_uses_the_load_store_and_the_collector():
    for profile in ("gpu", "cpu"):
        for name, spec in adaspec_services(profile).items():
            argv = spec["command"]
            if role(argv) != "http":
                assert flag(argv, "--redis") == REDIS_URL, name
            assert spec["environment"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == COLLECTOR, name
            assert spec["environment"]["OTEL_SERVICE_NAME"] == f"adaspec-{role(argv)}", name
            assert spec["environment"]["OTEL_METRICS_EXPORTER"] == "none", name  # scraped, not pushed as well
    assert "otel-collector" in services() and "redis" in services()
    for name, deployment in adaspec_deployments().items():
        argv, env = k8s_args(deployment), k8s_env(deployment)
        if role(argv) != "http":
            assert flag(argv, "--redis") == REDIS_URL, name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == COLLECTOR and env["OTEL_SERVICE_NAME"] == f"adaspec-{role(argv)}"
        assert env["OTEL_METRICS_EXPORTER"] == "none", name
    assert "redis" in objects("Service")


def test_http_reaches_the_coordinator_and_reads_its_key_from_a_secret():
    for argv in (services()["http"]["command"], k8s_args(objects("Deployment")["http"])):
        assert flag(argv, "--coordinator") == "coordinator:50051"
        assert flag(argv, "--api-key-file") == "/run/secrets/api-key"
    assert services()["http"]["secrets"] == ["api-key"]  # compose mounts it at /run/secrets/api-key
    assert compose()["secrets"]["api-key"]["file"] == "./deploy/api-key"
    assert "/deploy/api-key" in (ROOT / ".gitignore").read_text().splitlines()
    http = objects("Deployment")["http"]
    (mount,) = [m for m in container(http)["volumeMounts"] if m["name"] == "api-key"]
    (volume,) = [v for v in http["spec"]["template"]["spec"]["volumes"] if v["name"] == "api-key"]
    assert mount["readOnly"] and mount["mountPath"] == "/run/secrets"
    assert volume["secret"]["secretName"] == "adaspec-api-key"
    assert volume["secret"]["items"] == [{"key": "api-key", "path": "api-key"}]
    assert "coordinator" in objects("Service")


# === GPUs


def gpu_devices(spec: dict) -> list[dict]:
    return spec.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])


def test_each_gpu_replica_has_a_gpu_of_its_own():
    replicas = {name: spec for name, spec in adaspec_services("gpu").items() if role(spec["command"]) in REPLICAS}
    pools = {flag(spec["command"], "--pool") for spec in replicas.values() if role(spec["command"]) == "verify"}
    assert pools == {"a", "b"}
    ids = []
    for name, spec in replicas.items():
        (device,) = gpu_devices(spec)
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"], name
        assert len(device["device_ids"]) == 1 and "count" not in device, name
        ids += device["device_ids"]
        assert flag(spec["command"], "--device") == "cuda", name
    assert len(ids) == len(set(ids)) == 3
    for name, spec in adaspec_services("gpu").items():
        assert bool(gpu_devices(spec)) == (name in replicas), name
    for name, deployment in adaspec_deployments().items():
        resources = container(deployment)["resources"]
        gpus = [resources.get(kind, {}).get("nvidia.com/gpu") for kind in ("requests", "limits")]
        assert gpus == ([1, 1] if role(k8s_args(deployment)) in REPLICAS else [None, None]), name


def test_the_cpu_profile_runs_the_same_roles_without_gpus():
    cpu, gpu = adaspec_services("cpu"), adaspec_services("gpu")
    assert sorted(role(s["command"]) for s in cpu.values()) == ["coordinator", "draft", "http", "verify"]
    assert {role(s["command"]) for s in gpu.values()} == {role(s["command"]) for s in cpu.values()}
    for name, spec in services("cpu").items():
        assert not gpu_devices(spec), name
    for name, spec in cpu.items():
        if role(spec["command"]) in REPLICAS:
            assert flag(spec["command"], "--device") == "cpu", name


# === health, dependencies, shutdown, ports


def test_every_grpc_service_has_a_health_check_on_its_port_and_service():
    for profile in ("gpu", "cpu"):
        for name, spec in adaspec_services(profile).items():
            argv = spec["command"]
            test = spec["healthcheck"]["test"]
            if role(argv) == "http":
                assert test[:3] == ["CMD", "python", "-c"] and f":{flag(argv, '--port')}/health" in test[3], name
                continue
            host = "127.0.0.1" if flag(argv, "--host") == "0.0.0.0" else flag(argv, "--host")
            assert test == ["CMD", "adaspec", "healthcheck", f"{host}:{flag(argv, '--port')}",
                            "--service", GRPC_SERVICES[role(argv)]], name
    for name, deployment in adaspec_deployments().items():
        argv, c = k8s_args(deployment), container(deployment)
        if role(argv) == "http":
            assert c["readinessProbe"]["httpGet"]["path"] == "/health", name
            assert "livenessProbe" in c, name
            continue
        probes = ["readinessProbe", "livenessProbe"] + (["startupProbe"] if role(argv) in REPLICAS else [])
        for probe in probes:
            assert c[probe]["grpc"] == {"port": int(flag(argv, "--port")), "service": GRPC_SERVICES[role(argv)]}, name


def test_services_wait_for_healthy_dependencies():
    for name, spec in (adaspec_services("gpu") | adaspec_services("cpu")).items():
        wanted = "coordinator" if role(spec["command"]) == "http" else "redis"
        assert list(spec["depends_on"]) == [wanted], name
        assert spec["depends_on"][wanted] == {"condition": "service_healthy"}, name
        assert "healthcheck" in compose()["services"][wanted], wanted


def test_shutdown_waits_longer_than_the_drain():
    for profile in ("gpu", "cpu"):
        for name, spec in adaspec_services(profile).items():
            assert duration_s(spec["stop_grace_period"]) > parse_serve(spec["command"]).grace_s, name
    for name, deployment in adaspec_deployments().items():
        period = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        assert period > parse_serve(k8s_args(deployment)).grace_s, name


def test_host_ports_are_unique():
    for profile in ("gpu", "cpu"):
        published = [str(port).split(":")[-2] for spec in services(profile).values() for port in spec.get("ports", [])]
        assert len(published) == len(set(published)) and published, profile


# === models, scaling, image


def test_models_are_mounted_read_only_and_passed_from_there():
    for profile in ("gpu", "cpu"):
        for name, spec in adaspec_services(profile).items():
            argv = spec["command"]
            model = {"verify": "--target", "draft": "--draft", "http": "--tokenizer"}.get(role(argv))
            if model is None:
                continue
            assert spec["volumes"] == [{"type": "bind", "source": "./models", "target": "/models", "read_only": True}]
            assert flag(argv, model).startswith("/models/"), name
            assert (ROOT / flag(argv, model).replace("/models", "models", 1)).is_dir(), name  # the bundled pair
    (claim,) = objects("PersistentVolumeClaim").values()
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    for name, deployment in adaspec_deployments().items():
        volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
        mounts = [m for m in container(deployment).get("volumeMounts", []) if m["mountPath"] == "/models"]
        if role(k8s_args(deployment)) == "coordinator":
            assert not mounts
            continue
        (mount,) = mounts
        claim_ref = volumes[mount["name"]]["persistentVolumeClaim"]
        assert mount["readOnly"] and claim_ref == {"claimName": claim["metadata"]["name"], "readOnly": True}, name


def test_each_role_and_pool_scales_on_its_own():
    autoscalers = {hpa["spec"]["scaleTargetRef"]["name"]: hpa for hpa in objects("HorizontalPodAutoscaler").values()}
    assert sorted(autoscalers) == sorted(adaspec_deployments())
    for name, deployment in adaspec_deployments().items():
        assert "replicas" not in deployment["spec"], f"{name}: the HPA owns the count"
        for metric in autoscalers[name]["spec"]["metrics"]:
            assert metric["resource"]["name"] in container(deployment)["resources"]["requests"], name


def test_the_dockerfile_builds_one_non_root_image_for_every_role():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
             if line.strip() and not line.lstrip().startswith("#")]
    instructions = {}
    for line in lines:
        keyword, _, rest = line.partition(" ")
        instructions.setdefault(keyword, []).append(rest)
    assert re.fullmatch(r"python:3\.1[12]-slim", instructions["FROM"][0])
    assert instructions["USER"][-1] not in ("root", "0")
    assert instructions["STOPSIGNAL"] == ["SIGTERM"]
    assert json.loads(instructions["ENTRYPOINT"][-1]) == ["adaspec"]
    args = {a.split("=")[0] for a in instructions["ARG"]}
    assert set(compose_file()["x-adaspec"]["build"]["args"]) <= args
    assert "models" in (ROOT / ".dockerignore").read_text().splitlines()


# === observability files


def test_the_dashboard_queries_only_planned_metrics_and_all_of_them():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "adaspec.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert exprs
    queried = set()
    for expr in exprs:
        metrics = queried_metrics(expr)
        assert metrics, f"queries no AdaSpec metric: {expr}"
        unplanned = metrics - set(planned_metrics())
        assert not unplanned, f"not in docs/deployment.md's metrics table: {unplanned}"
        queried |= metrics
    assert queried == set(planned_metrics())
    for metric, kind in planned_metrics().items():
        assert kind != "counter" or metric.endswith("_total"), metric
    datasources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/datasources.yaml").read_text())
    uids = {d["uid"] for d in datasources["datasources"]}
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"] if "datasource" in panel} <= uids


def test_prometheus_the_collector_and_grafana_configs_agree_with_compose():
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (adaspec_job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "adaspec"]
    targets = {t for group in adaspec_job["static_configs"] for t in group["targets"]}
    assert targets == {f"{name}:9464" for name in adaspec_services("gpu") | adaspec_services("cpu")}
    collector = yaml.safe_load((ROOT / "deploy" / "otel" / "collector.yaml").read_text())
    assert collector["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"].endswith(":4317")
    for exporter in collector["exporters"].values():
        assert exporter["endpoint"].split(":")[0] in services()
    volumes = {v.split(":")[0]: v.split(":")[1] for name in ("prometheus", "grafana", "otel-collector")
               for v in services()[name]["volumes"]}
    assert all((ROOT / source).exists() for source in volumes)
    providers = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/dashboards.yaml").read_text())
    assert providers["providers"][0]["options"]["path"] == volumes["./deploy/grafana/dashboards"]


# === adaspec healthcheck


def run_healthcheck(*argv: str) -> int:
    return cli.main(["healthcheck", *argv, "--timeout", "2"])


def test_healthcheck_exits_0_only_while_the_service_is_serving():
    async def scenario():
        host = ServiceHost("test", [GRPC_SERVICES["verify"]], port=0)
        await host.start()
        try:
            codes = [await asyncio.to_thread(run_healthcheck, host.address),
                     await asyncio.to_thread(run_healthcheck, host.address, "--service", GRPC_SERVICES["verify"]),
                     await asyncio.to_thread(run_healthcheck, host.address, "--service", "adaspec.v1.Nothing")]
            await host.health.enter_graceful_shutdown()  # what SIGTERM does first
            codes.append(await asyncio.to_thread(run_healthcheck, host.address))
        finally:
            await host.stop()
        codes.append(await asyncio.to_thread(run_healthcheck, host.address))  # nothing listens any more
        return codes

    assert asyncio.run(scenario()) == [0, 0, 1, 1, 1]
