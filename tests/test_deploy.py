"""``kd-deploy``: the Kubernetes manifests for a really exported repository, checked offline.

Every rendered built-in object is validated against the Kubernetes JSON schemas that ``kubernetes-validate``
bundles (strict: unknown fields fail), the custom resources (KServe's InferenceService, the Prometheus Operator's
ServiceMonitor) against their CRDs' schemas (tests/deploy_schemas/, trimmed from upstream by trim_crd.py). The
Kustomize overlays are built by a small strategic-merge of this test and, where ``kubectl`` is installed, by
``kubectl kustomize`` too, and the two must agree. The probe's command must be installed by the image the
manifests name (docker/Dockerfile.server), the server's flags must be serving/flags.py's, the model names and
repository path those of the export, the autoscaler's rule Triton's own. Bad inputs must give a clear error and
leave the output as it was.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from client.health import build_parser as health_parser
from deploy import manifests as m
from deploy.capacity import (
    SPARE_REPLICAS,
    best_point,
    default_queue_target_us,
    load_bench,
    replicas_needed,
    resolve,
)
from deploy.cli import build_parser, main
from deploy.config import DEFAULT_IMAGE, HOT_MODEL_QUEUE_US, NGC_IMAGE, DeployConfig
from deploy.render import KUSTOMIZATION, MARKER, PATCH_FILE, deploy, render
from deploy.repository import DeployError, read_repository
from export.repository import ExportResult
from kdcore.manifest import discover
from serving.embedded import TritonServer
from serving.flags import HARDENED_FLAGS

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = Path(__file__).with_name("deploy_schemas")
#: Kubernetes releases to validate against: an old one still common in clusters and the newest bundled.
K8S_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
#: Custom resources: apiVersion -> the trimmed CRD schema.
CRD_SCHEMAS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "inferenceservice.v1beta1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.v1.json",
}
#: The issue's rule, typed here as the specification the generator is held to.
TRITON_RULE = ("avg(delta(nv_inference_queue_duration_us{<<.LabelMatchers>>}[30s]) / "
               "(1 + delta(nv_inference_request_success{<<.LabelMatchers>>}[30s]))) by (<<.GroupBy>>)")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
#: The Prometheus adapter's Helm values: YAML, but not a Kubernetes object.
VALUES = "prometheus-adapter-values.yaml"

#: The variants rendered: option overrides on top of ``--repository`` and ``--output``.
VARIANTS: dict[str, dict[str, Any]] = {
    "pvc": {},
    "pvc_written_gpu": {"storage": {"pvc": "line3-repo", "pvc_size": "5Gi", "storage_class": "nfs"},
                        "accelerator": "gpu", "resources": {"gpus": 2}},
    "s3": {"storage": {"repository_url": "s3://minio.example:9000/models/line3", "storage_secret": "s3-creds"},
           "network": {"client_namespaces": "line3,qa"}},
    "gs": {"storage": {"repository_url": "gs://bucket/line3/repo"}, "accelerator": "gpu"},
    "fixed": {"autoscaling": {"hpa": False, "replicas": 3}, "name": "line3", "namespace": "factory"},
}


# ------------------------------------------------------------------------------------------------ helpers
def _config(repository: Path, output: Path, **overrides: Any) -> DeployConfig:
    return DeployConfig.model_validate({"repository": repository, "output": output, **overrides})


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def _merge(base: dict, patch: dict) -> None:
    """Strategic merge as Kubernetes does it for the fields our patches touch: maps recursively, lists of
    containers, volumes, env and mounts by ``name``, other lists replaced."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        elif isinstance(value, list) and isinstance(base.get(key), list) \
                and all(isinstance(v, dict) and "name" in v for v in value + base[key]):
            for item in value:
                same = [b for b in base[key] if b["name"] == item["name"]]
                if same:
                    _merge(same[0], item)
                else:
                    base[key].append(copy.deepcopy(item))
        else:
            base[key] = copy.deepcopy(value)


def build(folder: Path) -> list[dict]:
    """``kustomize build`` of our trees: resources (files and folders), then each patch on its target.

    Asserts every resource and patch file exists and every patch meets an object.
    """
    kustomization = yaml.safe_load((folder / KUSTOMIZATION).read_text(encoding="utf-8"))
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    objects: list[dict] = []
    for resource in kustomization["resources"]:
        path = folder / resource
        assert path.exists(), f"{folder / KUSTOMIZATION} lists {resource}, which does not exist"
        objects += build(path) if path.is_dir() else _docs(path)
    for patch in kustomization.get("patches", []):
        path = folder / patch["path"]
        assert path.is_file(), f"{folder / KUSTOMIZATION} patches with {patch['path']}, which does not exist"
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        target = patch.get("target", {})
        kind, name = target.get("kind", doc["kind"]), target.get("name", doc["metadata"]["name"])
        assert (doc["kind"], doc["metadata"]["name"]) == (kind, name)
        hits = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
        assert hits, f"{path} patches {kind}/{name}, which {folder} does not have"
        for obj in hits:
            _merge(obj, {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")})
    return objects


def _by_kind(objects: list[dict]) -> dict[str, dict]:
    return {o["kind"]: o for o in objects}


def _containers(pod_spec: dict) -> list[dict]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def repository(exported: ExportResult) -> Path:
    """The really exported repository (RD4AD and every other image detector)."""
    return exported.repository


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def tree(request: pytest.FixtureRequest, repository: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """``(variant, config, output folder)`` for each variant, written by :func:`deploy.render.deploy`."""
    output = tmp_path_factory.mktemp(f"deploy_{request.param}") / "out"
    config = _config(repository, output, **VARIANTS[request.param])
    deploy(config)
    return request.param, config, output


# ------------------------------------------------------------------------------------------------ schemas
def test_every_built_in_object_validates_against_the_kubernetes_schemas(tree: tuple) -> None:
    _, _, output = tree
    built = [o for overlay in ("cpu", "gpu") for o in build(output / "overlays" / overlay)]
    # Every object file (not the kustomizations, the overlays' partial patches or the adapter's Helm values).
    plain = [d for path in sorted(output.rglob("*.yaml")) if path.name not in (KUSTOMIZATION, PATCH_FILE, VALUES)
             for d in _docs(path)]
    checked = 0
    for obj in [*plain, *built]:
        if (obj["apiVersion"], obj["kind"]) in CRD_SCHEMAS:
            continue
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)
        assert DNS_LABEL.match(obj["metadata"]["name"]) and DNS_LABEL.match(obj["metadata"]["namespace"])
        checked += 1
    kinds = {o["kind"] for o in plain}
    assert {"Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy", "ServiceAccount", "ConfigMap"} <= kinds
    assert checked >= 2 * 6


def test_the_validator_rejects_what_the_cluster_would(tree: tuple) -> None:
    """The schema check itself: a misspelt field and a wrong type fail."""
    _, _, output = tree
    deployment = _by_kind(build(output / "overlays" / "gpu"))["Deployment"]
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_custom_resources_match_their_crd_schemas(tree: tuple) -> None:
    _, config, output = tree
    found = {}
    for path in sorted(output.rglob("*.yaml")):
        for doc in _docs(path):
            key = (doc.get("apiVersion"), doc.get("kind"))
            if key in CRD_SCHEMAS:
                schema = json.loads((SCHEMAS / CRD_SCHEMAS[key]).read_text(encoding="utf-8"))
                jsonschema.Draft7Validator.check_schema(schema)
                errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
                          for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
                assert not errors, f"{path}: {errors}"
                assert DNS_LABEL.match(doc["metadata"]["name"]) and doc["metadata"]["namespace"] == config.namespace
                found[key[1]] = doc
                # and the schema is strict: a field the CRD lacks fails
                bad = copy.deepcopy(doc)
                bad["spec"]["predictr" if key[1] == "InferenceService" else "endpoint"] = {}
                assert list(jsonschema.Draft7Validator(schema).iter_errors(bad))
    assert set(found) == {"InferenceService", "ServiceMonitor"}
    predictor = found["InferenceService"]["spec"]["predictor"]
    model = predictor["model"]
    assert model["modelFormat"] == {"name": "triton"} and model["protocolVersion"] == "v2"
    assert model["runtime"] == "kserve-tritonserver"
    assert model["storageUri"] == (config.storage.repository_url or f"pvc://{config.claim}")
    gpus = model["resources"]["limits"].get(m.GPU_RESOURCE)
    assert gpus == (config.resources.gpus if config.accelerator.value == "gpu" else None)
    endpoint = found["ServiceMonitor"]["spec"]["endpoints"][0]
    assert endpoint["port"] == "metrics" and endpoint["interval"] == "15s"


# ------------------------------------------------------------------------------------------------ kustomize
def test_kustomizations_reference_files_that_exist_and_patch_objects_that_exist(tree: tuple) -> None:
    _, config, output = tree
    folders = sorted(p.parent for p in output.rglob(KUSTOMIZATION))
    assert [f.relative_to(output).as_posix() for f in folders] == [
        "base", "kserve", "monitoring", "overlays/cpu", "overlays/gpu"]
    for folder in folders:
        build(folder)  # asserts every resource and patch exists and meets its target
    gpu = _by_kind(build(output / "overlays" / "gpu"))["Deployment"]["spec"]["template"]["spec"]
    cpu = _by_kind(build(output / "overlays" / "cpu"))["Deployment"]["spec"]["template"]["spec"]
    triton = next(c for c in gpu["containers"] if c["name"] == m.CONTAINER)
    assert triton["resources"]["limits"][m.GPU_RESOURCE] == config.resources.gpus
    assert {"cpu", "memory"} <= set(triton["resources"]["limits"]) and triton["image"] == config.image
    assert gpu["nodeSelector"] == {m.GPU_NODE_LABEL: "true"}
    assert gpu["tolerations"] == [{"key": m.GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    assert "affinity" not in gpu and "nodeSelector" not in cpu
    assert m.GPU_RESOURCE not in next(c for c in cpu["containers"] if c["name"] == m.CONTAINER)["resources"]["limits"]
    assert next(c for c in cpu["containers"] if c["name"] == m.CONTAINER)["image"] == triton["image"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed: the test's own merge is used")
def test_kubectl_kustomize_builds_the_same_objects(tree: tuple) -> None:
    _, _, output = tree
    for folder in ("overlays/cpu", "overlays/gpu", "kserve", "monitoring"):
        done = subprocess.run(["kubectl", "kustomize", str(output / folder)], capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stderr
        theirs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(done.stdout) if o}
        ours = {(o["kind"], o["metadata"]["name"]): o for o in build(output / folder)}
        assert theirs == ours


# ------------------------------------------------------------------------------------------------ the image
def test_the_probe_command_is_installed_by_the_image_the_manifests_name(tree: tuple) -> None:
    """kd-health is an entry point of the project; docker/Dockerfile.server is FROM the NGC image and pip-installs
    the project (its base install carries the client), and the default image is the tag that Dockerfile's
    build line gives."""
    _, config, output = tree
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"][m.HEALTH_COMMAND] == "client.health:main"
    assert any(p.startswith("client") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"])
    dockerfile = (ROOT / "docker" / "Dockerfile.server").read_text(encoding="utf-8")
    assert re.search(rf"^FROM {re.escape(NGC_IMAGE)}$", dockerfile, re.M)
    copied = re.search(r"^COPY \. (\S+)$", dockerfile, re.M).group(1)
    install = re.search(r"^RUN python3 -m pip install [^\n]*?(\S+)( &&|$)", dockerfile, re.M)
    assert install and install.group(1) == copied, "the image must pip-install the project it copied"
    assert f"-t {DEFAULT_IMAGE} " in dockerfile, "the default image is the tag docker/Dockerfile.server documents"
    assert re.search(r"^USER triton-server$", dockerfile, re.M)
    # The image's own entry point finds tritonserver on PATH: the Deployment's command relies on the same.
    assert '"-m", "serving.flags"' in dockerfile and "shutil.which(\"tritonserver\")" in \
        (ROOT / "serving" / "flags.py").read_text(encoding="utf-8")

    pods = [_by_kind(build(output / "overlays" / o))["Deployment"]["spec"]["template"]["spec"] for o in ("cpu", "gpu")]
    isvc = _docs(output / "kserve" / "inferenceservice.yaml")[0]["spec"]["predictor"]["model"]
    for pod in pods:
        triton = next(c for c in pod["containers"] if c["name"] == m.CONTAINER)
        assert triton["image"] == config.image
        command = triton["livenessProbe"]["exec"]["command"]
        assert command[0] == m.HEALTH_COMMAND
        args = health_parser().parse_args(command[1:])  # kd-health's own parser accepts them
        assert args.protocol == "http" and args.url == f"127.0.0.1:{m.HTTP_PORT}"
        mounted = {vm["mountPath"] for vm in triton["volumeMounts"]}
        assert str(args.repository) in mounted, "the probe reads samples from a mounted volume"
        assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
        assert triton["startupProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    command = isvc["livenessProbe"]["exec"]["command"]
    args = health_parser().parse_args(command[1:])
    assert command[0] == m.HEALTH_COMMAND and isvc["image"] == config.image
    assert str(args.repository) == m.KSERVE_MOUNT and args.url == f"127.0.0.1:{m.KSERVE_HTTP_PORT}"


def test_the_rendered_probes_pass_against_the_real_server(repository: Path, server: TritonServer,
                                                          tmp_path: Path) -> None:
    """The Deployment's probes run as written against the real tritonserver serving the exported repository: the
    readiness path answers 200 and the liveness command (only its URL and mount path mapped to this machine) does a
    real inference through every detector and says HEALTHY; pointed at a port nothing serves, it fails."""
    output = tmp_path / "out"
    deploy(_config(repository, output))
    pod = _by_kind(build(output / "overlays" / "cpu"))["Deployment"]["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c["name"] == m.CONTAINER)
    ready = triton["readinessProbe"]["httpGet"]
    with urllib.request.urlopen(f"http://{server.http_url}{ready['path']}", timeout=10) as reply:  # noqa: S310
        assert reply.status == 200
    local = {f"127.0.0.1:{m.HTTP_PORT}": server.http_url, m.MODELS_MOUNT: str(repository)}
    command = [local.get(a, a) for a in triton["livenessProbe"]["exec"]["command"]]
    assert command[0] == m.HEALTH_COMMAND and server.http_url in command and str(repository) in command
    probe = [sys.executable, "-m", "client.health", *command[1:]]
    done = subprocess.run(probe, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0 and "HEALTHY" in done.stdout, done.stdout + done.stderr
    named = [command[i + 1] for i, a in enumerate(command) if a == "--model"]
    assert sorted(named) == sorted(discover(repository))  # every detector is probed
    with socket.socket() as s:  # a port nothing listens on: the probe fails, so the pod would be restarted
        s.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{s.getsockname()[1]}"
    down = subprocess.run([dead if a == server.http_url else a for a in probe], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert down.returncode == 1 and "UNHEALTHY" in down.stdout + down.stderr


def test_nvidia_s_own_image_is_refused_for_lack_of_the_probe(repository: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture) -> None:
    code = main(["--repository", str(repository), "--output", str(tmp_path / "out"), "--image", NGC_IMAGE])
    assert code == 2 and "kd-health" in capsys.readouterr().err and not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------------ contents
def test_the_server_runs_serving_flags_hardened_flags_and_no_model_control(tree: tuple) -> None:
    _, config, output = tree
    pod = _by_kind(build(output / "overlays" / "gpu"))["Deployment"]["spec"]["template"]["spec"]
    args = next(c for c in pod["containers"] if c["name"] == m.CONTAINER)["args"]
    assert args[:len(HARDENED_FLAGS)] == list(HARDENED_FLAGS)
    assert "--model-control-mode=none" in args and not any(a.startswith("--model-control-mode=e") for a in args)
    isvc = _docs(output / "kserve" / "inferenceservice.yaml")[0]["spec"]["predictor"]["model"]
    assert isvc["args"][:len(HARDENED_FLAGS)] == list(HARDENED_FLAGS) and "--model-control-mode=none" in isvc["args"]
    # One source: no flag of the list is typed in deploy/'s code (prose may name them).
    for path in sorted((ROOT / "deploy").glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        prose = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
        literals = [n.value for n in ast.walk(tree)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in prose]
        typed = [f for f in HARDENED_FLAGS if any(f.split("=")[0] in text for text in literals)]
        assert not typed, f"{path.name} retypes {typed}: import serving.flags.HARDENED_FLAGS"


def test_model_names_and_repository_path_are_the_export_s(tree: tuple, repository: Path) -> None:
    _, config, output = tree
    detectors = discover(repository)
    assert detectors == sorted(read_repository(repository).detectors) and len(detectors) >= 2
    deployment = _docs(output / "base" / "deployment.yaml")[0]
    pod = deployment["spec"]["template"]["spec"]
    triton = next(c for c in pod["containers"] if c["name"] == m.CONTAINER)
    probe = health_parser().parse_args(triton["livenessProbe"]["exec"]["command"][1:])
    assert probe.model == detectors
    for notes in (deployment["metadata"]["annotations"], deployment["spec"]["template"]["metadata"]["annotations"]):
        assert notes[m.DETECTORS_ANNOTATION].split(",") == detectors
    flags = dict(a.split("=", 1) for a in triton["args"] if a.startswith("--model-repository"))
    init = pod["initContainers"][0]["command"][-1]
    if config.storage.repository_url:
        assert flags["--model-repository"] == config.storage.repository_url
        assert str(probe.repository) == m.SAMPLES_MOUNT
        for detector in detectors:  # each detector's samples are fetched and checked
            assert f"{m.SAMPLES_MOUNT}/{detector}/validation" in init
            assert f"/{detector}/validation" in init.split("\n")[2 * detectors.index(detector) + 1]
        tool = "aws s3 cp" if config.storage.scheme == "s3" else "gcloud storage cp"
        assert init.count(tool) == len(detectors)
        if config.storage.scheme == "s3":  # the CLI gets the bucket path, the endpoint comes from the secret
            assert "s3://models/line3/" in init and "minio.example" not in init
            assert pod["initContainers"][0]["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
            assert triton["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    else:
        assert flags["--model-repository"] == m.MODELS_MOUNT == str(probe.repository)
        claims = [v["persistentVolumeClaim"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
        assert claims == [{"claimName": config.claim, "readOnly": True}]
        mounts = {vm["name"]: vm for vm in triton["volumeMounts"]}
        volume = next(v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v)
        assert mounts[volume]["mountPath"] == m.MODELS_MOUNT and mounts[volume]["readOnly"] is True
        for detector in detectors:
            assert f"test -f {m.MODELS_MOUNT}/{detector}/validation/manifest.json" in init
        # The init check really fails, naming the detector, on a volume without it (run here with sh).
        fake = output.parent / "fake_models"
        shutil.copytree(repository / detectors[0] / "validation", fake / detectors[0] / "validation")
        script = init.replace(m.MODELS_MOUNT, str(fake))
        done = subprocess.run(["/bin/sh", "-ec", script], capture_output=True, text=True, timeout=30)
        assert done.returncode == 1 and detectors[1] in done.stderr
        shutil.copytree(repository, fake, dirs_exist_ok=True)
        assert subprocess.run(["/bin/sh", "-ec", script], timeout=30).returncode == 0
    written = json.loads((output / MARKER).read_text(encoding="utf-8"))
    models = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
    assert written["detectors"] == detectors and written["models"] == models
    pvc = output / "base" / "pvc.yaml"
    assert pvc.exists() == bool(config.storage.pvc_size)
    if pvc.exists():
        claim = _docs(pvc)[0]
        assert claim["metadata"]["name"] == config.claim == "line3-repo"
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"] and claim["spec"]["storageClassName"] == "nfs"


def test_the_autoscaler_uses_triton_s_queue_time_rule(tree: tuple, repository: Path) -> None:
    _, config, output = tree
    values = yaml.safe_load((output / "monitoring" / VALUES).read_text(encoding="utf-8"))
    config_map = _docs(output / "monitoring" / "prometheus-adapter-config.yaml")[0]
    assert config_map["metadata"]["namespace"] == config.network.monitoring_namespace
    for rules in (values["rules"]["custom"], yaml.safe_load(config_map["data"]["config.yaml"])["rules"]):
        (rule,) = rules
        assert rule["metricsQuery"] == TRITON_RULE
        assert rule["name"] == {"matches": "nv_inference_queue_duration_us", "as": "avg_time_queue_us"}
        assert rule["seriesQuery"] == f'nv_inference_queue_duration_us{{namespace="{config.namespace}",pod!=""}}'
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    hpa_file = output / "base" / "hpa.yaml"
    kustomization = yaml.safe_load((output / "base" / KUSTOMIZATION).read_text(encoding="utf-8"))
    deployment = _docs(output / "base" / "deployment.yaml")[0]
    if not config.autoscaling.hpa:
        assert not hpa_file.exists() and "hpa.yaml" not in kustomization["resources"]
        assert deployment["spec"]["replicas"] == config.autoscaling.replicas
        return
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    hpa = _docs(hpa_file)[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": config.name}
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["metric"] == {"name": "avg_time_queue_us"}
    models = len(list(repository.glob("*/config.pbtxt")))
    assert metric["pods"]["target"] == {"type": "AverageValue",
                                        "averageValue": str(round(HOT_MODEL_QUEUE_US / models))}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 4)
    # Prometheus scrapes 8002 often enough for the rule's 30 s window, by ServiceMonitor or annotation.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8002"


def test_service_pdb_and_network_policy(tree: tuple) -> None:
    _, config, output = tree
    objects = _by_kind(build(output / "base"))
    selector = objects["Deployment"]["spec"]["selector"]["matchLabels"]
    assert objects["Deployment"]["spec"]["template"]["metadata"]["labels"].items() >= selector.items()
    service = objects["Service"]["spec"]
    assert service["selector"] == selector
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["ports"]} == {
        ("http", 8000, "http"), ("grpc", 8001, "grpc"), ("metrics", 8002, "metrics")}
    container = objects["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    pdb = objects["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"] == selector and pdb["maxUnavailable"] == 1
    policy = objects["NetworkPolicy"]["spec"]
    assert policy["podSelector"]["matchLabels"] == selector and policy["policyTypes"] == ["Ingress"]
    by_port = {p["port"]: rule for rule in policy["ingress"] for p in rule["ports"]}
    assert set(by_port) == {8000, 8001, 8002}
    clients, metrics = by_port[8000], by_port[8002]
    assert by_port[8001] is clients and 8002 not in {p["port"] for p in clients["ports"]}
    if config.network.clients:
        (source,) = clients["from"]
        assert source["namespaceSelector"]["matchExpressions"][0]["values"] == config.network.clients
    else:
        assert "from" not in clients  # camera PCs outside the cluster
    (source,) = metrics["from"]
    assert source == {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                      "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}


def test_every_container_runs_non_root_and_locked_down(tree: tuple) -> None:
    _, _, output = tree
    pods = [_by_kind(build(output / "overlays" / o))["Deployment"]["spec"]["template"]["spec"] for o in ("cpu", "gpu")]
    isvc = _docs(output / "kserve" / "inferenceservice.yaml")[0]["spec"]["predictor"]
    for pod in [*pods, isvc]:
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 1000
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in (_containers(pod) if "containers" in pod else [pod["model"]]):
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
            assert {"requests", "limits"} <= set(container["resources"])
        volumes = {v["name"]: v for v in pod["volumes"]}
        assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    for pod in pods:
        assert pod["automountServiceAccountToken"] is False


# ------------------------------------------------------------------------------------------------ capacity
def _bench(detectors: list[str], cpus: int = 4) -> dict:
    """A kd-bench JSON of the shape bench/serving.py writes: the i-th detector 1/(i+1) as fast as the first."""
    def timing(ips: float, p99: float) -> dict:
        return {"images_per_second": ips, "p50_ms": p99 / 2, "p95_ms": p99 * 0.9, "p99_ms": p99, "requests": 100,
                "failures": 0}

    results = []
    for i, detector in enumerate(detectors):
        f = 1 / (i + 1)
        runs = {"1": timing(100 * f, 12 / f), "2": timing(160 * f, 15 / f), "4": timing(200 * f, 30 / f),
                "8": timing(210 * f, 60 / f), "b8": timing(400 * f, 90 / f), "b8_shm": timing(900 * f, 10 / f),
                "c4_ensemble": timing(999 * f, 1 / f)}
        results.append({"model": detector, "method": "rd4ad", "score_model": f"{detector}_x", "batch": 8,
                        "batched_concurrency": 4, "served": {"grpc": runs, "http": runs}})
    return {"machine": {"cpus": cpus, "arch": "x86_64"}, "server_rss_bytes": 3 * 2**30, "seconds": 3.0,
            "rounds": 3, "results": results}


def test_bench_figures_size_the_pods_and_the_replicas(repository: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    detectors = discover(repository)
    bench = tmp_path / "serving.json"
    bench.write_text(json.dumps(_bench(detectors)), encoding="utf-8")
    figures = load_bench(bench)
    # Shared memory needs the client on the server's host, and the ensemble is another path: neither counts.
    assert {(p.concurrency, p.batch) for p in figures.points[detectors[0]] if p.protocol == "grpc"} == {
        (1, 1), (2, 1), (4, 1), (8, 1), (4, 8)}
    assert best_point(figures.points[detectors[0]], "grpc", None).images_per_second == 400
    assert best_point(figures.points[detectors[0]], "grpc", 40).images_per_second == 200
    with pytest.raises(DeployError, match="no operating point .* within 5 ms"):
        best_point(figures.points[detectors[0]], "grpc", 5)
    assert replicas_needed(1000, 400) == 3 and replicas_needed(800, 400) == 2

    output = tmp_path / "out"
    code = main(["--repository", str(repository), "--output", str(output), "--bench", str(bench),
                 "--line-rate", "300", "--latency-budget-ms", "150"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    printed = captured.out
    # The slowest detector sizes it: the last one, at 1/n of the first's figures, within the budget.
    slowest = len(detectors) - 1
    f = 1 / len(detectors)
    budget_points = [(ips, p99) for ips, p99 in ((100 * f, 12 / f), (160 * f, 15 / f), (200 * f, 30 / f),
                                                 (210 * f, 60 / f), (400 * f, 90 / f)) if p99 <= 150]
    per_replica = max(budget_points)[0]
    needed = replicas_needed(300, per_replica)
    assert f"needs {needed} replica(s)" in printed and detectors[slowest] in printed
    hpa = _docs(output / "base" / "hpa.yaml")[0]["spec"]
    assert hpa["minReplicas"] == needed + SPARE_REPLICAS and hpa["maxReplicas"] == max(4, 2 * (needed + SPARE_REPLICAS))
    resources = _docs(output / "base" / "deployment.yaml")[0]["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources["requests"] == {"cpu": "4", "memory": "3840Mi"}  # the bench's cores; 1.25 x 3 GiB
    assert resources["limits"] == {"cpu": "4", "memory": "5888Mi"}    # 1.5 x the request, in 256 MiB steps
    # What kd-deploy reads is what kd-bench writes.
    source = (ROOT / "bench" / "serving.py").read_text(encoding="utf-8")
    for key in ('"served"', '"score_model"', '"batched_concurrency"', '"server_rss_bytes"', '"machine"', '"cpus"',
                '"model"', '"results"'):
        assert key in source


def test_capacity_errors_name_the_problem(repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bench = tmp_path / "other.json"
    bench.write_text(json.dumps(_bench(["someone_else"])), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["--repository", str(repository), "--output", str(out), "--bench", str(bench)]) == 1
    assert "has no figures for" in capsys.readouterr().err and not out.exists()
    (tmp_path / "junk.json").write_text("{}", encoding="utf-8")
    assert main(["--repository", str(repository), "--output", str(out), "--bench", str(tmp_path / "junk.json")]) == 1
    assert "is not kd-bench's JSON" in capsys.readouterr().err and not out.exists()
    assert main(["--repository", str(repository), "--output", str(out), "--line-rate", "100"]) == 2
    assert "--line-rate needs --bench or --images-per-replica" in capsys.readouterr().err
    assert main(["--repository", str(repository), "--output", str(out), "--images-per-replica", "50",
                 "--line-rate", "1000", "--max-replicas", "10"]) == 1
    assert "cannot carry 1000 images/s: it needs 20" in capsys.readouterr().err and not out.exists()
    config = _config(repository, out, capacity={"images_per_replica": 50, "line_rate": 120})
    resolved = resolve(config, read_repository(repository))
    assert (resolved.replicas_needed, resolved.min_replicas) == (3, 3 + SPARE_REPLICAS)
    assert default_queue_target_us(10) == HOT_MODEL_QUEUE_US // 10 and default_queue_target_us(0) == HOT_MODEL_QUEUE_US


# ------------------------------------------------------------------------------------------------ errors
def test_unknown_or_empty_repositories_give_a_clear_error_and_write_nothing(
        repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    assert main(["--repository", str(tmp_path / "nowhere"), "--output", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty_repo"
    (empty / "some_model" / "1").mkdir(parents=True)
    (empty / "some_model" / "config.pbtxt").write_text('name: "some_model"\n', encoding="utf-8")
    assert main(["--repository", str(empty), "--output", str(out)]) == 1
    assert "holds no exported detector" in capsys.readouterr().err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["empty_repo"]

    # A manifest that names a model the repository lacks.
    broken = tmp_path / "broken_repo"
    shutil.copytree(repository, broken)
    victim = read_repository(broken).manifests[0].networks[0]
    shutil.rmtree(broken / victim)
    assert main(["--repository", str(broken), "--output", str(out)]) == 1
    assert victim in capsys.readouterr().err and not out.exists()

    # A previous tree survives a failed run whole; a good run replaces it whole; no staging folder is left.
    assert main(["--repository", str(repository), "--output", str(out), "--name", "first"]) == 0
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["--repository", str(empty), "--output", str(out), "--name", "second"]) == 1
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(["--repository", str(repository), "--output", str(out), "--name", "second", "--no-hpa"]) == 0
    assert not (out / "base" / "hpa.yaml").exists() and "name: second" in (out / "base" / "service.yaml").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken_repo", "empty_repo", "out"]

    # A folder kd-deploy did not write is never replaced.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep", encoding="utf-8")
    assert main(["--repository", str(repository), "--output", str(mine)]) == 1
    assert "did not write" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep"


def test_bad_options_are_refused_before_anything_is_read(repository: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "out"
    cases = [
        (["--name", "Bad_Name"], "--name"),
        (["--repository-url", "http://bucket/x"], "--repository-url"),
        (["--pvc", "claim", "--repository-url", "s3://b/p"], "not both"),
        (["--memory-request", "4GB"], "--memory-request"),
        (["--min-replicas", "5", "--max-replicas", "3"], "exceeds"),
        (["--prometheus-labels", "novalue"], "--prometheus-labels"),
    ]
    for args, message in cases:
        assert main(["--repository", str(repository), "--output", str(out), *args]) == 2, args
        assert message in capsys.readouterr().err, args
    assert not out.exists()


def test_help_explains_every_option() -> None:
    parser = build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert len(options) >= 30
    for action in options:
        assert action.help and len(action.help) > 15, action.option_strings
    text = parser.format_help()
    for word in ("--bench", "--line-rate", "--latency-budget-ms", "--queue-target-us", "--repository-url", "--pvc",
                 "--no-hpa", "--accelerator", "--gpus", "--client-namespaces"):
        assert word in text


def test_render_is_pure_and_deterministic(repository: Path, tmp_path: Path) -> None:
    config = _config(repository, tmp_path / "never")
    first, second = render(config), render(config)
    assert first.files == second.files and not (tmp_path / "never").exists()


def test_deploy_imports_only_the_core_and_serving_flags() -> None:
    """deploy/ needs the torch-free core, serving/flags.py (standard library only), pydantic and PyYAML: a machine
    that writes manifests installs the base and the ``deploy`` extra, nothing of training or the server."""
    project = {"kdcore", "training", "export", "serving", "client", "console", "bench", "deploy"}
    wrong = []
    for path in sorted((ROOT / "deploy").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                allowed = (top in {"kdcore", "deploy"} or name == "serving.flags" or top in {"pydantic", "yaml"}
                           or top in sys.stdlib_module_names)
                if not allowed or (top in project and top not in {"kdcore", "deploy", "serving"}):
                    wrong.append(f"{path.name}: {name}")
    assert not wrong, wrong
