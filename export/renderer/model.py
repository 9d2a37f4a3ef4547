"""Triton Python-backend renderer: time-series windows in, the plots the vision teacher reads out.

Shipped into ``<model>_renderer/1/`` beside the core modules it imports (``kdcore/``: the contract and
:mod:`kdcore.series_plot`, the project's one plot renderer), so the served teacher sees exactly the images it was
trained on, as the decoder step does for camera images. A window with NaN or infinite values fails its own request
with a message naming the row; other requests in the batch are answered. Wrong lengths and lead counts never get
here: Triton checks the input's shape against this model's config first.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The shipped kdcore package (beside this file) comes first, so the server draws as training did.
from kdcore.contract import PLOT_INPUT, SIGNAL_INPUT  # noqa: E402
from kdcore.series_plot import PlotSpec, render_plot  # noqa: E402


class TritonPythonModel:
    """Draws each window of each request (0.5 ms a window: nothing to vectorise)."""

    def initialize(self, args: dict[str, str]) -> None:
        """Read the plot's size from the model config's output."""
        config = json.loads(args["model_config"])
        output = next(o for o in config["output"] if o["name"] == PLOT_INPUT)
        self.spec = PlotSpec(size=int(output["dims"][0]))

    def execute(self, requests: list) -> list:
        """One response per request, in order."""
        responses = []
        for request in requests:
            windows = pb_utils.get_input_tensor_by_name(request, SIGNAL_INPUT).as_numpy()
            try:
                plots = np.stack([self._draw(i, w) for i, w in enumerate(windows)])
            except ValueError as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"renderer: {e}", pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(PLOT_INPUT, plots)]))
        return responses

    def _draw(self, index: int, window: np.ndarray) -> np.ndarray:
        try:
            return render_plot(window, self.spec)
        except ValueError as e:
            raise ValueError(f"row {index}: {e}") from e
