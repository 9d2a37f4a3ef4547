"""``config.pbtxt`` for the four models of one detector: the network (ONNX and TorchScript), the scorer and
the ensemble that chains them.

The same files load on the NGC image (native ``onnxruntime`` / ``pytorch`` backends) and on the embedded server
(Python-based stand-ins with those backend names, see :mod:`serving.embedded`). Instance kinds are left to
Triton where the model can run on either device (GPU when present, else CPU).
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, Field

from kdcore.contract import (
    BYTES,
    ENCODED_INPUT,
    FP32,
    FULL_PROFILE,
    INTERVALS,
    LABEL,
    MAP,
    MAP_U8,
    PROFILES,
    RAW_MAP,
    RAW_PRED,
    RAW_SCORE,
    REGIONS,
    SCORE,
    UINT8,
    PLOT_INPUT,
    ModelNames,
    NetworkSpec,
    TensorSpec,
    encoded_input_spec,
    torchscript_output_name,
)

#: Largest batch any model accepts; dynamic batching groups requests up to it.
MAX_BATCH_SIZE = 8
#: How long the network waits to fill a batch: none. On CPU a batch costs about the sum of its images, so waiting
#: only adds latency (2 ms measured at concurrency 1, see bench/serving.py); under load, requests that queue while
#: an instance is busy still go in one batch.
MAX_QUEUE_DELAY_US = 0


class ServingConfig(BaseModel):
    """How the network models run: instances, threads, batching delay and GPU acceleration.

    The defaults favour latency on a CPU: one instance using every core (``threads=None``). Several instances of
    one thread each trade single-request latency for throughput under load (bench/serving.py measures both).
    """

    model_config = {"extra": "forbid", "frozen": True}

    instances: int = Field(1, ge=1, le=64, description="network instances (run in parallel)")
    threads: int | None = Field(None, ge=1, description="intra-op threads per instance (default: cores / instances)")
    max_queue_delay_us: int = Field(MAX_QUEUE_DELAY_US, ge=0, description="wait to fill a batch (microseconds)")
    gpu: Literal["none", "cuda", "tensorrt"] = Field(
        "none", description="ONNX Runtime accelerator on a GPU server: 'cuda' or 'tensorrt' (FP16); ignored on CPU",
    )

    def threads_per_instance(self, cores: int) -> int:
        """Intra-op threads for each instance on a machine with ``cores`` cores."""
        return self.threads or max(1, cores // self.instances)


def _tensor(name: str, dtype: str, dims: tuple[int, ...]) -> str:
    # Configs spell KServe's BYTES as TYPE_STRING.
    kind = "STRING" if dtype == BYTES else dtype
    return f'  {{ name: "{name}" data_type: TYPE_{kind} dims: [ {", ".join(map(str, dims))} ] }}'


def _spec_tensor(spec: TensorSpec) -> str:
    return _tensor(spec.name, spec.datatype, spec.dims)


def _io(kind: str, tensors: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(tensors) + "\n]\n"


def _gpu_accelerator(gpu: str) -> str:
    """ONNX Runtime's GPU execution provider for the native backend; a CPU instance ignores it."""
    if gpu == "none":
        return ""
    if gpu == "cuda":
        return "optimization { execution_accelerators { gpu_execution_accelerator : [ { name : \"cuda\" } ] } }\n"
    return (
        "optimization { execution_accelerators { gpu_execution_accelerator : [ {\n"
        '  name : "tensorrt"\n'
        '  parameters { key: "precision_mode" value: "FP16" }\n'
        '  parameters { key: "max_workspace_size_bytes" value: "1073741824" }\n'
        '  parameters { key: "trt_engine_cache_enable" value: "1" }\n'
        '  parameters { key: "trt_engine_cache_path" value: "/tmp/kd-trt-cache" }\n'
        "} ] } }\n"
    )


def network_config(
    name: str, spec: NetworkSpec, *, torchscript: bool, threads: int, serving: ServingConfig | None = None
) -> str:
    """Config of a network model: ``<model>_onnx``, ``<model>_torchscript``, or the calibrated ``<model>_fast``.

    Args:
        name: The model's name.
        spec: The network's input and outputs.
        torchscript: ``pytorch_libtorch`` with ``model.pt`` instead of ``onnxruntime_onnx`` with ``model.onnx``.
        threads: Intra-op threads per instance (the cores a CPU instance should use).
        serving: Instances, batching delay and GPU accelerator (defaults: :class:`ServingConfig`).

    Returns:
        The ``config.pbtxt`` text.
    """
    serving = serving or ServingConfig()
    outputs = [
        _tensor(torchscript_output_name(o.name, i) if torchscript else o.name, o.datatype, o.dims)
        for i, o in enumerate(spec.outputs)
    ]
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
        + f"dynamic_batching {{ max_queue_delay_microseconds: {serving.max_queue_delay_us} }}\n"
        + f"instance_group [ {{ count: {serving.instances} }} ]\n"
        + params
        + ("" if torchscript else _gpu_accelerator(serving.gpu))
        + "model_warmup [ {\n"
        + '  name: "zeros" batch_size: 1\n'
        + f'  inputs {{ key: "{inp.name}" value {{ data_type: TYPE_{inp.datatype} dims: [ {", ".join(map(str, inp.dims))} ] zero_data: true }} }}\n'
        + "} ]\n"
    )


def _scorer_tensors(spec: NetworkSpec) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every output the scorer can produce for this network: name -> (datatype, dims)."""
    tensors = {SCORE: (FP32, (1,))}
    if spec.is_series:  # per-step scores and the intervals they make; no UINT8 map (a row is only T floats)
        tensors.update({MAP: (FP32, spec.map_dims), INTERVALS: (BYTES, (1,))})
    elif spec.has_map:  # the map, as FP32 and UINT8, and the regions it makes (JSON, one row per image)
        tensors.update({MAP: (FP32, spec.map_dims), MAP_U8: (UINT8, spec.map_dims), REGIONS: (BYTES, (1,))})
    return {**tensors, LABEL: (BYTES, (1,)), RAW_SCORE: (FP32, (1,))}


def _scorer_output_names(spec: NetworkSpec, only: tuple[str, ...] | None = None) -> list[str]:
    available = _scorer_tensors(spec)
    return [n for n in (only or available) if n in available]


def _scorer_outputs(spec: NetworkSpec, only: tuple[str, ...] | None = None) -> list[str]:
    available = _scorer_tensors(spec)
    return [_tensor(n, *available[n]) for n in _scorer_output_names(spec, only)]


def scorer_config(names: ModelNames, spec: NetworkSpec) -> str:
    """Config of the Python-backend scorer (CPU: it is a few vectorised numpy operations).

    The raw map input is optional: the score-only ensemble leaves it out and the scorer then computes no map.
    """
    inputs = [_tensor(o.name, o.datatype, o.dims) for o in spec.outputs]
    if spec.has_map:
        inputs[1] = inputs[1].replace(" }", " optional: true }")
    return (
        f'name: "{names.scorer}"\nbackend: "python"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
        + _io("input", inputs)
        + _io("output", _scorer_outputs(spec))
        + "dynamic_batching { }\n"
        + "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )


def decoder_config(names: ModelNames, spec: NetworkSpec) -> str:
    """Config of the Python-backend decoder: encoded bytes in, the network's uint8 image out (CPU)."""
    inp = spec.input
    return (
        f'name: "{names.decoder}"\nbackend: "python"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
        + _io("input", [_spec_tensor(encoded_input_spec())])
        + _io("output", [_tensor(inp.name, inp.datatype, inp.dims)])
        + "dynamic_batching { }\n"
        + "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )


def _ensemble(
    name: str, spec: NetworkSpec, names: ModelNames, input_tensor: str, first: list[str], profile: str = FULL_PROFILE
) -> str:
    """An ensemble whose steps are ``first`` (already formatted; they must produce ``spec.input.name``),
    then the network (ONNX), then the scorer, returning the scorer outputs of ``profile`` (see :data:`PROFILES`).

    Triton asks each step for every output its ``output_map`` names, whatever the client requested: so the
    score-only profile maps neither the network's raw map nor a scorer map, and no map is computed or copied.
    """
    inp = spec.input
    outputs = _scorer_outputs(spec, PROFILES[profile])
    scorer_out = _scorer_output_names(spec, PROFILES[profile])
    needs_map = spec.has_map and bool({MAP, MAP_U8, INTERVALS, REGIONS} & set(scorer_out))
    # Ensemble-internal tensor names: the network's raw outputs on their way to the scorer.
    raw = {RAW_PRED: "raw_pred", RAW_MAP: "raw_map"}
    used = [o for o in spec.outputs if o.name == RAW_PRED or needs_map]
    net_maps = "".join(f'      output_map {{ key: "{o.name}" value: "{raw[o.name]}" }}\n' for o in used)
    scorer_in = "".join(f'      input_map {{ key: "{o.name}" value: "{raw[o.name]}" }}\n' for o in used)
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
        + _io("output", outputs)
        + "ensemble_scheduling {\n  step [\n"
        + ",\n".join(steps)
        + "\n  ]\n}\n"
    )


def config_parameters(parameters: dict[str, str]) -> str:
    """``parameters`` entries of a config (string values): what a client reads from the server about the model."""
    return "".join(f'parameters {{ key: "{k}" value: {{ string_value: {json.dumps(v)} }} }}\n'
                   for k, v in parameters.items())


def ensemble_config(names: ModelNames, spec: NetworkSpec, signal: TensorSpec | None = None,
                    parameters: dict[str, str] | None = None) -> str:
    """Config of the ensemble: input -> network (ONNX) -> scorer; for a plot-reading time-series network
    (``spec.input`` is the plot), ``signal`` is what clients send: signal -> renderer -> network -> scorer.

    Every ensemble output comes from the scorer (which echoes the raw score): Triton 2.51 reports a deadlock
    when a client asks for a subset of outputs and the network's only output is both an ensemble output and
    the scorer's input.
    """
    inp = spec.input
    extra = config_parameters(parameters or {})
    if inp.name != PLOT_INPUT:
        return _ensemble(names.ensemble, spec, names, _tensor(inp.name, inp.datatype, inp.dims), []) + extra
    if signal is None:
        raise ValueError("a plot-reading network's ensemble needs the signal it is drawn from")
    render = (
        f'    {{ model_name: "{names.renderer}" model_version: -1\n'
        f'      input_map {{ key: "{signal.name}" value: "{signal.name}" }}\n'
        f'      output_map {{ key: "{PLOT_INPUT}" value: "{PLOT_INPUT}" }} }}'
    )
    return _ensemble(names.ensemble, spec, names, _spec_tensor(signal), [render]) + extra


def renderer_config(names: ModelNames, spec: NetworkSpec, signal: TensorSpec) -> str:
    """Config of the Python-backend renderer: float32 windows in, the plot-reading network's uint8 plot out (CPU)."""
    inp = spec.input
    return (
        f'name: "{names.renderer}"\nbackend: "python"\nmax_batch_size: {MAX_BATCH_SIZE}\n'
        + _io("input", [_spec_tensor(signal)])
        + _io("output", [_tensor(inp.name, inp.datatype, inp.dims)])
        + "dynamic_batching { }\n"
        + "instance_group [ { count: 1 kind: KIND_CPU } ]\n"
    )


def profile_ensemble_config(names: ModelNames, spec: NetworkSpec, profile: str) -> str:
    """Config of an output-profile ensemble of an image detector: ``score`` (no map) or ``map8`` (UINT8 map)."""
    inp = spec.input
    name = names.profile(profile)
    return _ensemble(name, spec, names, _tensor(inp.name, inp.datatype, inp.dims), [], profile)


def encoded_ensemble_config(names: ModelNames, spec: NetworkSpec, profile: str = FULL_PROFILE) -> str:
    """Config of an encoded-input ensemble: image file bytes -> decoder -> network (ONNX) -> scorer, with the
    outputs of ``profile`` (``full``: ``<name>_encoded``; ``score``: ``<name>_encoded_score``)."""
    decode = (
        f'    {{ model_name: "{names.decoder}" model_version: -1\n'
        f'      input_map {{ key: "{ENCODED_INPUT}" value: "{ENCODED_INPUT}" }}\n'
        f'      output_map {{ key: "{spec.input.name}" value: "{spec.input.name}" }} }}'
    )
    name = names.profile(profile, encoded=True)
    return _ensemble(name, spec, names, _spec_tensor(encoded_input_spec()), [decode], profile)
