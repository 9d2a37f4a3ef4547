"""Triton Python-backend decoder: encoded image files (PNG, JPEG, ...) in, the network's uint8 RGB input out.

Shipped into ``<model>_decoder/1/`` beside the core modules it imports (``kdcore/``: the contract and
:mod:`kdcore.imageio`, the project's one definition of how a file becomes a model input), so images decoded here
match the ones training saw. A camera stream then
sends its JPEG bytes (a fraction of the raw pixels) and the server does the rest. A file that does not decode
fails its own request with a message naming the row and the reason; other requests in the batch are answered.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The shipped kdcore package (beside this file) comes first, so the server decodes as training did.
from kdcore.contract import ENCODED_INPUT  # noqa: E402
from kdcore.imageio import ImageDecodeError, decode_image, resize_to  # noqa: E402


class TritonPythonModel:
    """Decodes and resizes each row of each request; rows are independent, so there is nothing to vectorise."""

    def initialize(self, args: dict[str, str]) -> None:
        """Read the output's name and square size from the model config."""
        config = json.loads(args["model_config"])
        output = config["output"][0]
        self.output_name = output["name"]
        self.size = int(output["dims"][0])

    def execute(self, requests: list) -> list:
        """One response per request, in order."""
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, ENCODED_INPUT).as_numpy().reshape(-1)
            try:
                images = np.stack([self._decode(i, row) for i, row in enumerate(rows)])
            except ValueError as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"decoder: {e}", pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, images)]))
        return responses

    def _decode(self, index: int, data) -> np.ndarray:
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError(f"row {index}: expected encoded image bytes, got {type(data).__name__}")
        try:
            image = decode_image(bytes(data))
        except ImageDecodeError as e:  # OpenCV's own pixel limit guards against decompression bombs
            raise ValueError(f"row {index}: {e}") from e
        return resize_to(image, self.size)
