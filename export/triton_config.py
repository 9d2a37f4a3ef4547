"""``config.pbtxt`` for the four models of one detector: the network (ONNX and TorchScript), the scorer and
the ensemble that chains them.

The same files load on the NGC image (native ``onnxruntime`` / ``pytorch`` backends) and on the embedded server
(Python-based stand-ins with those backend names, see :mod:`serving.embedded`). Instance kinds are left to
Triton where the model can run on either device (GPU when present, else CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from training.inference import INPUT_NAME, OUTPUT_NAMES

#: Largest batch any model accepts; dynamic batching groups requests up to it.
MAX_BATCH_SIZE = 8
#: How long the network waits to fill a batch. Small: on CPU a batch costs about the sum of its images.
MAX_QUEUE_DELAY_US = 2000
SCORE, MAP, LABEL, RAW_SCORE = "score", "anomaly_map", "label", "raw_score"


@dataclass(frozen=True)
class ModelNames:
    """Names of the models that serve one detector under the ensemble name ``name``."""

    name: str

    @property
    def onnx(self) -> str:
        """The network as ONNX (the one the ensemble uses)."""
        return f"{self.name}_onnx"

    @property
    def torchscript(self) -> str:
        """The same network as TorchScript."""
        return f"{self.name}_torchscript"

    @property
    def scorer(self) -> str:
        """The Python-backend calibration step."""
        return f"{self.name}_scorer"

    @property
    def ensemble(self) -> str:
        """What clients call."""
        return self.name


def torchscript_output_name(name: str, index: int) -> str:
    """Triton's PyTorch backend finds outputs by the ``<name>__<index>`` convention."""
    return f"{name}__{index}"


def _tensor(name: str, dtype: str, dims: tuple[int, ...]) -> str:
    return f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ] }}'


def _io(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def network_config(names: ModelNames, size: int, *, torchscript: bool, threads: int) -> str:
    """Config of the network model.

    Args:
        names: Model names of the detector.
        size: Square input side.
        torchscript: ``pytorch_libtorch`` with ``model.pt`` instead of ``onnxruntime_onnx`` with ``model.onnx``.
        threads: Intra-op threads per instance (the cores a CPU instance should use).

    Returns:
        The ``config.pbtxt`` text.
    """
    image = (size, size, 3)
    dims = {"pred_score": (1,), "anomaly_map": (1, size, size)}
    out_names = [torchscript_output_name(n, i) if torchscript else n for i, n in enumerate(OUTPUT_NAMES)]
    outputs = [_tensor(o, "TYPE_FP32", dims[n]) for o, n in zip(out_names, OUTPUT_NAMES)]
    name = names.torchscript if torchscript else names.onnx
    platform = "pytorch_libtorch" if torchscript else "onnxruntime_onnx"
    filename = "model.pt" if torchscript else "model.onnx"
    thread_keys = (
        ["INTRA_OP_THREAD_COUNT", "INTER_OP_THREAD_COUNT"] if torchscript else ["intra_op_thread_count", "inter_op_thread_count"]
    )
    params = "".join(
        f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n'
        for k, v in zip(thread_keys, (threads, 1))
    )
    return (
        f'name: "{name}"\nplatform: "{platform}"\ndefault_model_filename: "{filename}"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        + _io("input", [_tensor(INPUT_NAME, "TYPE_UINT8", image)])
        + _io("output", outputs)
        + f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}\n"
        + "instance_group [ { count: 1 } ]\n"
        + params
        + "model_warmup [ {\n"
        + '  name: "zeros" batch_size: 1\n'
        + f'  inputs {{ key: "{INPUT_NAME}" value {{ data_type: TYPE_UINT8 dims: [ {size}, {size}, 3 ] zero_data: true }} }}\n'
        + "} ]\n"
    )


def scorer_config(names: ModelNames, size: int) -> str:
    """Config of the Python-backend scorer (CPU: it is a few vectorised numpy operations)."""
    return (
        f'name: "{names.scorer}"\nbackend: "python"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
        + _io("input", [_tensor("pred_score", "TYPE_FP32", (1,)), _tensor("anomaly_map", "TYPE_FP32", (1, size, size))])
        + _io(
            "output",
            [_tensor(SCORE, "TYPE_FP32", (1,)), _tensor(MAP, "TYPE_FP32", (1, size, size)), _tensor(LABEL, "TYPE_STRING", (1,))],
        )
        + "dynamic_batching { }\n"
        + "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )


def ensemble_config(names: ModelNames, size: int) -> str:
    """Config of the ensemble: image -> network (ONNX) -> scorer; also passes the raw score through."""
    return (
        f'name: "{names.ensemble}"\nplatform: "ensemble"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
        + _io("input", [_tensor(INPUT_NAME, "TYPE_UINT8", (size, size, 3))])
        + _io(
            "output",
            [
                _tensor(SCORE, "TYPE_FP32", (1,)),
                _tensor(MAP, "TYPE_FP32", (1, size, size)),
                _tensor(LABEL, "TYPE_STRING", (1,)),
                _tensor(RAW_SCORE, "TYPE_FP32", (1,)),
            ],
        )
        + "ensemble_scheduling {\n  step [\n"
        + f'    {{ model_name: "{names.onnx}" model_version: -1\n'
        + f'      input_map {{ key: "{INPUT_NAME}" value: "{INPUT_NAME}" }}\n'
        + f'      output_map {{ key: "pred_score" value: "{RAW_SCORE}" }}\n'
        + '      output_map { key: "anomaly_map" value: "raw_map" } },\n'
        + f'    {{ model_name: "{names.scorer}" model_version: -1\n'
        + f'      input_map {{ key: "pred_score" value: "{RAW_SCORE}" }}\n'
        + '      input_map { key: "anomaly_map" value: "raw_map" }\n'
        + f'      output_map {{ key: "{SCORE}" value: "{SCORE}" }}\n'
        + f'      output_map {{ key: "{MAP}" value: "{MAP}" }}\n'
        + f'      output_map {{ key: "{LABEL}" value: "{LABEL}" }} }}\n'
        + "  ]\n}\n"
    )
