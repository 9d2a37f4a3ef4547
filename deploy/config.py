"""``kd-deploy``'s options as pydantic models: one place for their types, defaults, checks and help texts.

The command line is generated from these models (:func:`kdcore.options.add_config_options`), so ``--help``, the
defaults and the validation cannot disagree. Fields whose default depends on other inputs (the resources and the
replica counts, which ``--bench`` and ``--line-rate`` can size) default to ``None`` here and are resolved by
:func:`deploy.capacity.resolve`.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

#: The Triton release the project is verified against (server 2.51.0, the embedded server's release).
NGC_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
#: The project's server image: docker/Dockerfile.server, ``FROM`` :data:`NGC_IMAGE` plus the project's base install
#: (which provides ``kd-health``, the liveness probe's command). Push it to a registry the cluster pulls from.
DEFAULT_IMAGE = "kd-anomaly-triton:24.10"
#: Images of the init container that copies the liveness probe's samples out of object storage.
SYNC_IMAGES = {"s3": "amazon/aws-cli:2.17.48", "gs": "google/cloud-sdk:473.0.0-alpine"}

#: Resources when neither an option nor ``--bench`` gives them: two cores (what the embedded server's figures
#: in the README were measured on) and memory for a repository of a few detectors (the benchmark repository's
#: server and stubs used about 5.4 GiB for five detectors; one detector about a quarter of that).
DEFAULT_CPU_REQUEST, DEFAULT_CPU_LIMIT = "2", "4"
DEFAULT_MEMORY_REQUEST, DEFAULT_MEMORY_LIMIT = "4Gi", "8Gi"
#: Default queue-time target: this many microseconds of queueing per request on the one busy model of a pod (see
#: :func:`deploy.capacity.default_queue_target_us`, which divides it by the repository's model count).
HOT_MODEL_QUEUE_US = 2000

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")


class Accelerator(str, Enum):
    """Where the KServe variant runs (both Kustomize overlays are always written)."""

    CPU = "cpu"
    GPU = "gpu"


def dns_label(value: str, what: str, max_length: int = 63) -> str:
    """``value`` if it is a Kubernetes DNS-1123 label of at most ``max_length`` characters.

    Raises:
        ValueError: It is not; the message says what is allowed.
    """
    if len(value) > max_length or not _DNS_LABEL.match(value):
        raise ValueError(f"{what} {value!r} must be lower-case letters, digits and '-', start and end with a letter "
                         f"or digit, at most {max_length} characters")
    return value


def quantity(value: str | None, what: str) -> str | None:
    """``value`` if it is a Kubernetes quantity (``2``, ``500m``, ``4Gi``) or ``None``."""
    if value is not None and not _QUANTITY.match(value):
        raise ValueError(f"{what} {value!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")
    return value


def label_pairs(text: str, what: str) -> dict[str, str]:
    """``"k=v,k2=v2"`` as a dict of valid label keys and values (an empty text gives ``{}``).

    Raises:
        ValueError: A pair without ``=`` or an invalid key or value.
    """
    pairs: dict[str, str] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value) or len(value) > 63:
            raise ValueError(f"{what}: {item!r} is not a label key=value")
        pairs[key] = value
    return pairs


class StorageConfig(BaseModel):
    """Where the pods read the model repository from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    pvc: str | None = Field(None, description="PersistentVolumeClaim holding the repository, mounted read-only at "
                            "/models (default: <name>-models when no --repository-url is given)")
    repository_url: str | None = Field(None, description="read the repository from object storage instead: an "
                                       "s3://bucket/path or gs://bucket/path URL (Triton reads it directly; the "
                                       "copy uploaded there must be the one --repository names)")
    pvc_size: str | None = Field(None, description="also write the claim itself (ReadWriteMany, so pods on many "
                                 "nodes share it) with this size, e.g. 5Gi; without it the claim must exist")
    storage_class: str | None = Field(None, description="storage class of the written claim (default: the "
                                      "cluster's default class)")
    storage_secret: str | None = Field(None, description="Secret whose keys become environment variables of the "
                                       "server and the sample copier (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                                       "AWS_DEFAULT_REGION, AWS_ENDPOINT_URL for S3-compatible stores)")
    sync_image: str | None = Field(None, description="image of the init container that copies each detector's "
                                   f"validation samples from object storage for the liveness probe (default: "
                                   f"{SYNC_IMAGES['s3']} for s3://, {SYNC_IMAGES['gs']} for gs://)")

    @field_validator("repository_url")
    @classmethod
    def _object_store(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(s3|gs)://[^/]+/?", value):
            raise ValueError(f"repository URL {value!r} must start with s3:// or gs:// and name a bucket")
        return value.rstrip("/") if value else value

    @field_validator("pvc")
    @classmethod
    def _claim(cls, value: str | None) -> str | None:
        return dns_label(value, "claim name", 253) if value is not None else None

    @field_validator("pvc_size")
    @classmethod
    def _size(cls, value: str | None) -> str | None:
        return quantity(value, "claim size")

    @model_validator(mode="after")
    def _one_source(self) -> StorageConfig:
        if self.pvc and self.repository_url:
            raise ValueError("give either --pvc or --repository-url, not both")
        if self.repository_url and (self.pvc_size or self.storage_class):
            raise ValueError("--pvc-size and --storage-class write a claim: they do not go with --repository-url")
        return self

    @property
    def scheme(self) -> Literal["s3", "gs"] | None:
        """``"s3"`` or ``"gs"`` for object storage, ``None`` for a claim."""
        return self.repository_url.split("://", 1)[0] if self.repository_url else None  # type: ignore[return-value]


class ResourcesConfig(BaseModel):
    """Requests and limits of the server container (each defaults to --bench's figures, else the documented one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cpu_request: str | None = Field(None, description=f"CPU request (default: the cores kd-bench measured on, "
                                    f"else {DEFAULT_CPU_REQUEST})")
    cpu_limit: str | None = Field(None, description=f"CPU limit (default: the request with --bench, else "
                                  f"{DEFAULT_CPU_LIMIT})")
    memory_request: str | None = Field(None, description="memory request (default: 1.25x the server's resident "
                                       f"memory kd-bench measured, else {DEFAULT_MEMORY_REQUEST})")
    memory_limit: str | None = Field(None, description=f"memory limit (default: 1.5x the request with --bench, "
                                     f"else {DEFAULT_MEMORY_LIMIT})")
    gpus: int = Field(1, ge=1, le=16, description="nvidia.com/gpu limit of a pod in the GPU overlay")
    shm_size: str = Field("1Gi", description="size of the in-memory /dev/shm (python-backend stubs need more than "
                          "a container's default 64 MiB; it counts against the memory limit)")

    @field_validator("cpu_request", "cpu_limit", "memory_request", "memory_limit", "shm_size")
    @classmethod
    def _quantities(cls, value: str | None, info) -> str | None:  # noqa: ANN001  (pydantic's ValidationInfo)
        return quantity(value, info.field_name.replace("_", " "))


class AutoscalingConfig(BaseModel):
    """Replicas, and the HorizontalPodAutoscaler on Triton's queue time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hpa: bool = Field(True, description="write the HorizontalPodAutoscaler (autoscaling/v2, Pods metric "
                      "avg_time_queue_us through the Prometheus adapter); --no-hpa: a fixed --replicas")
    replicas: int = Field(2, ge=1, le=1000, description="replicas without the autoscaler (--no-hpa)")
    min_replicas: int | None = Field(None, ge=1, le=1000, description="autoscaler's minimum (default: the replicas "
                                     "--line-rate needs plus one spare, else 2)")
    max_replicas: int | None = Field(None, ge=1, le=1000, description="autoscaler's maximum (default: twice the "
                                     "minimum, at least 4)")
    queue_target_us: float | None = Field(None, gt=0, description="target of avg_time_queue_us per pod, in "
                                          f"microseconds (default: {HOT_MODEL_QUEUE_US} divided by the number of "
                                          "models in the repository: the metric averages over every model of a pod, "
                                          f"so this is about {HOT_MODEL_QUEUE_US} us of queueing on the one model "
                                          "a line calls; see deploy/README.md)")

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.min_replicas and self.max_replicas and self.min_replicas > self.max_replicas:
            raise ValueError(f"--min-replicas {self.min_replicas} exceeds --max-replicas {self.max_replicas}")
        return self


class CapacityConfig(BaseModel):
    """Sizing from kd-bench's figures: images/s per replica and the replicas a line needs."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bench: Path | None = Field(None, description="kd-bench's JSON (runs/bench/serving.json): sizes the resources "
                               "and gives images/s per replica")
    bench_model: str | None = Field(None, description="detector whose figures size the deployment (default: the "
                                    "slowest of the repository's detectors that the JSON measured)")
    protocol: Literal["grpc", "http"] = Field("grpc", description="the protocol the line's clients use: grpc or http")
    line_rate: float | None = Field(None, gt=0, description="images per second the line sends: prints the replicas "
                                    "needed and sizes --min-replicas")
    latency_budget_ms: float | None = Field(None, gt=0, description="p99 latency a request may take, in ms: only "
                                            "operating points of kd-bench within it count (default: any)")
    images_per_replica: float | None = Field(None, gt=0, description="images/s one replica serves, measured "
                                             "elsewhere (e.g. perf_analyzer against one GPU pod): replaces --bench's")

    @model_validator(mode="after")
    def _sources(self) -> CapacityConfig:
        if self.line_rate and not (self.bench or self.images_per_replica):
            raise ValueError("--line-rate needs --bench or --images-per-replica (images/s one replica serves)")
        if self.latency_budget_ms and not self.bench:
            raise ValueError("--latency-budget-ms picks among kd-bench's operating points: it needs --bench")
        return self


class NetworkConfig(BaseModel):
    """Who may reach the pods, and where Prometheus is."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    client_namespaces: str = Field("", description="comma-separated namespaces whose pods may call HTTP 8000 and "
                                   "gRPC 8001 (default: every source, e.g. camera PCs outside the cluster)")
    monitoring_namespace: str = Field("monitoring", description="namespace of Prometheus: the only one allowed to "
                                      "scrape metrics on 8002; the Prometheus adapter's rule config goes there too")
    prometheus_labels: str = Field("app.kubernetes.io/name=prometheus", description="labels of the Prometheus pods "
                                   "(k=v,...) allowed to scrape 8002")
    prometheus_url: str = Field("http://prometheus-operated.monitoring.svc", description="Prometheus as the "
                                "Prometheus adapter reaches it (its Helm values)")
    prometheus_port: int = Field(9090, ge=1, le=65535, description="Prometheus' port, for the adapter")

    @field_validator("monitoring_namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        return dns_label(value, "monitoring namespace")

    @field_validator("client_namespaces")
    @classmethod
    def _namespaces(cls, value: str) -> str:
        for ns in filter(None, (s.strip() for s in value.split(","))):
            dns_label(ns, "client namespace")
        return value

    @field_validator("prometheus_labels")
    @classmethod
    def _labels(cls, value: str) -> str:
        if not label_pairs(value, "--prometheus-labels"):
            raise ValueError("--prometheus-labels needs at least one key=value")
        return value

    @property
    def clients(self) -> list[str]:
        """The client namespaces (empty: any source)."""
        return [s.strip() for s in self.client_namespaces.split(",") if s.strip()]

    @property
    def prometheus_selector(self) -> dict[str, str]:
        """The Prometheus pods' labels."""
        return label_pairs(self.prometheus_labels, "--prometheus-labels")


class DeployConfig(BaseModel):
    """Everything ``kd-deploy`` needs to write a deployment tree for one exported repository."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repository: Path = Field(Path("model_repository"), description="the exported model repository (kd-export's "
                             "output): model names are read from its manifests")
    output: Path = Field(Path("deploy/out"), description="folder to write the tree into (replaced as a whole; "
                         "refused if it holds anything kd-deploy did not write)")
    name: str = Field("kd-triton", description="name of the Deployment, Service and every other object")
    namespace: str = Field("kd-anomaly", description="namespace of the objects")
    image: str = Field(DEFAULT_IMAGE, description=f"server image: docker/Dockerfile.server built and pushed (FROM "
                       f"{NGC_IMAGE}, plus the project's base install that provides kd-health for the liveness "
                       "probe); the same tag serves CPU and GPU nodes")
    accelerator: Accelerator = Field(Accelerator.CPU, description="hardware of the KServe InferenceService (the "
                                     "Kustomize tree always has both overlays)")
    kserve_runtime: str = Field("kserve-tritonserver", description="KServe ClusterServingRuntime of the "
                                "InferenceService")
    storage: StorageConfig = Field(default_factory=StorageConfig, description="where the repository is read from")
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig, description="container resources")
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig, description="replicas and autoscaler")
    capacity: CapacityConfig = Field(default_factory=CapacityConfig, description="sizing from kd-bench")
    network: NetworkConfig = Field(default_factory=NetworkConfig, description="network policy and monitoring")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        # Object names get suffixes ("-models", "-metrics", "-prometheus-adapter-rules"): keep room for them.
        return dns_label(value, "name", 36)

    @field_validator("namespace")
    @classmethod
    def _ns(cls, value: str) -> str:
        return dns_label(value, "namespace")

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if value.split("@")[0].split(":")[0].endswith("nvidia/tritonserver"):
            raise ValueError(f"{value!r} is NVIDIA's image, which lacks kd-health (the liveness probe's real "
                             f"inference): build docker/Dockerfile.server (FROM {NGC_IMAGE}), push it and name it")
        if not value or any(c.isspace() for c in value):
            raise ValueError(f"image {value!r} is not an image reference")
        return value

    @property
    def claim(self) -> str | None:
        """The claim the pods mount (``None`` with object storage)."""
        if self.storage.repository_url:
            return None
        return self.storage.pvc or f"{self.name}-models"
