"""``config.pbtxt`` for the four models of one detector: the network (ONNX and TorchScript), the scorer and
the ensemble that chains them.

The same files load on the NGC image (native ``onnxruntime`` / ``pytorch`` backends) and on the embedded server
(Python-based stand-ins with those backend names, see :mod:`serving.embedded`). Instance kinds are left to
Triton where the model can run on either device (GPU when present, else CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

from training.inference import NetworkSpec

#: Largest batch any model accepts; dynamic batching groups requests up to it.
MAX_BATCH_SIZE = 8
#: How long the network waits to fill a batch. Small: on CPU a batch costs about the sum of its images.
MAX_QUEUE_DELAY_US = 2000
SCORE, MAP, LABEL, RAW_SCORE = "score", "anomaly_map", "label", "raw_score"
#: Input of the encoded-image ensemble: one encoded file per batch row.
ENCODED_INPUT = "image_bytes"


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
        """What clients call with decoded pixels."""
        return self.name

    @property
    def decoder(self) -> str:
        """The Python-backend step that decodes encoded images (image models only)."""
        return f"{self.name}_decoder"

    @property
    def encoded(self) -> str:
        """What clients call with encoded image files (PNG, JPEG, ...): decoder -> network -> scorer."""
        return f"{self.name}_encoded"

    def folders(self, *, encoded: bool) -> list[str]:
        """Every model folder of the detector (with the encoded-input pair when ``encoded``)."""
        base = [self.onnx, self.torchscript, self.scorer, self.ensemble]
        return [*base, self.decoder, self.encoded] if encoded else base


def torchscript_output_name(name: str, index: int) -> str:
    """Triton's PyTorch backend finds outputs by the ``<name>__<index>`` convention."""
    return f"{name}__{index}"


def _tensor(name: str, dtype: str, dims: tuple[int, ...]) -> str:
    return f'  {{ name: "{name}" data_type: TYPE_{dtype} dims: [ {", ".join(map(str, dims))} ] }}'


def _io(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def network_config(names: ModelNames, spec: NetworkSpec, *, torchscript: bool, threads: int) -> str:
    """Config of the network model.

    Args:
        names: Model names of the detector.
        spec: The network's input and outputs.
        torchscript: ``pytorch_libtorch`` with ``model.pt`` instead of ``onnxruntime_onnx`` with ``model.onnx``.
        threads: Intra-op threads per instance (the cores a CPU instance should use).

    Returns:
        The ``config.pbtxt`` text.
    """
    outputs = [
        _tensor(torchscript_output_name(o.name, i) if torchscript else o.name, o.datatype, o.dims)
        for i, o in enumerate(spec.outputs)
    ]
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
    inp = spec.input
    return (
        f'name: "{name}"\nplatform: "{platform}"\ndefault_model_filename: "{filename}"\n'
        f"max_batch_size: {MAX_BATCH_SIZE}\n"
        + _io("input", [_tensor(inp.name, inp.datatype, inp.dims)])
        + _io("output", outputs)
        + f"dynamic_batching {{ max_queue_delay_microseconds: {MAX_QUEUE_DELAY_US} }}\n"
        + "instance_group [ { count: 1 } ]\n"
        + params
        + "model_warmup [ {\n"
        + '  name: "zeros" batch_size: 1\n'
        + f'  inputs {{ key: "{inp.name}" value {{ data_type: TYPE_{inp.datatype} dims: [ {", ".join(map(str, inp.dims))} ] zero_data: true }} }}\n'
        + "} ]\n"
    )


def _scorer_outputs(spec: NetworkSpec) -> list[str]:
    outputs = [_tensor(SCORE, "FP32", (1,))]
    if spec.has_map:
        outputs.append(_tensor(MAP, "FP32", spec.outputs[1].dims))
    return [*outputs, _tensor(LABEL, "STRING", (1,)), _tensor(RAW_SCORE, "FP32", (1,))]


def scorer_config(names: ModelNames, spec: NetworkSpec) -> str:
    """Config of the Python-backend scorer (CPU: it is a few vectorised numpy operations)."""
    return (
        f'name: "{names.scorer}"\nbackend: "python"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
        + _io("input", [_tensor(o.name, o.datatype, o.dims) for o in spec.outputs])
        + _io("output", _scorer_outputs(spec))
        + "dynamic_batching { }\n"
        + "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )


def decoder_config(names: ModelNames, spec: NetworkSpec) -> str:
    """Config of the Python-backend decoder: encoded bytes in, the network's uint8 image out (CPU)."""
    inp = spec.input
    return (
        f'name: "{names.decoder}"\nbackend: "python"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
        + _io("input", [_tensor(ENCODED_INPUT, "STRING", (1,))])
        + _io("output", [_tensor(inp.name, inp.datatype, inp.dims)])
        + "dynamic_batching { }\n"
        + "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )


def _ensemble(name: str, spec: NetworkSpec, names: ModelNames, input_tensor: str, first: list[str]) -> str:
    """An ensemble whose steps are ``first`` (already formatted; they must produce ``spec.input.name``),
    then the network (ONNX), then the scorer."""
    inp = spec.input
    raw = {"pred_score": "raw_pred", "anomaly_map": "raw_map"}
    net_maps = "".join(f'      output_map {{ key: "{o.name}" value: "{raw[o.name]}" }}\n' for o in spec.outputs)
    scorer_in = "".join(f'      input_map {{ key: "{o.name}" value: "{raw[o.name]}" }}\n' for o in spec.outputs)
    scorer_out = [SCORE, MAP, LABEL, RAW_SCORE] if spec.has_map else [SCORE, LABEL, RAW_SCORE]
    scorer_maps = "".join(f'      output_map {{ key: "{n}" value: "{n}" }}\n' for n in scorer_out)
    steps = [
        *first,
        f'    {{ model_name: "{names.onnx}" model_version: -1\n'
        f'      input_map {{ key: "{inp.name}" value: "{inp.name}" }}\n' + net_maps.rstrip("\n") + " }",
        f'    {{ model_name: "{names.scorer}" model_version: -1\n' + scorer_in + scorer_maps.rstrip("\n") + " }",
    ]
    return (
        f'name: "{name}"\nplatform: "ensemble"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
        + _io("input", [input_tensor])
        + _io("output", _scorer_outputs(spec))
        + "ensemble_scheduling {\n  step [\n"
        + ",\n".join(steps)
        + "\n  ]\n}\n"
    )


def ensemble_config(names: ModelNames, spec: NetworkSpec) -> str:
    """Config of the ensemble: input -> network (ONNX) -> scorer.

    Every ensemble output comes from the scorer (which echoes the raw score): Triton 2.51 reports a deadlock
    when a client asks for a subset of outputs and the network's only output is both an ensemble output and
    the scorer's input.
    """
    inp = spec.input
    return _ensemble(names.ensemble, spec, names, _tensor(inp.name, inp.datatype, inp.dims), [])


def encoded_ensemble_config(names: ModelNames, spec: NetworkSpec) -> str:
    """Config of the encoded-input ensemble: image file bytes -> decoder -> network (ONNX) -> scorer."""
    decode = (
        f'    {{ model_name: "{names.decoder}" model_version: -1\n'
        f'      input_map {{ key: "{ENCODED_INPUT}" value: "{ENCODED_INPUT}" }}\n'
        f'      output_map {{ key: "{spec.input.name}" value: "{spec.input.name}" }} }}'
    )
    return _ensemble(names.encoded, spec, names, _tensor(ENCODED_INPUT, "STRING", (1,)), [decode])
