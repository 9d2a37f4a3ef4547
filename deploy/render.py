"""The deployment tree: every file's text, then all of it written at once.

The tree (``kubectl apply -k overlays/gpu`` and friends; deploy/README.md tells how to use each part)::

    base/                  Deployment, Service, PodDisruptionBudget, NetworkPolicy, ServiceAccount, the HPA
                           (unless --no-hpa) and the claim (with --pvc-size); kustomization.yaml lists them
    overlays/cpu/          base + a patch that keeps pods off GPU nodes
    overlays/gpu/          base + a patch with the GPU limit, the GPU node selector and toleration
    monitoring/            ServiceMonitor (kustomization.yaml), the Prometheus adapter's Helm values and the same
                           rule as a ConfigMap
    kserve/                the InferenceService variant
    README.md              what was generated from what, the capacity figures, the commands
    kd-deploy.json         the options and detectors it was written with (marks the folder as kd-deploy's)

Everything is rendered in memory and written into a staging folder beside the output, which then replaces the
output by renames: a failure leaves the previous tree (or nothing) in place, never half a tree.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from deploy import manifests as m
from deploy.capacity import Resolved, resolve
from deploy.config import DeployConfig
from deploy.repository import DeployError, RepositoryInfo, read_repository
from kdcore.atomic import swap_in

#: The file that marks a folder as written by kd-deploy (a folder without it is never replaced).
MARKER = "kd-deploy.json"
KUSTOMIZATION = "kustomization.yaml"
PATCH_FILE = "deployment-patch.yaml"
OVERLAYS = ("cpu", "gpu")


@dataclass(frozen=True)
class Rendered:
    """A rendered tree: relative path -> text, and what it was made from."""

    files: dict[str, str]
    repository: RepositoryInfo
    resolved: Resolved


class _Dumper(yaml.SafeDumper):
    """Safe YAML without anchors (a dict used twice is written twice), multi-line strings as ``|`` blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(obj: Any, header: str = "") -> str:
    """YAML of ``obj`` in insertion order, long strings (the adapter's rule) on one line."""
    text = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=4096,
                     allow_unicode=True)
    return (header + text) if header else text


def _kustomization(resources: list[str], patches: list[dict] | None = None) -> dict:
    k: dict[str, Any] = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                         "resources": resources}
    if patches:
        k["patches"] = patches
    return k


def render(config: DeployConfig) -> Rendered:
    """Every file of the tree for ``config``; reads the repository and the benchmark, writes nothing.

    Raises:
        DeployError: See :func:`deploy.repository.read_repository` and :func:`deploy.capacity.resolve`.
    """
    repository = read_repository(config.repository)
    resolved = resolve(config, repository)
    header = (f"# Written by kd-deploy for detectors {', '.join(repository.detectors)} "
              f"({len(repository.models)} models). Re-run kd-deploy instead of editing.\n")
    files: dict[str, str] = {}

    def put(path: str, obj: Any) -> str:
        files[path] = to_yaml(obj, header)
        return path.rsplit("/", 1)[-1]

    base = [put("base/serviceaccount.yaml", m.service_account(config))]
    if config.storage.pvc_size:
        base.append(put("base/pvc.yaml", m.persistent_volume_claim(config)))
    base += [put("base/deployment.yaml", m.deployment(config, repository, resolved)),
             put("base/service.yaml", m.service(config)),
             put("base/pdb.yaml", m.pod_disruption_budget(config)),
             put("base/networkpolicy.yaml", m.network_policy(config))]
    if config.autoscaling.hpa:
        base.append(put("base/hpa.yaml", m.horizontal_pod_autoscaler(config, resolved)))
    put(f"base/{KUSTOMIZATION}", _kustomization(base))

    for overlay, patch in (("cpu", m.cpu_patch(config)), ("gpu", m.gpu_patch(config))):
        put(f"overlays/{overlay}/{PATCH_FILE}", patch)
        put(f"overlays/{overlay}/{KUSTOMIZATION}", _kustomization(
            ["../../base"], [{"path": PATCH_FILE, "target": {"kind": "Deployment", "name": config.name}}]))

    put("monitoring/servicemonitor.yaml", m.service_monitor(config))
    put(f"monitoring/{KUSTOMIZATION}", _kustomization(["servicemonitor.yaml"]))
    put("monitoring/prometheus-adapter-values.yaml", m.adapter_values(config))
    put("monitoring/prometheus-adapter-config.yaml",
        m.adapter_config_map(config, to_yaml({"rules": [m.adapter_rule(config)]})))

    put("kserve/inferenceservice.yaml", m.inference_service(config, repository, resolved))
    put(f"kserve/{KUSTOMIZATION}", _kustomization(["inferenceservice.yaml"]))

    files["README.md"] = summary(config, repository, resolved)
    files[MARKER] = json.dumps({"options": config.model_dump(mode="json"), "detectors": repository.detectors,
                                "models": list(repository.models)}, indent=2) + "\n"
    return Rendered(files=files, repository=repository, resolved=resolved)


def summary(config: DeployConfig, repository: RepositoryInfo, resolved: Resolved) -> str:
    """The tree's own README: what it serves, how it was sized, how to apply it."""
    source = config.storage.repository_url or f"PersistentVolumeClaim {config.claim} (mounted at {m.MODELS_MOUNT})"
    lines = [
        f"# {config.name}: Triton on Kubernetes for {', '.join(repository.detectors)}",
        "",
        f"Written by `kd-deploy` from `{repository.path}`; see deploy/README.md in the project for the details.",
        "",
        f"- repository: {source}; {len(repository.models)} models, detectors {', '.join(repository.detectors)}",
        f"- image: `{config.image}` (docker/Dockerfile.server), namespace `{config.namespace}`",
        f"- resources per pod: CPU {resolved.cpu_request} (limit {resolved.cpu_limit}), memory "
        f"{resolved.memory_request} (limit {resolved.memory_limit}); GPU overlay: {config.resources.gpus} GPU",
        (f"- replicas: {resolved.min_replicas}..{resolved.max_replicas}, autoscaled on {m.QUEUE_METRIC} "
         f"(target {resolved.queue_target_us:g} us per pod)" if config.autoscaling.hpa
         else f"- replicas: {config.autoscaling.replicas} (no autoscaler)"),
        *(f"- {note}" for note in resolved.notes),
        "",
        "```bash",
        f"kubectl create namespace {config.namespace}",
        "kubectl apply -k overlays/gpu        # or overlays/cpu",
        "kubectl apply -k monitoring          # ServiceMonitor (needs the Prometheus Operator)",
        f"helm install prometheus-adapter prometheus-community/prometheus-adapter -n "
        f"{config.network.monitoring_namespace} -f monitoring/prometheus-adapter-values.yaml",
        "# or, with KServe instead of the Deployment:",
        "kubectl apply -k kserve",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_tree(files: dict[str, str], output: Path) -> Path:
    """Write ``files`` as the folder ``output``, replacing a previous kd-deploy tree there at once.

    Raises:
        DeployError: ``output`` is a file, or a non-empty folder without :data:`MARKER` (not kd-deploy's).
    """
    output = Path(output)
    if output.exists():
        if not output.is_dir():
            raise DeployError(f"output {output} is a file")
        if any(output.iterdir()) and not (output / MARKER).is_file():
            raise DeployError(f"refusing to replace {output}: it holds files kd-deploy did not write (no {MARKER})")
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.staging-", dir=output.parent))
    try:
        for rel, text in files.items():
            path = staging / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
        swap_in(staging, output)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # gone already when the rename succeeded
    return output


def deploy(config: DeployConfig) -> Rendered:
    """Render the tree for ``config`` and write it to ``config.output`` (nothing is written on an error)."""
    rendered = render(config)
    write_tree(rendered.files, config.output)
    return rendered
