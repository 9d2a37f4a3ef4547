"""Triton Python-backend adapter for the scorer: raw network outputs in, calibrated outputs out.

Shipped into ``<scorer model>/1/`` beside the core modules it imports (``kdcore/``: the contract, the stats schema,
the scorer and the intervals and regions it reports); the stats JSON sits in the model's own folder (``<scorer model>/stats.json``). A malformed stats JSON makes the model fail to load with a message that
names the field; a bad request gets its own error response and the others in the batch are still answered.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The shipped kdcore package (beside this file) comes first, so the scorer runs the code it was exported with.
from kdcore.contract import (  # noqa: E402
    INTERVALS,
    LABEL,
    MAP,
    MAP_U8,
    RAW_MAP,
    RAW_PRED,
    RAW_SCORE,
    REGIONS,
    SCORE,
    SCORER_STATS_FILE,
)
from kdcore.scorer import ScoredBatch, Scorer, ScorerInputError, map_to_uint8  # noqa: E402
from kdcore.stats import load_stats  # noqa: E402


class TritonPythonModel:
    """Calibrates every request that arrives in one ``execute`` call in one vectorised pass."""

    def initialize(self, args: dict[str, str]) -> None:
        """Load the stats JSON once; raising here keeps the model unloaded with the reason in the log."""
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], SCORER_STATS_FILE)
        self.scorer = Scorer(load_stats(path))
        self.output_dtypes = {
            o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]
        }

    def execute(self, requests: list) -> list:
        """One response per request, in order; all requests calibrated in one vectorised pass."""
        responses: list = [None] * len(requests)
        scores, maps, owners = [], [], []
        wanted = [set(r.requested_output_names()) or set(self.output_dtypes) for r in requests]
        for i, request in enumerate(requests):
            raw_score = pb_utils.get_input_tensor_by_name(request, RAW_PRED).as_numpy()
            raw_map = None
            map_tensor = pb_utils.get_input_tensor_by_name(request, RAW_MAP) if self.scorer.has_map else None
            # The map is optional: the score-only ensemble does not send it, and then none is computed.
            if map_tensor is not None and wanted[i] & {MAP, MAP_U8, INTERVALS, REGIONS}:
                raw_map = map_tensor.as_numpy()
                if raw_score.shape[0] != raw_map.shape[0]:
                    responses[i] = _error(f"{RAW_PRED} has {raw_score.shape[0]} rows, {RAW_MAP} {raw_map.shape[0]}")
                    continue
            scores.append(raw_score)
            maps.append(raw_map)
            owners.append(i)
        if not owners:
            return responses
        with_map = [m is not None for m in maps]
        try:
            if any(with_map) and not all(with_map):
                raise ScorerInputError("mixed")  # some requests want maps, some not: score them one by one
            batch = self.scorer(np.concatenate(scores), np.concatenate(maps) if all(with_map) else None)
        except ScorerInputError:
            batch = None  # find the offending request(s) one by one instead of failing them all
        start = 0
        for i, s, m in zip(owners, scores, maps):
            n = s.shape[0]
            try:
                one = self.scorer(s, m) if batch is None else _rows(batch, start, start + n)
                responses[i] = self._response(one, s, wanted[i])
            except ScorerInputError as e:
                responses[i] = _error(str(e))
            start += n
        return responses

    def _response(self, scored: ScoredBatch, raw_score: np.ndarray, wanted: set):
        values = {SCORE: scored.score, LABEL: scored.label, RAW_SCORE: raw_score}
        if scored.anomaly_map is not None:
            values[MAP] = scored.anomaly_map
            if MAP_U8 in wanted:
                values[MAP_U8] = map_to_uint8(scored.anomaly_map)
            if INTERVALS in wanted and INTERVALS in self.output_dtypes:
                values[INTERVALS] = self.scorer.intervals(scored.anomaly_map)
            if REGIONS in wanted and REGIONS in self.output_dtypes:  # connected components: only when asked
                values[REGIONS] = self.scorer.regions(scored.anomaly_map)
        # raw_score is echoed so that every ensemble output comes from this step (see export/triton_config.py).
        tensors = [
            pb_utils.Tensor(name, value.astype(self.output_dtypes[name]))
            for name, value in values.items()
            if name in wanted and name in self.output_dtypes
        ]
        return pb_utils.InferenceResponse(output_tensors=tensors)


def _rows(batch: ScoredBatch, start: int, stop: int) -> ScoredBatch:
    return ScoredBatch(
        score=batch.score[start:stop],
        anomaly_map=None if batch.anomaly_map is None else batch.anomaly_map[start:stop],
        label=batch.label[start:stop],
    )


def _error(message: str):
    return pb_utils.InferenceResponse(
        error=pb_utils.TritonError(f"scorer: {message}", pb_utils.TritonError.INVALID_ARG)
    )
