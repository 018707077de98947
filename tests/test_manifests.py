"""The deployment manifests agree with the app, its settings, the Dockerfile and `make docker-test`.

Nothing here needs a cluster: every manifest is loaded with PyYAML and compared with what the
code actually serves (routes of ``create_app()``, built without running its lifespan), with the
``Settings`` fields, with the Dockerfile's user and with the image that docker-test.sh builds.
Built-in kinds are also validated strictly against the Kubernetes JSON schemas that
kubernetes-validate ships (offline).
"""

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import AliasChoices

from service.app import create_app
from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
SCRAPE_CONFIG = ROOT / "deploy" / "prometheus" / "scrape-config.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKER_TEST = ROOT / "deploy" / "docker" / "docker-test.sh"

Manifest = dict[str, Any]

# KServe's ComponentExtensionSpec: the predictor keys that are not part of the Kubernetes PodSpec
KSERVE_COMPONENT_KEYS = {
    "minReplicas",
    "maxReplicas",
    "scaleTarget",
    "scaleMetric",
    "scaleMetricType",
    "autoScaling",
    "containerConcurrency",
    "timeout",
    "canaryTrafficPercent",
    "logger",
    "batcher",
    "labels",
    "annotations",
    "deploymentStrategy",
}


def load(path: Path) -> list[Manifest]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_manifests() -> list[tuple[Path, Manifest]]:
    return [(path, doc) for path in sorted(K8S.glob("*.y*ml")) for doc in load(path)]


def one(kind: str) -> Manifest:
    found = [doc for _, doc in k8s_manifests() if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} under deploy/k8s, found {len(found)}"
    return found[0]


@dataclass
class Workload:
    """A pod template to check: the Deployment's, or the InferenceService predictor's."""

    name: str
    pod: dict[str, Any]
    container: dict[str, Any]
    annotations: dict[str, str]

    def env(self) -> dict[str, dict[str, Any]]:
        return {item["name"]: item for item in self.container.get("env", [])}

    def plain_env(self) -> dict[str, str]:
        return {name: str(item["value"]) for name, item in self.env().items() if "value" in item}

    def port(self, ref: int | str) -> int:
        """A probe's or Service's port (number or container port name) as a container port number."""
        ports = self.container.get("ports", [])
        if isinstance(ref, int):
            assert ref in [p["containerPort"] for p in ports], f"port {ref} is not a container port"
            return ref
        named = [p["containerPort"] for p in ports if p.get("name") == ref]
        assert named, f"no container port named {ref!r}"
        return int(named[0])


def deployment_workload() -> Workload:
    deployment = one("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert len(pod["containers"]) == 1, "the serving pod has one container"
    return Workload("deployment", pod, pod["containers"][0], deployment["spec"]["template"]["metadata"].get("annotations", {}))


def kserve_workload() -> Workload:
    (isvc,) = load(KSERVE)
    predictor = isvc["spec"]["predictor"]
    containers = [c for c in predictor["containers"] if c["name"] == "kserve-container"]
    assert len(containers) == 1, "a KServe custom predictor runs its server in a container named kserve-container"
    return Workload("inferenceservice", predictor, containers[0], predictor.get("annotations", {}))


WORKLOADS = [deployment_workload, kserve_workload]


@pytest.fixture(params=WORKLOADS, ids=lambda make: make.__name__.removesuffix("_workload"))
def workload(request: pytest.FixtureRequest) -> Workload:
    workload: Workload = request.param()
    return workload


@pytest.fixture(scope="module")
def routes() -> set[str]:
    """Every path the app serves; create_app() loads nothing until its lifespan runs."""
    app = create_app(Settings())
    routes = [*app.routes]
    for route in routes:  # FastAPI wraps an included router; its routes carry their full paths
        routes.extend(getattr(getattr(route, "original_router", None), "routes", []))
    return {path for route in routes if (path := getattr(route, "path", None))}


def settings_env_names() -> dict[str, str]:
    """Environment variable name -> Settings field, as pydantic-settings reads them."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = {}
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update({str(choice).upper(): field for choice in alias.choices})
        elif isinstance(alias, str):
            names[alias.upper()] = field
        else:
            names[f"{prefix}{field}".upper()] = field
    return names


def dockerfile_uid() -> int:
    text = DOCKERFILE.read_text()
    match = re.search(r"useradd\b[^\n]*--uid[ =](\d+)", text)
    assert match, "Dockerfile has no `useradd --uid N`"
    uid = int(match.group(1))
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert users and users[-1] in (str(uid), "app"), f"the final stage runs as {users[-1:]} rather than uid {uid}"
    return uid


def docker_test_image() -> str:
    match = re.search(r'^IMAGE="\$\{DIGITS_IMAGE:-([^}]+)\}"', DOCKER_TEST.read_text(), flags=re.MULTILINE)
    assert match, 'docker-test.sh does not set IMAGE="${DIGITS_IMAGE:-...}"'
    return match.group(1)


def split_image(image: str) -> tuple[str, str | None]:
    """``registry:5000/name:tag@digest`` -> (``registry:5000/name``, ``tag``)."""
    image = image.split("@", 1)[0]
    slash = image.rfind("/")
    colon = image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon + 1 :]
    return image, None


def quantity(value: str | int | float) -> float:
    """A Kubernetes quantity as a number: cores for CPU, bytes for memory."""
    text = str(value)
    units = {"m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    assert match and match.group(2) in ("", *units), f"not a quantity: {text!r}"
    return float(match.group(1)) * units.get(match.group(2), 1)


def pre_stop_sleep_s(container: dict[str, Any]) -> float:
    """Seconds a preStop hook sleeps: `exec: [sleep, N]` or the native `sleep: {seconds: N}`."""
    hook = container.get("lifecycle", {}).get("preStop")
    if hook is None:
        return 0.0
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    command = hook["exec"]["command"]
    assert command[0] in ("sleep", "/bin/sleep", "/usr/bin/sleep") and len(command) == 2, f"unexpected preStop {command}"
    return float(command[1])


def probes(container: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
        if kind in container:
            yield kind, container[kind]


# ---------------------------------------------------------------------------------------------
# The pod templates (Deployment and InferenceService) against the app


def test_probe_paths_are_routes_of_the_app(workload: Workload, routes: set[str]) -> None:
    container = workload.container
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for kind, probe in probes(container):
        path = probe["httpGet"]["path"]
        assert path in routes, f"{workload.name} {kind} probes {path}, which the app does not serve"
        assert workload.port(probe["httpGet"]["port"]) == container["ports"][0]["containerPort"]
    assert "startupProbe" in container, "a startupProbe keeps liveness from killing a slow model load"


def test_the_container_ports_are_the_servers_ports(workload: Workload) -> None:
    default_port = Settings.model_fields["port"].default
    grpc_port = Settings.model_fields["grpc_port"].default
    http, *grpc = workload.container["ports"]
    assert http["containerPort"] == default_port == 8000
    assert workload.plain_env().get("PORT", str(default_port)) == str(default_port)
    assert [port["containerPort"] for port in grpc] in ([], [grpc_port]), "the second port, where there is one, is gRPC's"
    exposed = re.findall(r"^EXPOSE\s+(.+)$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    assert exposed == [f"{default_port} {grpc_port}"], f"Dockerfile EXPOSE {exposed}"


def test_termination_grace_covers_pre_stop_and_shutdown_grace(workload: Workload) -> None:
    env = workload.plain_env()
    assert "DIGITS_SHUTDOWN_GRACE_S" in env, "set the server's grace period explicitly, next to terminationGracePeriodSeconds"
    grace = float(env["DIGITS_SHUTDOWN_GRACE_S"])
    pre_stop = pre_stop_sleep_s(workload.container)
    assert pre_stop >= 2, "a preStop sleep lets endpoints drop the pod before SIGTERM"
    termination = workload.pod["terminationGracePeriodSeconds"]
    assert termination > pre_stop + grace, f"SIGKILL at {termination} s, before preStop {pre_stop} s + grace {grace} s are over"


def test_every_digits_variable_is_a_setting_with_a_valid_value(workload: Workload, monkeypatch: pytest.MonkeyPatch) -> None:
    known = settings_env_names()
    assert known["DIGITS_SHUTDOWN_GRACE_S"] == "shutdown_grace_s" and "DIGITS_SHUTDOWN_GRACE" not in known  # the check itself works
    env = workload.env()
    unknown = [name for name in env if (name.startswith("DIGITS_") or name in ("HOST", "PORT")) and name not in known]
    assert not unknown, f"{workload.name} sets {unknown}, which Settings does not read (typo?)"
    # and the values parse: Settings() from exactly the manifest's plain values
    for name in known:
        monkeypatch.delenv(name, raising=False)
    for name, value in workload.plain_env().items():
        if name in known:
            monkeypatch.setenv(name, value)
    settings = Settings()  # a value it cannot parse raises here
    assert settings.shutdown_grace_s == float(workload.plain_env()["DIGITS_SHUTDOWN_GRACE_S"])


def test_torch_threads_fit_the_cpu_limit(workload: Workload) -> None:
    threads = int(workload.plain_env().get("DIGITS_TORCH_THREADS", "0"))
    limit = quantity(workload.container["resources"]["limits"]["cpu"])
    assert 1 <= threads <= math.ceil(limit), "0 means one thread per node core, far above the pod's CPU limit"


def test_resources_are_requested_and_limited(workload: Workload) -> None:
    resources = workload.container["resources"]
    for resource in ("cpu", "memory"):
        request, limit = quantity(resources["requests"][resource]), quantity(resources["limits"][resource])
        assert 0 < request <= limit, f"{resource}: request {request} above limit {limit}"
    assert 1 <= quantity(resources["limits"]["cpu"]) <= 2
    # the process takes about 400-600 MB; leave room for a full batch and multipart buffers
    assert 768 * 2**20 <= quantity(resources["limits"]["memory"]) <= 2 * 2**30
    assert quantity(resources["requests"]["memory"]) >= 600 * 2**20


def test_image_is_what_make_docker_test_builds(workload: Workload) -> None:
    built, _ = split_image(docker_test_image())
    repository, tag = split_image(workload.container["image"])
    assert repository == built == "digits-serving"
    assert tag and tag != "latest", "pin a tag so that a rollout changes the pod template"


def test_security_context_is_the_dockerfile_user_and_locked_down(workload: Workload) -> None:
    uid = dockerfile_uid()
    pod_context = workload.pod.get("securityContext", {})
    context = {**pod_context, **workload.container.get("securityContext", {})}
    assert context.get("runAsNonRoot") is True
    assert context.get("runAsUser") == uid != 0
    assert context.get("allowPrivilegeEscalation") is False
    assert context.get("capabilities", {}).get("drop") == ["ALL"]
    assert not context.get("privileged", False)
    assert context.get("readOnlyRootFilesystem") is True
    # ...so /tmp (multipart spooling, torch temporaries) must be a writable volume
    mounts = {mount["mountPath"]: mount["name"] for mount in workload.container.get("volumeMounts", [])}
    assert "/tmp" in mounts, "readOnlyRootFilesystem needs a writable /tmp"
    volumes = {volume["name"]: volume for volume in workload.pod.get("volumes", [])}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert workload.pod.get("automountServiceAccountToken") is False
    assert workload.pod.get("enableServiceLinks") is False, "service links inject *_PORT variables, DIGITS_PORT among them"


def test_prometheus_annotations_point_at_the_metrics_route(workload: Workload, routes: set[str]) -> None:
    annotations = workload.annotations
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] in routes
    assert annotations["prometheus.io/path"] == "/metrics"
    assert workload.port(int(annotations["prometheus.io/port"])) == workload.container["ports"][0]["containerPort"]


def test_kserve_and_deployment_run_the_same_configuration() -> None:
    deployment, kserve = deployment_workload(), kserve_workload()
    assert deployment.plain_env() == {k: v for k, v in kserve.plain_env().items() if k != "PROTOCOL"}
    for key in ("image", "resources", "securityContext", "lifecycle"):
        assert deployment.container[key] == kserve.container[key], key
    for kind, probe in probes(deployment.container):
        other = kserve.container[kind]
        assert probe["httpGet"]["path"] == other["httpGet"]["path"], kind
        assert {k: v for k, v in probe.items() if k != "httpGet"} == {k: v for k, v in other.items() if k != "httpGet"}, kind
    assert deployment.pod["terminationGracePeriodSeconds"] == kserve.pod["terminationGracePeriodSeconds"]


# ---------------------------------------------------------------------------------------------
# Kubernetes objects among themselves


def test_manifests_are_plain_kubernetes_objects() -> None:
    """`kubectl apply -f deploy/k8s/` applies every file there: each must be an object it knows."""
    kinds = sorted(doc["kind"] for _, doc in k8s_manifests())
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "Service"]
    for path, doc in k8s_manifests():
        assert doc["metadata"]["name"] == "digits-serving", path
        assert "namespace" not in doc["metadata"], f"{path}: leave the namespace to kubectl -n"


def test_deployment_selector_matches_its_pods() -> None:
    deployment = one("Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_service_routes_port_80_to_http_and_8001_to_grpc() -> None:
    service, deployment = one("Service"), one("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    http, grpc = service["spec"]["ports"]
    assert (http["port"], http["targetPort"]) == (80, "http")
    assert deployment_workload().port(http["targetPort"]) == Settings.model_fields["port"].default
    assert (grpc["port"], grpc["targetPort"], grpc["appProtocol"]) == (8001, "grpc", "kubernetes.io/h2c")
    assert deployment_workload().port(grpc["targetPort"]) == Settings.model_fields["grpc_port"].default


def test_hpa_scales_the_deployment_on_cpu() -> None:
    hpa, deployment = one("HorizontalPodAutoscaler"), one("Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == ("apps/v1", "Deployment", deployment["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 0 < metric["resource"]["target"]["averageUtilization"] <= 100
    # utilisation is relative to the CPU request, so the container must have one
    assert quantity(deployment_workload().container["resources"]["requests"]["cpu"]) > 0


def test_inference_service_is_a_v2_custom_predictor() -> None:
    (isvc,) = load(KSERVE)
    assert (isvc["apiVersion"], isvc["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    predictor = isvc["spec"]["predictor"]
    # a custom container declares its protocol through PROTOCOL; protocolVersion is a field of model specs only
    assert "protocolVersion" not in predictor
    assert kserve_workload().env()["PROTOCOL"]["value"] == "v2"
    assert kserve_workload().container["ports"][0]["containerPort"] == 8000
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    assert isvc["metadata"]["annotations"]["prometheus.kserve.io/path"] == "/metrics"
    assert predictor["scaleMetric"] == "cpu" and 0 < predictor["scaleTarget"] <= 100
    assert not set(predictor) & {"storageUri", "model"}, "the weights are baked into the image"


# ---------------------------------------------------------------------------------------------
# Prometheus


def test_scrape_config_matches_the_pod_annotations(routes: set[str]) -> None:
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    pods = [job for job in jobs.values() if any(sd.get("role") == "pod" for sd in job.get("kubernetes_sd_configs", []))]
    assert len(pods) == 1
    relabel = pods[0]["relabel_configs"]
    keep = [
        r for r in relabel if r.get("action") == "keep" and r["source_labels"] == ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"]
    ]
    assert keep and keep[0]["regex"] == deployment_workload().annotations["prometheus.io/scrape"]
    # every annotation the config reads is one the pods set (Prometheus maps "prometheus.io/x" to "prometheus_io_x")
    set_on_pods = {re.sub(r"[^a-zA-Z0-9_]", "_", key) for key in deployment_workload().annotations}
    read = {
        label.removeprefix("__meta_kubernetes_pod_annotation_")
        for r in relabel
        for label in r.get("source_labels", [])
        if label.startswith("__meta_kubernetes_pod_annotation_")
    }
    assert read <= set_on_pods, f"the scrape config reads annotations the pods do not set: {read - set_on_pods}"
    for job in jobs.values():
        assert job.get("metrics_path", "/metrics") in routes


# ---------------------------------------------------------------------------------------------
# Structural validation against the Kubernetes OpenAPI schemas (offline, strict: unknown fields fail)


@pytest.mark.parametrize("version", ["1.28.0", "1.37.0"])
def test_manifests_validate_against_kubernetes_schemas(version: str) -> None:
    import kubernetes_validate  # a dev dependency: a missing one fails, it does not skip

    for path, doc in k8s_manifests():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.relative_to(ROOT)} is not a valid Kubernetes {version} object: {exc.message}")
    # the InferenceService's predictor is a PodSpec plus KServe's component fields
    pod_spec = {k: v for k, v in kserve_workload().pod.items() if k not in KSERVE_COMPONENT_KEYS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"}, "spec": pod_spec}
    try:
        kubernetes_validate.validate(pod, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"the InferenceService predictor is not a valid PodSpec: {exc.message}")
