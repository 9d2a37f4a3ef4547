"""The Kubernetes objects of a deployment, as plain dicts ready for YAML.

Everything that must agree with the rest of the project comes from it: the server's flags from
:data:`serving.flags.HARDENED_FLAGS` (the embedded server and the Docker image run the same list), the detectors
from the exporter's manifests, the liveness check from ``kd-health`` (client/health.py, installed in the server image
by docker/Dockerfile.server). What Triton's own Kubernetes example (server repository, deploy/k8s-onprem) does,
this does too: ports 8000/8001/8002, readiness on ``/v2/health/ready``, a HorizontalPodAutoscaler on the Pods metric
``avg_time_queue_us`` served by the Prometheus adapter with :data:`QUEUE_TIME_RULE`.
"""

from __future__ import annotations

import shlex
from typing import Any

from deploy.capacity import Resolved
from deploy.config import SYNC_IMAGES, Accelerator, DeployConfig
from deploy.repository import RepositoryInfo
from kdcore.manifest import MANIFEST_FILE, VALIDATION_DIR
from serving.flags import HARDENED_FLAGS

Obj = dict[str, Any]

#: Triton's ports (its defaults, and those of its Kubernetes example and the NGC image's EXPOSE).
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
#: KServe's Triton runtime serves HTTP here (its ClusterServingRuntime's ``--http-port``).
KSERVE_HTTP_PORT = 8080
#: Where the pods see the repository (a claim), the liveness probe's samples (object storage) and KServe's copy.
MODELS_MOUNT, SAMPLES_MOUNT, KSERVE_MOUNT = "/models", "/health-samples", "/mnt/models"
#: The server container's name (the overlays patch it by this name).
CONTAINER = "triton"
#: The liveness probe's command: an entry point of the project (pyproject ``[project.scripts]``), which the
#: server image installs with the project's base install.
HEALTH_COMMAND = "kd-health"
#: Seconds one probe request may take; the exec probe's own timeout leaves room for a round over every detector.
HEALTH_REQUEST_TIMEOUT_S, HEALTH_PROBE_TIMEOUT_S = 5, 20
#: The user and group the NGC image's ``triton-server`` account has (docker/Dockerfile.server runs as it).
RUN_AS = 1000
#: The readiness path: 200 only once every model is ready (``--strict-readiness=true``).
READY_PATH = "/v2/health/ready"

#: The autoscaler's metric, as the Prometheus adapter exposes it, and the Triton series it is computed from.
QUEUE_METRIC = "avg_time_queue_us"
QUEUE_SERIES = "nv_inference_queue_duration_us"
#: Average queue time per request over the last 30 s, per pod (Triton's Kubernetes example; FACTS.md).
QUEUE_TIME_RULE = (
    "avg(delta(nv_inference_queue_duration_us{<<.LabelMatchers>>}[30s]) / "
    "(1 + delta(nv_inference_request_success{<<.LabelMatchers>>}[30s]))) by (<<.GroupBy>>)"
)
#: Prometheus must scrape at least twice per 30 s window of the rule.
SCRAPE_INTERVAL = "15s"

#: Labels and annotations of this project.
PART_OF = "kd-anomaly-serving"
DETECTORS_ANNOTATION = f"{PART_OF}/detectors"
#: Node label the NVIDIA GPU operator (GPU feature discovery) sets on GPU nodes, and the GPU resource.
GPU_NODE_LABEL, GPU_RESOURCE = "nvidia.com/gpu.present", "nvidia.com/gpu"


def labels(config: DeployConfig) -> dict[str, str]:
    """Labels of every object."""
    return {**selector(config), "app.kubernetes.io/part-of": PART_OF, "app.kubernetes.io/managed-by": "kd-deploy"}


def selector(config: DeployConfig) -> dict[str, str]:
    """The pods' identifying labels (Deployment selector, Service, PDB, NetworkPolicy, ServiceMonitor)."""
    return {"app.kubernetes.io/name": config.name, "app.kubernetes.io/component": "inference-server"}


def _meta(config: DeployConfig, name: str | None = None, namespace: str | None = None, **extra: Any) -> Obj:
    return {"name": name or config.name, "namespace": namespace or config.namespace, "labels": labels(config),
            **extra}


def repository_path(config: DeployConfig) -> str:
    """The ``--model-repository`` the server gets: the claim's mount point or the object-storage URL."""
    return config.storage.repository_url or MODELS_MOUNT


def server_args(repository: str) -> list[str]:
    """The server's arguments: the hardened flags, the repository, no model control, the standard ports."""
    return [*HARDENED_FLAGS, f"--model-repository={repository}", "--model-control-mode=none",
            f"--http-port={HTTP_PORT}", f"--grpc-port={GRPC_PORT}", f"--metrics-port={METRICS_PORT}"]


def health_command(samples: str, detectors: list[str], port: int = HTTP_PORT) -> list[str]:
    """``kd-health`` sending each detector's stored validation sample through the local server (exit 0: healthy)."""
    command = [HEALTH_COMMAND, "--url", f"127.0.0.1:{port}", "--protocol", "http", "--repository", samples,
               "--timeout", str(HEALTH_REQUEST_TIMEOUT_S)]
    for detector in detectors:
        command += ["--model", detector]
    return command


def resources(resolved: Resolved, gpus: int = 0) -> Obj:
    """Requests and limits (``gpus`` > 0 adds the GPU limit, which Kubernetes also takes as the request)."""
    limits: Obj = {"cpu": resolved.cpu_limit, "memory": resolved.memory_limit}
    if gpus:
        limits[GPU_RESOURCE] = gpus
    return {"requests": {"cpu": resolved.cpu_request, "memory": resolved.memory_request}, "limits": limits}


def container_security() -> Obj:
    """Non-root, no privilege escalation, no capabilities, read-only root filesystem (``/tmp`` and ``/dev/shm``
    are volumes of their own)."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


def pod_security() -> Obj:
    """The pod's security context: the image's non-root user, the runtime's default seccomp profile."""
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}}


def _scratch_volumes(config: DeployConfig) -> list[Obj]:
    # The python-backend stubs talk to the server through /dev/shm (a container's default is 64 MiB, too small).
    return [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": config.resources.shm_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}}]


def _scratch_mounts() -> list[Obj]:
    return [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}]


def _env() -> list[Obj]:
    # Nothing writes .pyc files onto the read-only root; HOME (the probe's and the stubs') is writable.
    return [{"name": "PYTHONDONTWRITEBYTECODE", "value": "1"}, {"name": "HOME", "value": "/tmp"}]


def _check_script(root: str, detectors: list[str]) -> str:
    """Shell that fails, naming it, when a detector's manifest is missing under ``root``."""
    lines = []
    for detector in detectors:
        manifest = shlex.quote(f"{root}/{detector}/{VALIDATION_DIR}/{MANIFEST_FILE}")
        message = shlex.quote(f"detector {detector} is missing from {root}: deploy the repository kd-deploy read")
        lines.append(f"test -f {manifest} || {{ echo {message} >&2; exit 1; }}")
    return "\n".join(lines)


def _cli_url(url: str) -> str:
    """An object-store URL as the cloud CLIs take it: ``s3://host:port/bucket/...`` (Triton's form for an
    S3-compatible endpoint) loses its ``host:port``, which the CLI takes from ``AWS_ENDPOINT_URL``."""
    scheme, rest = url.split("://", 1)
    first, _, tail = rest.partition("/")
    return f"{scheme}://{tail}" if scheme == "s3" and ":" in first and tail else url


def sync_script(config: DeployConfig, detectors: list[str]) -> str:
    """Shell that copies each detector's ``validation/`` folder from object storage into :data:`SAMPLES_MOUNT`."""
    url = _cli_url(config.storage.repository_url or "")
    lines = []
    for detector in detectors:
        source = f"{url}/{detector}/{VALIDATION_DIR}"
        dest = shlex.quote(f"{SAMPLES_MOUNT}/{detector}/{VALIDATION_DIR}")
        lines.append(f"mkdir -p {dest}")
        if config.storage.scheme == "s3":
            lines.append(f"aws s3 cp --recursive --only-show-errors {shlex.quote(source + '/')} {dest}/")
        else:
            lines.append(f"gcloud storage cp {shlex.quote(source + '/*')} {dest}/")
    return "\n".join([*lines, _check_script(SAMPLES_MOUNT, detectors)])


def _init_container(config: DeployConfig, repository: RepositoryInfo) -> Obj:
    """Before the server starts: with a claim, check the detectors are on it; with object storage, copy their
    validation samples (the liveness probe reads them locally) and check them."""
    small = {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}}
    if config.storage.repository_url is None:
        return {"name": "check-repository", "image": config.image, "imagePullPolicy": "IfNotPresent",
                "command": ["/bin/sh", "-ec", _check_script(MODELS_MOUNT, repository.detectors)],
                "resources": small, "securityContext": container_security(),
                "volumeMounts": [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}]}
    scheme = config.storage.scheme or "s3"
    env = [{"name": "HOME", "value": "/tmp"}, {"name": "CLOUDSDK_CONFIG", "value": "/tmp/gcloud"}]
    container: Obj = {
        "name": "fetch-health-samples", "image": config.storage.sync_image or SYNC_IMAGES[scheme],
        "imagePullPolicy": "IfNotPresent", "command": ["/bin/sh", "-ec", sync_script(config, repository.detectors)],
        "env": env, "resources": small, "securityContext": container_security(),
        "volumeMounts": [{"name": "health-samples", "mountPath": SAMPLES_MOUNT}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    if config.storage.storage_secret:
        container["envFrom"] = [{"secretRef": {"name": config.storage.storage_secret}}]
    return container


def deployment(config: DeployConfig, repository: RepositoryInfo, resolved: Resolved) -> Obj:
    """The Triton Deployment (the CPU/GPU overlays patch its scheduling and GPU limit)."""
    samples = MODELS_MOUNT if config.storage.repository_url is None else SAMPLES_MOUNT
    http_get = {"path": READY_PATH, "port": HTTP_PORT}
    container: Obj = {
        "name": CONTAINER,
        "image": config.image,
        "imagePullPolicy": "IfNotPresent",
        # The image's entry point (python3 -m serving.flags) would add the same flags; here they are in the manifest.
        "command": ["tritonserver"],
        "args": server_args(repository_path(config)),
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "env": _env(),
        "resources": resources(resolved),
        # Loading every model can take minutes: liveness and readiness start once the server is ready.
        "startupProbe": {"httpGet": http_get, "periodSeconds": 10, "failureThreshold": 60},
        "readinessProbe": {"httpGet": http_get, "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
        # Readiness stays 200 while a dead python-backend stub fails every request: only an inference tells.
        "livenessProbe": {"exec": {"command": health_command(samples, repository.detectors)},
                          "periodSeconds": 15, "timeoutSeconds": HEALTH_PROBE_TIMEOUT_S, "failureThreshold": 3},
        "securityContext": container_security(),
        "volumeMounts": [*_scratch_mounts()],
    }
    volumes = _scratch_volumes(config)
    if config.claim:
        container["volumeMounts"].append({"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True})
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": config.claim, "readOnly": True}})
    else:
        container["volumeMounts"].append({"name": "health-samples", "mountPath": SAMPLES_MOUNT, "readOnly": True})
        volumes.append({"name": "health-samples", "emptyDir": {"sizeLimit": "256Mi"}})
    if config.storage.storage_secret:
        container["envFrom"] = [{"secretRef": {"name": config.storage.storage_secret}}]
    spec: Obj = {
        "selector": {"matchLabels": selector(config)},
        # Keep every replica serving during a rollout: a new pod must be ready before an old one goes.
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
        "template": {
            "metadata": {
                "labels": labels(config),
                "annotations": {
                    # For a Prometheus that discovers pods by annotation (the kube-prometheus-stack uses the
                    # ServiceMonitor in monitoring/ instead).
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                    "prometheus.io/path": "/metrics",
                    DETECTORS_ANNOTATION: ",".join(repository.detectors),
                },
            },
            "spec": {
                "serviceAccountName": config.name,
                "automountServiceAccountToken": False,
                "securityContext": pod_security(),
                # Triton waits up to 30 s (--exit-timeout-secs) for requests in flight on SIGTERM.
                "terminationGracePeriodSeconds": 45,
                "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                               "whenUnsatisfiable": "ScheduleAnyway",
                                               "labelSelector": {"matchLabels": selector(config)}}],
                "initContainers": [_init_container(config, repository)],
                "containers": [container],
                "volumes": volumes,
            },
        },
    }
    if not config.autoscaling.hpa:
        spec = {"replicas": config.autoscaling.replicas, **spec}
    # With the autoscaler, replicas are left out: an apply would otherwise reset the count it chose.
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _meta(config, annotations={DETECTORS_ANNOTATION: ",".join(repository.detectors)}),
            "spec": spec}


def service_account(config: DeployConfig) -> Obj:
    """The pods' own account, with no API token mounted (the server never calls the Kubernetes API)."""
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(config),
            "automountServiceAccountToken": False}


def service(config: DeployConfig) -> Obj:
    """HTTP 8000, gRPC 8001 and metrics 8002 behind one ClusterIP (the NetworkPolicy decides who reaches which)."""
    ports = [{"name": name, "port": port, "targetPort": name, "protocol": "TCP"}
             for name, port in (("http", HTTP_PORT), ("grpc", GRPC_PORT), ("metrics", METRICS_PORT))]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(config),
            "spec": {"type": "ClusterIP", "selector": selector(config), "ports": ports}}


def pod_disruption_budget(config: DeployConfig) -> Obj:
    """At most one pod evicted at a time (drains and upgrades go on; the spare replica keeps the line rate)."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(config),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(config)}}}


def network_policy(config: DeployConfig) -> Obj:
    """Clients reach 8000/8001; only Prometheus in the monitoring namespace reaches 8002; nothing else gets in.

    Model control needs no port of its own to close: the server runs with ``--model-control-mode=none``, so the
    repository API on 8000 refuses every load and unload.
    """
    clients: Obj = {"ports": [{"protocol": "TCP", "port": HTTP_PORT}, {"protocol": "TCP", "port": GRPC_PORT}]}
    if config.network.clients:
        clients["from"] = [{"namespaceSelector": {"matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "In", "values": config.network.clients}]}}]
    metrics = {
        "from": [{"namespaceSelector": {"matchLabels": {
                      "kubernetes.io/metadata.name": config.network.monitoring_namespace}},
                  "podSelector": {"matchLabels": config.network.prometheus_selector}}],
        "ports": [{"protocol": "TCP", "port": METRICS_PORT}],
    }
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _meta(config),
            "spec": {"podSelector": {"matchLabels": selector(config)}, "policyTypes": ["Ingress"],
                     "ingress": [clients, metrics]}}


def _quantity(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{round(value * 1000)}m"


def horizontal_pod_autoscaler(config: DeployConfig, resolved: Resolved) -> Obj:
    """autoscaling/v2 on the Pods metric ``avg_time_queue_us`` (the Prometheus adapter's :func:`adapter_rule`)."""
    metric = {"type": "Pods", "pods": {"metric": {"name": QUEUE_METRIC},
                                       "target": {"type": "AverageValue",
                                                  "averageValue": _quantity(resolved.queue_target_us)}}}
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": _meta(config),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": config.name},
                     "minReplicas": resolved.min_replicas, "maxReplicas": resolved.max_replicas,
                     "metrics": [metric]}}


def persistent_volume_claim(config: DeployConfig) -> Obj:
    """The repository's claim (written with ``--pvc-size``): ReadWriteMany, so pods on several nodes mount it."""
    spec: Obj = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": config.storage.pvc_size}}}
    if config.storage.storage_class:
        spec["storageClassName"] = config.storage.storage_class
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": _meta(config, name=config.claim),
            "spec": spec}


def gpu_patch(config: DeployConfig) -> Obj:
    """The GPU overlay's patch: a GPU per pod, scheduled on GPU nodes (their taint tolerated)."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": config.name},
            "spec": {"template": {"spec": {
                "nodeSelector": {GPU_NODE_LABEL: "true"},
                "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{"name": CONTAINER,
                                "resources": {"limits": {GPU_RESOURCE: config.resources.gpus}}}],
            }}}}


def cpu_patch(config: DeployConfig) -> Obj:
    """The CPU overlay's patch: prefer nodes without GPUs (CPU pods should not take a GPU node's cores)."""
    term = {"matchExpressions": [{"key": GPU_NODE_LABEL, "operator": "DoesNotExist"}]}
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": config.name},
            "spec": {"template": {"spec": {"affinity": {"nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "preference": term}]}}}}}}


def adapter_rule(config: DeployConfig) -> Obj:
    """The Prometheus adapter rule that exposes :data:`QUEUE_METRIC` per pod (Triton's Kubernetes example)."""
    return {
        "seriesQuery": f'{QUEUE_SERIES}{{namespace="{config.namespace}",pod!=""}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": QUEUE_SERIES, "as": QUEUE_METRIC},
        "metricsQuery": QUEUE_TIME_RULE,
    }


def adapter_values(config: DeployConfig) -> Obj:
    """Helm values for the prometheus-community/prometheus-adapter chart."""
    return {"prometheus": {"url": config.network.prometheus_url, "port": config.network.prometheus_port},
            "rules": {"custom": [adapter_rule(config)]}}


def adapter_config_map(config: DeployConfig, rules_yaml: str) -> Obj:
    """The same rule as a ConfigMap (``config.yaml``) for an adapter installed without Helm (``--config``)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(config, name=f"{config.name}-prometheus-adapter-rules",
                              namespace=config.network.monitoring_namespace),
            "data": {"config.yaml": rules_yaml}}


def service_monitor(config: DeployConfig) -> Obj:
    """Prometheus Operator's ServiceMonitor: scrape the Service's ``metrics`` port every 15 s."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": _meta(config),
            "spec": {"selector": {"matchLabels": selector(config)},
                     "namespaceSelector": {"matchNames": [config.namespace]},
                     "endpoints": [{"port": "metrics", "path": "/metrics", "interval": SCRAPE_INTERVAL}]}}


def inference_service(config: DeployConfig, repository: RepositoryInfo, resolved: Resolved) -> Obj:
    """KServe's InferenceService with the Triton runtime, serving the same repository.

    KServe appends ``args`` to its runtime's (``tritonserver --model-store=/mnt/models --grpc-port=9000
    --http-port=8080 ...``) and takes the image from here, so the command is the NGC image's own entry point
    (which runs its arguments): the project image's entry point would add a second repository.
    """
    gpus = config.resources.gpus if config.accelerator is Accelerator.GPU else 0
    storage_uri = config.storage.repository_url or f"pvc://{config.claim}"
    model: Obj = {
        "modelFormat": {"name": "triton"},
        "protocolVersion": "v2",
        "runtime": config.kserve_runtime,
        "storageUri": storage_uri,
        "image": config.image,
        "command": ["/opt/nvidia/nvidia_entrypoint.sh"],
        "args": [*HARDENED_FLAGS, "--model-control-mode=none"],
        "env": _env(),
        "resources": resources(resolved, gpus),
        "securityContext": container_security(),
        "readinessProbe": {"httpGet": {"path": READY_PATH, "port": KSERVE_HTTP_PORT}, "periodSeconds": 5},
        "livenessProbe": {"exec": {"command": health_command(KSERVE_MOUNT, repository.detectors, KSERVE_HTTP_PORT)},
                          "initialDelaySeconds": 120, "periodSeconds": 15,
                          "timeoutSeconds": HEALTH_PROBE_TIMEOUT_S, "failureThreshold": 3},
        "volumeMounts": _scratch_mounts(),
    }
    predictor: Obj = {"minReplicas": resolved.min_replicas, "maxReplicas": resolved.max_replicas,
                      "securityContext": pod_security(), "volumes": _scratch_volumes(config), "model": model}
    if gpus:
        predictor["nodeSelector"] = {GPU_NODE_LABEL: "true"}
        predictor["tolerations"] = [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": _meta(config, annotations={DETECTORS_ANNOTATION: ",".join(repository.detectors)}),
            "spec": {"predictor": predictor}}
