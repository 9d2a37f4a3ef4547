"""``kd-deploy``: write the Kubernetes manifests (Kustomize base and CPU/GPU overlays, queue-time autoscaling, the
Prometheus adapter's rule, a KServe InferenceService) for an exported model repository.

Every option is a field of :class:`deploy.config.DeployConfig`; the parser is generated from it. Exit status: 0
written, 1 the inputs cannot make a deployment (no repository, no detector, benchmark figures that do not fit; the
message says which), 2 bad options.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from deploy.config import DeployConfig
from deploy.render import deploy
from deploy.repository import DeployError
from kdcore.options import add_config_options, config_values

#: Exit status: written, the inputs cannot make a deployment, bad options.
WRITTEN, FAILED, USAGE = 0, 1, 2


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows defaults, except ``None`` and empty ones (those options' help says what they default to)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        return action.help if action.default in (None, "") else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one option per :class:`DeployConfig` field (nested models as option groups)."""
    parser = argparse.ArgumentParser(
        prog="kd-deploy",
        description="Write Kubernetes manifests for an exported model repository: a Kustomize base (Triton "
        "Deployment with the project's hardened flags, readiness on /v2/health/ready, liveness by a real inference "
        "through kd-health, non-root, Service on 8000/8001/8002, PodDisruptionBudget, NetworkPolicy, "
        "HorizontalPodAutoscaler on avg_time_queue_us), overlays/cpu and overlays/gpu, monitoring/ (ServiceMonitor, "
        "Prometheus adapter rule) and kserve/ (InferenceService). Model names come from the repository's manifests; "
        "--bench sizes the pods and the replicas from kd-bench's figures. Apply with kubectl apply -k "
        "OUTPUT/overlays/gpu (see deploy/README.md).",
        formatter_class=_Formatter,
    )
    add_config_options(parser, DeployConfig)
    return parser


def _option(loc: tuple) -> str:
    """The command-line option a validation error's location points at (nested fields keep their own names)."""
    names = [str(p) for p in loc if isinstance(p, str) and p in _FIELDS]
    return "--" + names[-1].replace("_", "-") if names else "options"


_FIELDS = {name for model in (DeployConfig, *(f.annotation for f in DeployConfig.model_fields.values()
                                              if isinstance(f.annotation, type)))
           for name in getattr(model, "model_fields", {})}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = DeployConfig.model_validate(config_values(DeployConfig, args))
    except ValidationError as e:
        for err in e.errors():
            print(f"kd-deploy: {_option(err['loc'])}: {err['msg']}", file=sys.stderr)
        return USAGE
    try:
        rendered = deploy(config)
    except DeployError as e:
        print(f"kd-deploy: {e}", file=sys.stderr)
        return FAILED
    resolved = rendered.resolved
    print(f"wrote {config.output}: {len(rendered.files)} files for detectors {', '.join(rendered.repository.detectors)}"
          f" ({len(rendered.repository.models)} models)")
    print(f"per pod: CPU {resolved.cpu_request} (limit {resolved.cpu_limit}), memory {resolved.memory_request} "
          f"(limit {resolved.memory_limit})")
    if config.autoscaling.hpa:
        print(f"replicas {resolved.min_replicas}..{resolved.max_replicas}, autoscaled on avg_time_queue_us "
              f"(target {resolved.queue_target_us:g} us)")
    for note in resolved.notes:
        print(note)
    print(f"apply: kubectl apply -k {config.output}/overlays/{config.accelerator.value}")
    return WRITTEN


if __name__ == "__main__":
    sys.exit(main())
