"""deploy/kubernetes and deploy/kserve: schema-valid manifests that agree with the image and the service.

No cluster runs here: the core kinds are validated with kubernetes-validate (strict: unknown fields
fail); the KServe InferenceService with a pinned minimal schema whose predictor pod fields come
from the same Kubernetes PodSpec schema.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version, schema_contents
from referencing import Registry, Resource

from service.config import Settings

from tests.deploy.dockerfile_parsing import ROOT, dockerfile_stages, instruction

KUBERNETES = ROOT / "deploy" / "kubernetes"
KSERVE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
KSERVE_SCHEMA = Path(__file__).with_name("kserve-inferenceservice-v1beta1.schema.json")
MANIFESTS = sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
K8S_VERSION = latest_version()
IMAGE_UID = 10001


def documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def resources() -> dict[tuple[str, str], dict]:
    return {(doc["kind"], doc["metadata"]["name"]): doc for path in MANIFESTS for doc in documents(path)}


def pod_containers(workload: dict) -> list[dict]:
    return workload["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path):
    for doc in documents(path):
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{path.name}: {'.'.join(map(str, error.caught.path))}: {error.caught.message}")


def test_validation_rejects_a_misspelled_field():
    deployment = copy.deepcopy(resources()[("Deployment", "pixelserve")])
    pod_containers(deployment)[0]["readinessprobe"] = pod_containers(deployment)[0].pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kustomization_lists_every_manifest_except_the_gpu_variant():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"deployment-gpu.yaml"}


@pytest.mark.parametrize("name", ["pixelserve", "pixelserve-gpu"])
def test_deployment_probes_health_endpoints_and_runs_as_the_image_user(name):
    deployment = resources()[("Deployment", name)]
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    env = {item["name"]: item.get("value") for item in container.get("env", [])}
    assert ports["http"] == int(env["PIXELSERVE_PORT"])
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["readinessProbe"]["httpGet"]["port"] in ("http", ports["http"])
    assert {"requests", "limits"} <= set(container["resources"])
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == IMAGE_UID
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["envFrom"] == [{"configMapRef": {"name": "pixelserve-settings"}}]


def test_image_user_matches_the_manifests():
    useradd = " ".join(instruction(dockerfile_stages()["python-base"], "RUN"))
    assert f"--uid {IMAGE_UID}" in useradd


def test_gpu_variant_requests_an_nvidia_gpu():
    [container] = pod_containers(resources()[("Deployment", "pixelserve-gpu")])
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert container["image"].endswith("-gpu")


def test_service_reaches_both_deployments_whose_selectors_do_not_overlap():
    found = resources()
    service_selector = found[("Service", "pixelserve")]["spec"]["selector"]
    cpu, gpu = found[("Deployment", "pixelserve")], found[("Deployment", "pixelserve-gpu")]

    def selects(selector: dict, labels: dict) -> bool:
        return all(labels.get(key) == value for key, value in selector.items())

    for deployment in (cpu, gpu):
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
        assert selects(service_selector, labels)
    assert not selects(cpu["spec"]["selector"]["matchLabels"], gpu["spec"]["template"]["metadata"]["labels"])
    assert not selects(gpu["spec"]["selector"]["matchLabels"], cpu["spec"]["template"]["metadata"]["labels"])
    [port] = found[("Service", "pixelserve")]["spec"]["ports"]
    assert port["targetPort"] == "http"


def test_autoscaler_targets_the_cpu_deployment():
    target = resources()[("HorizontalPodAutoscaler", "pixelserve")]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "pixelserve")
    [container] = pod_containers(resources()[("Deployment", "pixelserve")])
    assert "cpu" in container["resources"]["requests"], "utilisation targets need a cpu request"


def test_configmap_holds_real_settings_at_their_defaults(monkeypatch):
    data = resources()[("ConfigMap", "pixelserve-settings")]["data"]
    fields = Settings.model_fields
    names = {key.removeprefix("PIXELSERVE_").lower() for key in data}
    assert all(key.startswith("PIXELSERVE_") for key in data)
    assert names <= set(fields), f"not settings: {names - set(fields)}"
    for key in list(os.environ):
        if key.startswith("PIXELSERVE_"):
            monkeypatch.delenv(key)
    defaults = Settings(_env_file=None)
    for key, value in data.items():
        monkeypatch.setenv(key, value)
    configured = Settings(_env_file=None)
    for name in names - {"model_repository", "providers"}:
        assert getattr(configured, name) == getattr(defaults, name), name
    assert str(configured.model_repository) == "/models"
    assert configured.providers == ["CPUExecutionProvider"], "the CPU image has no CUDA provider"
    [gpu] = pod_containers(resources()[("Deployment", "pixelserve-gpu")])
    assert {"name": "PIXELSERVE_PROVIDERS", "value": "cuda,cpu"} in gpu["env"]


# ---------------------------------------------------------------- KServe


def kserve_validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(KSERVE_SCHEMA.read_text())
    schema_dir = f"v{K8S_VERSION}-local-strict"
    pod_spec = schema_contents(f"kubernetes-json-schema/{schema_dir}/podspec-v1.json", K8S_VERSION)
    definitions = schema_contents(f"kubernetes-json-schema/{schema_dir}/_definitions.json", K8S_VERSION)
    properties = dict(pod_spec["properties"])
    properties.update(schema["x-predictor-extension"])
    properties.update({name: {"type": "object"} for name in schema["x-predictor-frameworks"]})
    # The PodSpec's $id, so that its relative references resolve into the Kubernetes definitions.
    schema["$defs"]["predictor"] = {
        "$id": pod_spec["$id"], "type": "object", "properties": properties, "additionalProperties": False,
    }
    registry = Resource.from_contents(definitions) @ Registry()
    return jsonschema.Draft202012Validator(schema, registry=registry)


def kserve_errors(document: dict) -> list[str]:
    return [f"{'.'.join(map(str, e.path))}: {e.message}" for e in kserve_validator().iter_errors(document)]


def test_kserve_inference_service_is_valid():
    [document] = documents(KSERVE)
    assert kserve_errors(document) == []


@pytest.mark.parametrize(
    "path, value",
    [
        (("spec", "predictor", "containers", 0, "readinessProbe", "httpGet", "port"), {"bad": 1}),
        (("spec", "predictor", "scaleMetric"), "latency"),
        (("spec", "predictor", "replicas"), 2),
    ],
    ids=["container field", "extension field", "unknown field"],
)
def test_kserve_schema_rejects_bad_fields(path, value):
    [document] = documents(KSERVE)
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert kserve_errors(document)


def test_kserve_predictor_runs_this_image_over_the_v2_protocol():
    [document] = documents(KSERVE)
    [container] = document["spec"]["predictor"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert container["name"] == "kserve-container"
    assert container["image"].startswith("pixelserve:")
    assert [port["containerPort"] for port in container["ports"]] == [int(env["PIXELSERVE_PORT"])]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["securityContext"]["runAsUser"] == IMAGE_UID
    settings_names = set(Settings.model_fields)
    assert {key.removeprefix("PIXELSERVE_").lower() for key in env} <= settings_names
