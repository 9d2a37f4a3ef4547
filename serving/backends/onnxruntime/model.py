"""Python-based stand-in for Triton's ``onnxruntime`` backend.

Copied to ``<backend-directory>/onnxruntime/model.py``, this file *is* the backend named ``onnxruntime``, so a
model with ``platform: "onnxruntime_onnx"`` loads unchanged on the embedded CPU-only server, exactly as the NGC
image ``nvcr.io/nvidia/tritonserver:24.10-py3`` loads it with its native backend.

Conventions (those of the native backend, so one ``config.pbtxt`` serves both):
    * the model file is ``<model dir>/<version>/<default_model_filename or "model.onnx">``;
    * inputs and outputs are matched to the graph by name, dtypes come from the model config;
    * ``parameters { key: "intra_op_thread_count" value: { string_value: "N" } }`` sets ONNX Runtime's
      intra-op threads; absent or ``"0"`` means one per available core.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

THREADS_KEY = "intra_op_thread_count"


def _thread_count(config: dict, key: str) -> int:
    """Reads a thread count from the config ``parameters`` (always strings); 0 or absent means all cores."""
    value = config.get("parameters", {}).get(key, {}).get("string_value", "0")
    count = int(value) if value.strip() else 0
    return count if count > 0 else len(os.sched_getaffinity(0))


def _error(message: str) -> "pb_utils.InferenceResponse":
    """Builds the error response for one request, leaving the others of its batch alone."""
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, pb_utils.TritonError.INVALID_ARG))


class TritonPythonModel:
    """Runs an ONNX graph with ONNX Runtime on the CPU, one session run per batch of requests."""

    def initialize(self, args: dict) -> None:
        """Parses the model config once and opens the ONNX Runtime session.

        Args:
            args: Triton's arguments; ``model_config`` (JSON), ``model_repository`` (this model's directory)
                and ``model_version`` are used.
        """
        config = json.loads(args["model_config"])
        self.model_name = config["name"]
        self.batched = config.get("max_batch_size", 0) > 0
        self.inputs = [(i["name"], pb_utils.triton_string_to_numpy(i["data_type"])) for i in config["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)

        options = ort.SessionOptions()
        options.intra_op_num_threads = _thread_count(config, THREADS_KEY)
        # Triton already runs model instances in parallel; inter-op threads would only oversubscribe the CPU.
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n, _ in self.inputs if n not in graph_inputs]
        missing += [n for n, _ in self.outputs if n not in graph_outputs]
        if missing:  # A config that does not match the graph breaks the whole model: fail the load.
            raise pb_utils.TritonModelException(f"{path}: the graph has no tensor named {missing}")

    def _read(self, request) -> dict:
        """Returns a request's inputs as numpy arrays, checked against the config dtypes."""
        feeds = {}
        for name, dtype in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"model '{self.model_name}': missing input '{name}'")
            array = tensor.as_numpy()
            if array.dtype != dtype:
                raise ValueError(f"model '{self.model_name}': input '{name}' is {array.dtype}, expected {dtype}")
            feeds[name] = array
        return feeds

    def _run(self, feeds: dict) -> list:
        """Runs the session once and casts the results to the config output dtypes."""
        results = self.session.run([n for n, _ in self.outputs], feeds)
        return [np.ascontiguousarray(r, dtype=dtype) for r, (_, dtype) in zip(results, self.outputs)]

    def _respond(self, arrays: list) -> "pb_utils.InferenceResponse":
        tensors = [pb_utils.Tensor(name, array) for (name, _), array in zip(self.outputs, arrays)]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _run_one(self, feeds: dict) -> "pb_utils.InferenceResponse":
        try:
            return self._respond(self._run(feeds))
        except Exception as exc:  # ORT rejects e.g. a wrong shape: that request fails, the model stays up.
            return _error(f"model '{self.model_name}': {exc}")

    def execute(self, requests: list) -> list:
        """Answers every request, running all batchable ones together in one session run.

        Args:
            requests: The requests that the scheduler handed over together.

        Returns:
            One ``InferenceResponse`` per request, in order.
        """
        responses: list = [None] * len(requests)
        feeds = {}
        for index, request in enumerate(requests):
            try:
                feeds[index] = self._read(request)
            except ValueError as exc:
                responses[index] = _error(str(exc))

        if self.batched and len(feeds) > 1:
            order = list(feeds)
            sizes = [len(feeds[i][self.inputs[0][0]]) for i in order]
            try:
                joined = {n: np.concatenate([feeds[i][n] for i in order]) for n, _ in self.inputs}
                results = self._run(joined)
                if any(len(r) != sum(sizes) for r in results):
                    raise ValueError("an output's batch size differs from the input's")
            except Exception:
                # Shapes that do not stack, or one bad request: fall back to one run per request (below),
                # so that only the faulty request gets an error.
                pass
            else:
                bounds = np.cumsum(sizes)[:-1]
                parts = [np.split(r, bounds) for r in results]
                for k, i in enumerate(order):
                    responses[i] = self._respond([p[k] for p in parts])

        for index, request_feeds in feeds.items():
            if responses[index] is None:
                responses[index] = self._run_one(request_feeds)
        return responses

    def finalize(self) -> None:
        """Releases the session."""
        self.session = None
