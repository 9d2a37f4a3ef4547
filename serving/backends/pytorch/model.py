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

import os
import re
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from batching import BatchingModel, thread_count  # noqa: E402  (copied beside this file)

THREADS_KEY = "INTRA_OP_THREAD_COUNT"
_INDEXED = re.compile(r"^.+__(\d+)$")


def _index(name: str, default: int) -> int:
    match = _INDEXED.match(name)
    return int(match.group(1)) if match else default


class TritonPythonModel(BatchingModel):
    """Runs a TorchScript module on the CPU, one forward call per batch of requests."""

    def initialize(self, args: dict) -> None:
        """Parses the model config once and loads the TorchScript module.

        Args:
            args: Triton's arguments; ``model_config`` (JSON), ``model_repository`` (this model's directory)
                and ``model_version`` are used.
        """
        config, path = self._configure(args, "model.pt")
        if all(_INDEXED.match(name) for name, _ in self.inputs):
            self.inputs.sort(key=lambda item: _index(item[0], 0))
        # Which element of the returned tuple each output is; without the suffix, config order decides.
        self.positions = [_index(o["name"], k) for k, o in enumerate(config["output"])]
        torch.set_num_threads(thread_count(config, THREADS_KEY))
        self.module = torch.jit.load(path, map_location="cpu").eval()

    def _run(self, arrays: list) -> list:
        """Calls ``forward`` once and returns the configured outputs as numpy arrays."""
        with torch.inference_mode():
            result = self.module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays])
        result = result if isinstance(result, (tuple, list)) else (result,)
        return [result[k].detach().cpu().numpy() for k in self.positions]

    def finalize(self) -> None:
        """Releases the module."""
        self.module = None
