"""Make the custom resources' JSON schemas that tests/test_deploy.py checks kd-deploy's objects against.

Each schema is the ``openAPIV3Schema`` of the upstream CustomResourceDefinition, without descriptions, with the
subtrees kd-deploy never writes (other frameworks' predictor specs, full container lists, affinity, worker specs,
the explainer, transformer and canary components, the status) replaced by ``{}``, and ``additionalProperties:
false`` on every object that lists its properties: the API server prunes or, under ``kubectl apply
--validate=strict``, rejects unknown fields, and so does the test.

    python tests/deploy_schemas/trim_crd.py CRD.yaml VERSION OUT.json [SOURCE]

The committed files came from kserve/kserve config/crd/full/serving.kserve.io_inferenceservices.yaml (commit
aaac4e294dae, v1beta1) and prometheus-operator/prometheus-operator
example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml (commit 6adcebc50, operator 0.93.0, v1).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

#: Subtrees replaced by ``{}`` (any value), as paths of property names.
PERMISSIVE = [
    ("spec", p, name) for p in ("predictor", "explainer", "transformer")
    for name in ("workerSpec", "huggingface", "lightgbm", "onnx", "paddle", "pmml", "pytorch", "sklearn",
                 "tensorflow", "triton", "xgboost", "initContainers", "containers", "affinity", "alibi", "art")
] + [("spec", "explainer"), ("spec", "transformer"), ("spec", "canary"), ("status",)]


def _strip(node: Any, path: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_strip(x, path) for x in node]
    if not isinstance(node, dict):
        return node
    if path in PERMISSIVE:
        return {}
    out = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key == "properties":
            out[key] = {name: _strip(sub, (*path, name)) for name, sub in value.items()}
        else:
            out[key] = _strip(value, path)
    if "properties" in out and "additionalProperties" not in out \
            and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def main(argv: list[str]) -> None:
    crd_path, version, out_path, *source = argv
    crd = yaml.safe_load(Path(crd_path).read_text(encoding="utf-8"))
    schema = next(v for v in crd["spec"]["versions"] if v["name"] == version)["schema"]["openAPIV3Schema"]
    trimmed = _strip(schema, ())
    trimmed["properties"]["metadata"] = {"type": "object"}  # checked by the test itself (names, namespace)
    trimmed = {"$comment": f"{crd['metadata']['name']} {version}, trimmed by trim_crd.py from "
                           f"{source[0] if source else crd_path}", **trimmed}
    Path(out_path).write_text(json.dumps(trimmed, indent=1, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(sys.argv[1:])
