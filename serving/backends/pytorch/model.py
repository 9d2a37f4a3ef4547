"""Python-based stand-in for Triton's ``pytorch`` (libtorch) backend.

Copied to ``<backend-directory>/pytorch/model.py``, this file *is* the backend named ``pytorch``, so a model
with ``platform: "pytorch_libtorch"`` (a TorchScript ``model.pt``) loads unchanged on the embedded CPU-only
server, as the NGC image ``nvcr.io/nvidia/tritonserver:24.10-py3`` loads it with its native backend.

Conventions (those of the native PyTorch backend, so one ``config.pbtxt`` serves both):
    * the model file is ``<model dir>/<version>/<default_model_filename or "model.pt">``;
    * inputs are bound to the ``forward`` arguments in order: by ``<name>__<index>`` when every input name has
      that form, otherwise in config order;
    * outputs are named ``<name>__<index>`` and take element ``index`` of the returned tuple (a single returned
      tensor is index 0);
    * ``parameters { key: "INTRA_OP_THREAD_COUNT" value: { string_value: "N" } }`` sets
      ``torch.set_num_threads``; absent or ``"0"`` means one per available core.
"""

import json
import os
import re

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

THREADS_KEY = "INTRA_OP_THREAD_COUNT"
_INDEXED = re.compile(r"^.+__(\d+)$")


def _thread_count(config: dict, key: str) -> int:
    """Reads a thread count from the config ``parameters`` (always strings); 0 or absent means all cores."""
    value = config.get("parameters", {}).get(key, {}).get("string_value", "0")
    count = int(value) if value.strip() else 0
    return count if count > 0 else len(os.sched_getaffinity(0))


def _index(name: str, default: int) -> int:
    match = _INDEXED.match(name)
    return int(match.group(1)) if match else default


def _error(message: str) -> "pb_utils.InferenceResponse":
    """Builds the error response for one request, leaving the others of its batch alone."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    """Runs a TorchScript module on the CPU, one forward call per batch of requests."""

    def initialize(self, args: dict) -> None:
        """Parses the model config once and loads the TorchScript module.

        Args:
            args: Triton's arguments; ``model_config`` (JSON), ``model_repository`` (this model's directory)
                and ``model_version`` are used.
        """
        config = json.loads(args["model_config"])
        self.model_name = config["name"]
        self.batched = config.get("max_batch_size", 0) > 0
        inputs = [(i["name"], pb_utils.triton_string_to_numpy(i["data_type"])) for i in config["input"]]
        if all(_INDEXED.match(name) for name, _ in inputs):
            inputs.sort(key=lambda item: _index(item[0], 0))
        self.inputs = inputs
        # (name, dtype, position in the returned tuple); without the suffix, config order decides.
        self.outputs = [
            (o["name"], pb_utils.triton_string_to_numpy(o["data_type"]), _index(o["name"], k))
            for k, o in enumerate(config["output"])
        ]
        filename = config.get("default_model_filename") or "model.pt"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        torch.set_num_threads(_thread_count(config, THREADS_KEY))
        self.module = torch.jit.load(path, map_location="cpu").eval()

    def _read(self, request) -> list:
        """Returns a request's inputs as numpy arrays in forward-argument order."""
        arrays = []
        for name, dtype in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"model '{self.model_name}': missing input '{name}'")
            array = tensor.as_numpy()
            if array.dtype != dtype:
                raise ValueError(f"model '{self.model_name}': input '{name}' is {array.dtype}, expected {dtype}")
            arrays.append(array)
        return arrays

    def _run(self, arrays: list) -> list:
        """Calls ``forward`` once and returns the configured outputs as numpy arrays."""
        with torch.inference_mode():
            result = self.module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        result = result if isinstance(result, (tuple, list)) else (result,)
        return [result[k].detach().cpu().numpy().astype(dtype, copy=False) for _, dtype, k in self.outputs]

    def _respond(self, arrays: list) -> "pb_utils.InferenceResponse":
        tensors = [pb_utils.Tensor(name, array) for (name, _, _), array in zip(self.outputs, arrays)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _run_one(self, arrays: list) -> "pb_utils.InferenceResponse":
        try:
            return self._respond(self._run(arrays))
        except Exception as exc:  # The module rejects e.g. a wrong shape: that request fails, the model stays up.
            return _error(f"model '{self.model_name}': {exc}")

    def execute(self, requests: list) -> list:
        """Answers every request, running all batchable ones together in one forward call.

        Args:
            requests: The requests that the scheduler handed over together.

        Returns:
            One ``InferenceResponse`` per request, in order.
        """
        responses: list = [None] * len(requests)
        inputs = {}
        for index, request in enumerate(requests):
            try:
                inputs[index] = self._read(request)
            except ValueError as exc:
                responses[index] = _error(str(exc))

        if self.batched and len(inputs) > 1:
            order = list(inputs)
            sizes = [len(inputs[i][0]) for i in order]
            try:
                joined = [np.concatenate([inputs[i][k] for i in order]) for k in range(len(self.inputs))]
                results = self._run(joined)
                if any(len(r) != sum(sizes) for r in results):
                    raise ValueError("an output's batch size differs from the input's")
            except Exception:
                # Shapes that do not stack, or one bad request: fall back to one call per request (below),
                # so that only the faulty request gets an error.
                pass
            else:
                bounds = np.cumsum(sizes)[:-1]
                parts = [np.split(r, bounds) for r in results]
                for k, i in enumerate(order):
                    responses[i] = self._respond([p[k] for p in parts])

        for index, arrays in inputs.items():
            if responses[index] is None:
                responses[index] = self._run_one(arrays)
        return responses

    def finalize(self) -> None:
        """Releases the module."""
        self.module = None
