"""What the Python-based stand-in backends share: reading requests, batching them, isolating bad ones.

:func:`serving.embedded.prepare_backend_dir` copies this file beside each stand-in's ``model.py`` (a backend
folder is all Triton loads), so it imports nothing from this project.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def thread_count(config: dict, key: str) -> int:
    """Reads a thread count from the config ``parameters`` (always strings); 0 or absent means all cores."""
    value = config.get("parameters", {}).get(key, {}).get("string_value", "0")
    count = int(value) if value.strip() else 0
    return count if count > 0 else len(os.sched_getaffinity(0))


def error_response(message: str) -> "pb_utils.InferenceResponse":
    """Builds the error response for one request, leaving the others of its batch alone."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class BatchingModel:
    """Base of a stand-in ``TritonPythonModel``: one framework call per group of requests.

    A subclass sets ``model_name``, ``batched``, ``inputs`` and ``outputs`` (``(name, numpy dtype)`` lists, in
    the order the framework takes and returns them) in ``initialize`` and implements :meth:`_run`.
    """

    model_name: str
    batched: bool
    inputs: list
    outputs: list

    def _configure(self, args: dict, default_filename: str) -> tuple:
        """Parses the model config once: sets the names and dtypes; returns ``(config, model file path)``.

        Args:
            args: Triton's ``initialize`` arguments (``model_config`` JSON, ``model_repository``, ``model_version``).
            default_filename: The model file when the config names none.
        """
        config = json.loads(args["model_config"])
        self.model_name = config["name"]
        self.batched = config.get("max_batch_size", 0) > 0
        self.inputs = [(i["name"], pb_utils.triton_string_to_numpy(i["data_type"])) for i in config["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]
        filename = config.get("default_model_filename") or default_filename
        return config, os.path.join(args["model_repository"], args["model_version"], filename)

    def _run(self, arrays: list) -> list:
        """Runs the framework once on input arrays (in ``inputs`` order); returns outputs in ``outputs`` order."""
        raise NotImplementedError

    def _read(self, request) -> list:
        """Returns a request's inputs as numpy arrays in ``inputs`` order, checked against the config dtypes."""
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

    def _respond(self, arrays: list, wanted: set) -> "pb_utils.InferenceResponse":
        # Only what the caller asked for: an ensemble step that maps just the score skips copying the map.
        tensors = [
            pb_utils.Tensor(name, np.ascontiguousarray(array, dtype=dtype))
            for (name, dtype), array in zip(self.outputs, arrays)
            if not wanted or name in wanted
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _run_one(self, arrays: list, wanted: set) -> "pb_utils.InferenceResponse":
        try:
            return self._respond(self._run(arrays), wanted)
        except Exception as exc:  # The framework rejects e.g. a wrong shape: that request fails, the model stays up.
            return error_response(f"model '{self.model_name}': {exc}")

    def execute(self, requests: list) -> list:
        """Answers every request, running all batchable ones together in one framework call.

        Args:
            requests: The requests that the scheduler handed over together.

        Returns:
            One ``InferenceResponse`` per request, in order.
        """
        responses: list = [None] * len(requests)
        inputs = {}
        wanted = [set(request.requested_output_names()) for request in requests]
        for index, request in enumerate(requests):
            try:
                inputs[index] = self._read(request)
            except ValueError as exc:
                responses[index] = error_response(str(exc))

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
                    responses[i] = self._respond([p[k] for p in parts], wanted[i])

        for index, arrays in inputs.items():
            if responses[index] is None:
                responses[index] = self._run_one(arrays, wanted[index])
        return responses
