"""Kubernetes manifests for an exported model repository: ``kd-deploy`` writes them, nobody keeps them by hand.

A Kustomize tree (a base with the Triton Deployment, Service, PodDisruptionBudget, NetworkPolicy and the
HorizontalPodAutoscaler on queue time; overlays for CPU and GPU nodes), the monitoring pieces the autoscaler needs
(a ServiceMonitor and the Prometheus adapter's rule) and a KServe ``InferenceService`` variant. Model names come
from the exporter's manifests (:mod:`kdcore.manifest`), the server's flags from :mod:`serving.flags`, and the
per-replica throughput from ``kd-bench``'s JSON, so none of them can drift from what the rest of the project does.

Modules: :mod:`deploy.config` (the options as pydantic models), :mod:`deploy.repository` (what an exported
repository holds), :mod:`deploy.capacity` (images/s per replica and replicas needed), :mod:`deploy.manifests`
(the Kubernetes objects), :mod:`deploy.render` (the tree, written atomically), :mod:`deploy.cli` (``kd-deploy``).
Standard library, pydantic and PyYAML only (the ``deploy`` extra), plus the torch-free core.
"""
