"""k8s/: every overlay renders, passes kubeconform's strict validation offline, and agrees with
the code: probe ports and paths with the admin settings, every DUALSTREAM_* variable with the
settings (and the README's table), the app's target with the sidecar's listen address, the
security context with the image's user."""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

import pytest

from dualstream.health_check import reachable_address
from dualstream.probes import LIVENESS_PATH, METRICS_PATH, READINESS_PATH
from dualstream.settings import ENV_PREFIX, Settings, env_name, split_host_port
from stack.localstack import REPO_ROOT
from tests.k8s_manifests import (
    K8S_DIR,
    KUBERNETES_VERSIONS,
    OVERLAYS,
    documents,
    kubeconform,
    of_kind,
    render,
)

SIDECAR = "dualstream"
# What the app reads to find the sidecar (the client quickstarts in the README use it), and,
# with a delivery process, to find its streams.
APP_TARGET_VARIABLE = "DUALSTREAM_TARGET"
APP_SUBSCRIBE_TARGET_VARIABLE = "DUALSTREAM_SUBSCRIBE_TARGET"
KUSTOMIZATIONS = [K8S_DIR / "base", *(K8S_DIR / "overlays" / name for name in OVERLAYS)]


@pytest.fixture(scope="module", params=KUSTOMIZATIONS, ids=lambda path: path.name)
def rendered(request: pytest.FixtureRequest) -> str:
    text: str = render(request.param)
    return text


@pytest.mark.parametrize("kubernetes_version", KUBERNETES_VERSIONS)
def test_the_manifests_pass_kubeconform_strict(rendered: str, kubernetes_version: str) -> None:
    result = kubeconform(rendered, kubernetes_version)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Invalid: 0, Errors: 0, Skipped: 0" in result.stdout, result.stdout


def test_strict_validation_rejects_an_unknown_field() -> None:
    """The schemas are really applied: a misspelt field fails (a wrong schema path would pass
    nothing, and a lax one would pass this)."""
    rendered = render(K8S_DIR / "overlays" / "example")
    misspelt = rendered.replace(
        "restartPolicy: Always", "restartPolicy: Always\n        restartPolicyy: Always"
    )
    assert misspelt != rendered
    result = kubeconform(misspelt, KUBERNETES_VERSIONS[0])
    assert result.returncode != 0
    assert "restartPolicyy" in result.stdout


# ---- agreement with the code -----------------------------------------------------------------


class Pod:
    """The rendered Deployment's pod template, with the sidecar's effective environment."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        [deployment] = of_kind(docs, "Deployment")
        self.template = deployment["spec"]["template"]
        self.spec = self.template["spec"]
        [self.sidecar] = [c for c in self.spec["initContainers"] if c["name"] == SIDECAR]
        self.apps = self.spec["containers"]
        config_maps = {
            doc["metadata"]["name"]: doc.get("data", {}) for doc in of_kind(docs, "ConfigMap")
        }
        self.environment: dict[str, str] = {}
        for source in self.sidecar.get("envFrom", []):
            self.environment.update(config_maps[source["configMapRef"]["name"]])
        for variable in self.sidecar.get("env", []):
            assert "value" in variable, f"{variable['name']}: a literal value, checkable here"
            self.environment[variable["name"]] = variable["value"]
        self.settings = Settings.load(self.environment)

    def port(self, name_or_number: str | int) -> int:
        """A port number, or the number of a port named in any container of the pod."""
        if isinstance(name_or_number, int):
            return name_or_number
        [number] = [
            port["containerPort"]
            for container in [self.sidecar, *self.apps]
            for port in container.get("ports", [])
            if port.get("name") == name_or_number
        ]
        assert isinstance(number, int)
        return number


@pytest.fixture(scope="module")
def pod(rendered: str) -> Pod:
    return Pod(documents(rendered))


def readme_settings_variables() -> set[str]:
    readme = (REPO_ROOT / "README.md").read_text()
    return set(re.findall(r"`(DUALSTREAM_[A-Z0-9_]+)`", readme))


def test_every_sidecar_variable_is_a_setting_in_the_readme_table(pod: Pod) -> None:
    known = {env_name(spec.name) for spec in fields(Settings)}
    ours = {name for name in pod.environment if name.startswith(ENV_PREFIX)}
    assert ours, "the sidecar is configured by DUALSTREAM_* variables"
    assert ours <= known, f"not settings: {sorted(ours - known)}"
    assert ours <= readme_settings_variables(), "every setting used is in the README's table"


def test_the_sidecar_is_native_and_probed_on_the_admin_listener(pod: Pod) -> None:
    sidecar = pod.sidecar
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar (Kubernetes 1.29+)
    host, admin_port = split_host_port(pod.settings.admin_listen)
    assert host in ("0.0.0.0", "::"), "the kubelet probes the pod IP, not loopback"
    expected = {
        "startupProbe": READINESS_PATH,
        "readinessProbe": READINESS_PATH,
        "livenessProbe": LIVENESS_PATH,
    }
    for probe, path in expected.items():
        http = sidecar[probe]["httpGet"]
        assert (http["path"], pod.port(http["port"])) == (path, admin_port), probe
    annotations = pod.template["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == admin_port
    assert annotations["prometheus.io/path"] == METRICS_PATH


def test_the_api_is_private_to_the_pod_and_the_app_points_at_it(pod: Pod) -> None:
    listen, streams = pod.settings.listen, pod.settings.subscribe_listen
    for address in (listen, streams):
        if address and not address.startswith("unix:"):
            host, _ = split_host_port(address)
            assert host in ("127.0.0.1", "::1", "localhost"), "the API never listens on the pod IP"
    [app] = [c for c in pod.apps if any(v["name"] == APP_TARGET_VARIABLE for v in c.get("env", []))]
    variables = {v["name"]: v["value"] for v in app["env"]}
    assert variables[APP_TARGET_VARIABLE] == reachable_address(listen)
    if streams:
        assert variables[APP_SUBSCRIBE_TARGET_VARIABLE] == reachable_address(streams)
    else:
        assert APP_SUBSCRIBE_TARGET_VARIABLE not in variables
    if listen.startswith("unix:"):
        socket_dir = listen.removeprefix("unix:").rsplit("/", 1)[0]
        mounted = [
            {m["name"] for m in container.get("volumeMounts", []) if m["mountPath"] == socket_dir}
            for container in (pod.sidecar, app)
        ]
        assert mounted[0], "the socket's directory is a volume"
        assert mounted[0] == mounted[1], "one volume holds the socket for both containers"


def test_the_sidecar_runs_hardened_as_the_image_user(pod: Pod) -> None:
    [image_user] = re.findall(r"^USER (\d+):(\d+)$", (REPO_ROOT / "Dockerfile").read_text(), re.M)
    context = pod.sidecar["securityContext"]
    assert (str(context["runAsUser"]), str(context["runAsGroup"])) == image_user
    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod.spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    resources = pod.sidecar["resources"]
    assert {"cpu", "memory"} <= resources["requests"].keys()
    assert "memory" in resources["limits"]


def test_shutdown_fits_in_the_grace_period(pod: Pod) -> None:
    """After SIGTERM the sidecar drains calls for shutdown_grace, then flushes the producer for
    up to kafka_delivery_timeout; the kubelet must not kill it before."""
    drain = pod.settings.shutdown_grace + pod.settings.kafka_delivery_timeout
    assert pod.spec["terminationGracePeriodSeconds"] >= drain + 10


def test_the_network_policy_admits_the_admin_port_and_never_the_api(
    rendered: str, pod: Pod
) -> None:
    [policy] = of_kind(documents(rendered), "NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod.template["metadata"]["labels"].items()
    admitted = {
        pod.port(port["port"]) for rule in policy["spec"]["ingress"] for port in rule["ports"]
    }
    scraped = [pod.settings.admin_listen, pod.settings.delivery_admin_listen]
    assert {split_host_port(address)[1] for address in scraped if address} <= admitted
    for api in (pod.settings.listen, pod.settings.subscribe_listen):
        if api and not api.startswith("unix:"):
            assert split_host_port(api)[1] not in admitted
