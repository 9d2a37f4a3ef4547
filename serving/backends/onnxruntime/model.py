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

import os
import sys

import onnxruntime as ort
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batching import BatchingModel, thread_count  # noqa: E402  (copied beside this file)

THREADS_KEY = "intra_op_thread_count"


class TritonPythonModel(BatchingModel):
    """Runs an ONNX graph with ONNX Runtime on the CPU, one session run per batch of requests."""

    def initialize(self, args: dict) -> None:
        """Parses the model config once and opens the ONNX Runtime session.

        Args:
            args: Triton's arguments; ``model_config`` (JSON), ``model_repository`` (this model's directory)
                and ``model_version`` are used.
        """
        config, path = self._configure(args, "model.onnx")

        options = ort.SessionOptions()
        options.intra_op_num_threads = thread_count(config, THREADS_KEY)
        # Triton already runs model instances in parallel; inter-op threads would only oversubscribe the CPU.
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

        graph_inputs = {i.name for i in self.session.get_inputs()}
        graph_outputs = {o.name for o in self.session.get_outputs()}
        missing = [n for n, _ in self.inputs if n not in graph_inputs]
        missing += [n for n, _ in self.outputs if n not in graph_outputs]
        if missing:  # A config that does not match the graph breaks the whole model: fail the load.
            raise pb_utils.TritonModelException(f"{path}: the graph has no tensor named {missing}")

    def _run(self, arrays: list) -> list:
        """Runs the session once on inputs in config order; returns the outputs in config order."""
        feeds = {name: array for (name, _), array in zip(self.inputs, arrays)}
        return self.session.run([n for n, _ in self.outputs], feeds)

    def finalize(self) -> None:
        """Releases the session."""
        self.session = None
