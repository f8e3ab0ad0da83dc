"""The deployment users apply with `kubectl apply -k`: rendered, schema-validated, policy-checked.

No cluster is reachable here, so every overlay is rendered with kubectl's kustomize and checked
offline: against the Kubernetes API schemas of a current release, against checkov's and
hadolint's policies, and against the properties the system relies on (pod placement, probes,
network policy, non-root containers, client-side balancing across sharers).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import kubernetes_validate
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
OVERLAYS = ("gpu", "cpu-demo", "observability")
DOCKERFILES = (DEPLOY / "docker" / "Dockerfile.cpu", DEPLOY / "docker" / "Dockerfile.cuda")
HEALTH_CHECK = DEPLOY / "docker" / "grpc_health_check.py"
TOOLS = Path(os.environ.get("C2C_DEPLOY_TOOLS", "/opt/c2c-deploy-tools")) / "bin"
WORKLOAD_KINDS = ("Deployment", "Job")
SHARER = "c2c-sharer"
RECEIVER = "c2c-receiver"


def tool(name: str) -> str:
    path = TOOLS / name
    if not path.exists():
        pytest.fail(f"{path} is missing: run `bash deploy/install-test-tools.sh` (as root) first")
    return str(path)


def render(overlay: str) -> list[dict]:
    done = subprocess.run(
        [tool("kubectl"), "kustomize", str(DEPLOY / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, f"kubectl kustomize {overlay} failed: {done.stderr.strip()}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def skips() -> dict:
    return yaml.safe_load((DEPLOY / "policy-skips.yaml").read_text())


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind}/{name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict) -> dict:
    return workload["spec"]["template"]["metadata"]["labels"]


def containers(workload: dict) -> Iterator[dict]:
    spec = pod_spec(workload)
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def selects(match_labels: dict, labels: dict) -> bool:
    return all(labels.get(key) == value for key, value in match_labels.items())


def workloads(objects: list[dict]) -> list[dict]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def c2c_services(rendered: dict[str, list[dict]]) -> Iterator[tuple[str, dict]]:
    for overlay in ("gpu", "cpu-demo"):
        for name in (SHARER, RECEIVER):
            yield overlay, find(rendered[overlay], "Deployment", name)


# Rendering and schemas


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_with_kubectl_kustomize(overlay: str) -> None:
    kinds = {o["kind"] for o in render(overlay)}
    assert {"Namespace", "Deployment", "Service", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_current_kubernetes_schemas(
    rendered: dict[str, list[dict]], overlay: str
) -> None:
    version = kubernetes_validate.latest_version()
    errors = []
    for obj in rendered[overlay]:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message}")
    assert not errors, f"invalid against Kubernetes {version}: {errors}"


# Policy checks


def test_every_skipped_policy_check_gives_targets_and_a_reason(skips: dict) -> None:
    known_targets = {*OVERLAYS, "dockerfiles"}
    for entry in skips["checkov"] + skips["hadolint"]:
        assert entry["reason"].strip(), f"{entry['check']} has no reason"
        assert set(entry["targets"]) <= known_targets, f"{entry['check']}: unknown target"


def listed(skips: dict, linter: str) -> set[tuple[str, str]]:
    return {(e["check"], target) for e in skips[linter] for target in e["targets"]}


def assert_failures_are_exactly_the_skips(failed: set, allowed: set) -> None:
    assert not failed - allowed, f"failures not in deploy/policy-skips.yaml: {failed - allowed}"
    assert not allowed - failed, f"stale skips in deploy/policy-skips.yaml: {allowed - failed}"


def test_checkov_passes_on_overlays_and_dockerfiles_except_listed_skips(
    rendered: dict[str, list[dict]], skips: dict, tmp_path: Path
) -> None:
    for overlay, objects in rendered.items():
        (tmp_path / f"{overlay}.yaml").write_text(yaml.safe_dump_all(objects))
    for dockerfile in DOCKERFILES:
        (tmp_path / dockerfile.name).write_text(dockerfile.read_text())
    done = subprocess.run(
        [tool("checkov"), "--directory", str(tmp_path)]
        + ["--framework", "kubernetes", "dockerfile", "--output", "json", "--quiet"]
        + ["--skip-download"],
        capture_output=True,
        text=True,
        timeout=240,
    )
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = set()
    for report in reports:
        for check in report["results"]["failed_checks"]:
            source = Path(check["file_path"])
            target = "dockerfiles" if source.name.startswith("Dockerfile") else source.stem
            failed.add((check["check_id"], target))
    assert_failures_are_exactly_the_skips(failed, listed(skips, "checkov"))


def test_hadolint_passes_on_dockerfiles_except_listed_skips(skips: dict) -> None:
    done = subprocess.run(
        [tool("hadolint"), "--format", "json", *map(str, DOCKERFILES)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    failed = {(finding["code"], "dockerfiles") for finding in json.loads(done.stdout)}
    assert_failures_are_exactly_the_skips(failed, listed(skips, "hadolint"))


# What the system relies on


def test_gpu_sharers_and_receivers_are_never_scheduled_on_one_node(
    rendered: dict[str, list[dict]],
) -> None:
    gpu = rendered["gpu"]
    for name, other in ((SHARER, RECEIVER), (RECEIVER, SHARER)):
        workload, peer = find(gpu, "Deployment", name), find(gpu, "Deployment", other)
        terms = pod_spec(workload)["affinity"]["podAntiAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]
        assert any(
            term["topologyKey"] == "kubernetes.io/hostname"
            and selects(term["labelSelector"]["matchLabels"], pod_labels(peer))
            and not selects(term["labelSelector"]["matchLabels"], pod_labels(workload))
            for term in terms
        ), f"{name} has no required anti-affinity against {other} pods per node"


def test_gpu_pods_get_one_gpu_and_read_models_from_the_shared_volume(
    rendered: dict[str, list[dict]],
) -> None:
    gpu = rendered["gpu"]
    claim = find(gpu, "PersistentVolumeClaim", "c2c-models")
    assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    for name in (SHARER, RECEIVER):
        workload = find(gpu, "Deployment", name)
        (container,) = pod_spec(workload)["containers"]
        for bound in ("requests", "limits"):
            assert container["resources"][bound]["nvidia.com/gpu"] == "1", f"{name} {bound}"
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/models")
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["persistentVolumeClaim"]["claimName"] == "c2c-models"
        model_paths = [v for k, v in env_of(container).items() if k in ("C2C_MODEL", "C2C_FUSER")]
        assert model_paths and all(p.startswith("/models/") for p in model_paths), name


def test_probes_are_native_grpc_probes_on_the_port_serving_health(
    rendered: dict[str, list[dict]],
) -> None:
    for overlay, workload in c2c_services(rendered):
        (container,) = pod_spec(workload)["containers"]
        env = env_of(container)
        # The sharer's serving port requires client certificates, which the kubelet cannot
        # present; its health service is also served in plaintext on C2C_HEALTH_PORT.
        health_port = int(env.get("C2C_HEALTH_PORT") or env["C2C_PORT"])
        declared = {p["containerPort"] for p in container["ports"]}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            where = f"{overlay} {workload['metadata']['name']} {probe}"
            assert set(container[probe]) - {"grpc"} <= {
                "periodSeconds",
                "timeoutSeconds",
                "failureThreshold",
                "initialDelaySeconds",
            }, f"{where} is not a gRPC probe"
            assert container[probe]["grpc"]["port"] == health_port, where
            assert health_port in declared, where
    for overlay in ("gpu", "cpu-demo"):
        receiver = pod_spec(find(rendered[overlay], "Deployment", RECEIVER))["containers"][0]
        assert receiver["readinessProbe"]["grpc"]["port"] == int(env_of(receiver)["C2C_PORT"])


def test_sharer_network_policy_admits_only_receiver_pods_to_the_serving_port(
    rendered: dict[str, list[dict]],
) -> None:
    for overlay in ("gpu", "cpu-demo"):
        objects = rendered[overlay]
        sharer = find(objects, "Deployment", SHARER)
        receiver = find(objects, "Deployment", RECEIVER)
        serving_port = int(env_of(pod_spec(sharer)["containers"][0])["C2C_PORT"])
        policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
        default_deny = [p for p in policies if p["spec"]["podSelector"] == {}]
        assert default_deny and all("ingress" not in p["spec"] for p in default_deny), overlay
        admitting = [
            p
            for p in policies
            if p["spec"].get("ingress")
            and selects(p["spec"]["podSelector"]["matchLabels"], pod_labels(sharer))
        ]
        assert admitting, f"{overlay}: no NetworkPolicy admits anything to the sharers"
        for policy in admitting:
            assert not selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(receiver))
            for rule in policy["spec"]["ingress"]:
                assert [p["port"] for p in rule["ports"]] == [serving_port], overlay
                for peer in rule["from"]:
                    assert set(peer) == {"podSelector"}, f"{overlay}: sharer admits {peer}"
                    assert selects(peer["podSelector"]["matchLabels"], pod_labels(receiver))
                    assert not selects(peer["podSelector"]["matchLabels"], pod_labels(sharer))


def test_receiver_network_policy_admits_only_declared_clients(
    rendered: dict[str, list[dict]],
) -> None:
    demo = rendered["cpu-demo"]
    receiver = find(demo, "Deployment", RECEIVER)
    client = find(demo, "Job", "c2c-demo-client")
    policy = find(demo, "NetworkPolicy", RECEIVER)
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(receiver))
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    for peer in peers:
        assert peer["podSelector"]["matchLabels"] == {"c2c.dev/client": "true"}, peer
    assert any(
        set(peer) == {"podSelector"}
        and selects(peer["podSelector"]["matchLabels"], pod_labels(client))
        for peer in peers
    ), "the demo client is not admitted to the receiver"


def test_no_container_runs_as_root_or_can_gain_privileges(rendered: dict[str, list[dict]]) -> None:
    for overlay, objects in rendered.items():
        for workload in workloads(objects):
            pod = pod_spec(workload).get("securityContext", {})
            for container in containers(workload):
                where = f"{overlay} {workload['metadata']['name']}/{container['name']}"
                context = {**pod, **container.get("securityContext", {})}
                assert context.get("runAsNonRoot") is True, where
                assert context.get("runAsUser", 1) != 0, where
                assert context.get("allowPrivilegeEscalation") is False, where
                assert context.get("readOnlyRootFilesystem") is True, where
                assert context.get("privileged", False) is False, where
                assert context["capabilities"]["drop"] == ["ALL"], where
                assert not context["capabilities"].get("add"), where


def test_every_container_declares_resource_requests_and_limits(
    rendered: dict[str, list[dict]],
) -> None:
    for overlay, objects in rendered.items():
        for workload in workloads(objects):
            for container in containers(workload):
                where = f"{overlay} {workload['metadata']['name']}/{container['name']}"
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(container["resources"][bound]), where


def test_receiver_balances_round_robin_over_the_headless_sharer_service(
    rendered: dict[str, list[dict]],
) -> None:
    for overlay in ("gpu", "cpu-demo"):
        objects = rendered[overlay]
        env = env_of(pod_spec(find(objects, "Deployment", RECEIVER))["containers"][0])
        assert env["C2C_SHARER_LB_POLICY"] == "round_robin", overlay
        scheme, _, target = env["C2C_SHARER"].partition(":///")
        assert scheme == "dns", f"{overlay}: C2C_SHARER={env['C2C_SHARER']} is not a dns:/// target"
        host, port = target.rsplit(":", 1)
        service_name, namespace, *_ = host.split(".")
        service = find(objects, "Service", service_name)
        assert service["metadata"]["namespace"] == namespace, overlay
        assert service["spec"]["clusterIP"] == "None", f"{overlay}: {service_name} is not headless"
        sharer = find(objects, "Deployment", SHARER)
        assert selects(service["spec"]["selector"], pod_labels(sharer)), overlay
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}, overlay


def service_variables() -> dict[str, set[str]]:
    """The C2C_* variables each service's command line reads."""
    import typer

    from receiver_service.cli import app as receiver_app
    from sharer_service.cli import app as sharer_app

    return {
        name: {p.envvar for p in typer.main.get_command(app).params if p.envvar}
        for name, app in ((SHARER, sharer_app), (RECEIVER, receiver_app))
    }


def test_every_c2c_variable_in_the_manifests_is_read_by_the_service_it_reaches(
    rendered: dict[str, list[dict]],
) -> None:
    reads = service_variables()
    for overlay in ("gpu", "cpu-demo"):
        (config,) = [o for o in rendered[overlay] if o["kind"] == "ConfigMap"]
        shared = {key for key in config["data"] if key.startswith("C2C_")}
        unread = shared - reads[SHARER] - reads[RECEIVER]
        assert not unread, f"{overlay}: ConfigMap sets {unread}, which no service reads"
        for name in (SHARER, RECEIVER):
            container = pod_spec(find(rendered[overlay], "Deployment", name))["containers"][0]
            own = {key for key in env_of(container) if key.startswith("C2C_")}
            unread = own - reads[name]
            assert not unread, f"{overlay}: {name} is given {unread}, which it does not read"


def test_demo_client_job_arguments_parse_as_c2c_generate(rendered: dict[str, list[dict]]) -> None:
    import typer

    from receiver_service.client import generate_command

    app = typer.Typer()
    app.command()(generate_command)
    job = find(rendered["cpu-demo"], "Job", "c2c-demo-client")
    (client,) = pod_spec(job)["containers"]
    program, subcommand, *args = client["command"]
    assert (program, subcommand) == ("c2c", "generate")
    context = typer.main.get_command(app).make_context("generate", list(args))
    assert context.params["receiver"] == "c2c-receiver:50052"
    assert context.params["json_output"] is True


def test_gpu_mtls_certificates_come_from_secrets(rendered: dict[str, list[dict]]) -> None:
    gpu = rendered["gpu"]
    for name in (SHARER, RECEIVER):
        workload = find(gpu, "Deployment", name)
        (container,) = pod_spec(workload)["containers"]
        volumes = {v["name"]: v for v in pod_spec(workload)["volumes"]}
        for variable in ("C2C_TLS_CERT", "C2C_TLS_KEY", "C2C_TLS_CA"):
            path = env_of(container)[variable]
            mount = next(m for m in container["volumeMounts"] if path.startswith(m["mountPath"]))
            assert "secret" in volumes[mount["name"]], f"{name} {variable} is not from a Secret"


def test_cpu_demo_serves_the_bundled_pair_without_certificates(
    rendered: dict[str, list[dict]],
) -> None:
    demo = rendered["cpu-demo"]
    for name in (SHARER, RECEIVER):
        workload = find(demo, "Deployment", name)
        env = env_of(pod_spec(workload)["containers"][0])
        assert not {"C2C_MODEL", "C2C_FUSER", "C2C_TLS_CERT", "C2C_TLS_KEY", "C2C_TLS_CA"} & set(
            env
        )
        assert not any("secret" in v for v in pod_spec(workload)["volumes"]), name
    assert not [o for o in demo if o["kind"] == "PersistentVolumeClaim"]


def test_services_export_traces_to_the_collector_of_the_observability_overlay(
    rendered: dict[str, list[dict]],
) -> None:
    observability = rendered["observability"]
    for overlay in ("gpu", "cpu-demo"):
        (config,) = [o for o in rendered[overlay] if o["kind"] == "ConfigMap"]
        endpoint = config["data"]["OTEL_EXPORTER_OTLP_ENDPOINT"]
        host, port = endpoint.removeprefix("http://").rsplit(":", 1)
        service_name, namespace, *_ = host.split(".")
        collector = find(observability, "Service", service_name)
        assert collector["metadata"]["namespace"] == namespace
        assert int(port) in {p["port"] for p in collector["spec"]["ports"]}
        for name in (SHARER, RECEIVER):
            refs = pod_spec(find(rendered[overlay], "Deployment", name))["containers"][0]["envFrom"]
            assert {"configMapRef": {"name": config["metadata"]["name"]}} in refs
    (collector_config,) = [o for o in observability if o["kind"] == "ConfigMap"]
    exporters = yaml.safe_load(collector_config["data"]["config.yaml"])["exporters"]
    jaeger_host = exporters["otlp/jaeger"]["endpoint"].split(".")[0]
    find(observability, "Service", jaeger_host)


def test_collector_pipelines_use_only_components_the_config_defines(
    rendered: dict[str, list[dict]],
) -> None:
    (collector_config,) = [o for o in rendered["observability"] if o["kind"] == "ConfigMap"]
    config = yaml.safe_load(collector_config["data"]["config.yaml"])
    service = config["service"]
    assert set(service["extensions"]) <= set(config["extensions"])
    assert "traces" in service["pipelines"]
    for name, pipeline in service["pipelines"].items():
        for section in ("receivers", "processors", "exporters"):
            undefined = set(pipeline.get(section, [])) - set(config.get(section, {}))
            assert not undefined, f"pipeline {name} uses undefined {section}: {undefined}"
    collector = find(rendered["observability"], "Deployment", "otel-collector")
    (container,) = pod_spec(collector)["containers"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert f"--config={mount['mountPath']}/config.yaml" in container["args"]


def test_receivers_autoscale_and_every_service_keeps_a_pod_through_disruptions(
    rendered: dict[str, list[dict]],
) -> None:
    for overlay in ("gpu", "cpu-demo"):
        objects = rendered[overlay]
        autoscaler = find(objects, "HorizontalPodAutoscaler", RECEIVER)
        assert autoscaler["spec"]["scaleTargetRef"]["name"] == RECEIVER
        assert autoscaler["spec"]["maxReplicas"] > autoscaler["spec"]["minReplicas"]
        for name in (SHARER, RECEIVER):
            workload = find(objects, "Deployment", name)
            budget = find(objects, "PodDisruptionBudget", name)
            assert selects(budget["spec"]["selector"]["matchLabels"], pod_labels(workload))
            spread = pod_spec(workload)["topologySpreadConstraints"]
            assert any(
                selects(c["labelSelector"]["matchLabels"], pod_labels(workload)) for c in spread
            )


# Images


def stages(dockerfile: Path) -> list[list[str]]:
    """Instruction lines (continuations joined) grouped by FROM."""
    text = dockerfile.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    result: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_is_multi_stage_non_root_without_build_tools_or_models(dockerfile: Path) -> None:
    builder, final = stages(dockerfile)[0], stages(dockerfile)[-1]
    assert len(stages(dockerfile)) >= 2 and "AS builder" in builder[0]
    user = [line.split()[1] for line in final if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("root", "0"), f"{dockerfile.name} runs as root"
    installs = " ".join(
        line for line in final if "apt-get install" in line or "pip install" in line
    )
    for build_tool in (
        "gcc",
        "g++",
        "build-essential",
        "git",
        "python3-dev",
        "python3-pip",
        "cmake",
    ):
        assert f" {build_tool} " not in f" {installs} ", f"{dockerfile.name} ships {build_tool}"
    copies = [line for line in final if line.startswith("COPY ")]
    assert any("--from=builder" in line for line in copies)
    assert not any("models" in line or ".safetensors" in line for line in copies)
    healthcheck = [line for line in final if line.startswith("HEALTHCHECK ")]
    assert healthcheck and "grpc_health_check.py" in healthcheck[0]


def test_cuda_image_runs_on_an_nvidia_cuda_runtime_base() -> None:
    final = stages(DOCKERFILES[1])[-1]
    image = final[0].split()[1]
    assert image.startswith("nvidia/cuda:") and "-runtime-" in image


def test_wheel_the_images_install_carries_the_services_and_the_bundled_pair(
    tmp_path: Path,
) -> None:
    """The builder stage installs the project's wheel, so whatever it lacks the image lacks."""
    import zipfile

    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["--wheel-dir", str(tmp_path), str(REPO)],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("c2c", "protos", "sharer_service", "receiver_service", "fuser"):
        assert f"{package}/__init__.py" in names, package
    assert "protos/c2c.proto" in names
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for script in ("c2c =", "c2c-sharer =", "c2c-receiver ="):
        assert script in scripts, f"console script {script[:-2]} missing from the wheel"
    bundled = subprocess.run(
        ["git", "ls-files", "c2c/bundled"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    missing = [f for f in bundled if "__pycache__" not in f and f not in names]
    assert not missing, f"bundled files not in the wheel (add them to package-data): {missing}"


# The images' health check against a real gRPC health service


@pytest.fixture()
def health_server() -> Iterator[tuple[str, health.HealthServicer]]:
    from concurrent import futures

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


def run_health_check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(HEALTH_CHECK), *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )


def test_health_check_exits_zero_only_while_the_server_is_serving(health_server) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    serving = run_health_check(f"--addr={address}")
    assert serving.returncode == 0 and serving.stdout.strip() == f"{address}: SERVING"
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    not_serving = run_health_check(f"--addr={address}")
    assert not_serving.returncode == 1 and "NOT_SERVING" in not_serving.stdout


def test_health_check_reads_the_port_from_the_container_environment(health_server) -> None:
    address, servicer = health_server
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = address.rsplit(":", 1)[1]
    done = run_health_check(env={"C2C_HEALTH_PORT": port, "C2C_PORT": "1"})
    assert done.returncode == 0, done.stdout + done.stderr


def test_health_check_reports_an_unreachable_server_in_one_line() -> None:
    done = run_health_check("--addr=127.0.0.1:1", "--timeout=1")
    assert done.returncode == 1
    assert done.stdout.strip().startswith("127.0.0.1:1: UNAVAILABLE") or "DEADLINE" in done.stdout
    assert "Traceback" not in done.stderr
