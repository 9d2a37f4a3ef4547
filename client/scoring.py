"""Scoring image files with a served detector: the library behind ``python client/client.py score``.

:func:`score_images` checks the served model, then runs a :class:`ScoringPipeline`: worker threads read and
prepare images (decode, resize or tile), the pipeline packs their units (whole images or tiles) into batches,
keeps ``concurrency`` requests in flight (:mod:`client.transport`) and hands each image's :class:`ImageResult` to
a callback as soon as its last batch returns, so reports stream while the run goes on. Files that cannot be
read or decoded, and requests the server refuses, become error results with the reason: they are counted,
never fatal. Ctrl-C stops submitting and returns what was scored, marked interrupted.

Example::

    from client.scoring import ScoreConfig, score_images

    summary = score_images(["line3/*.png"], ScoreConfig(model="ad_inference"), on_result=print)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, model_validator
from tritonclient.utils import InferenceServerException

from client.inputs import expand_inputs
from client.pipeline import MAX_BACKOFF, ScoringPipeline, StopOnCtrlC, Stopped
from client.results import ImageResult, RunSummary
from client.transport import Transport, connect
from kdcore.contract import IS_ANOMALOUS, LABEL, MAP, MAP_U8, PATCH_GRID_PARAMETER, RAW_SCORE, SCORE, ModelNames
from kdcore.stats import PatchGrid
from kdcore.tiling import TilingConfig, tiling_of

__all__ = ["DEFAULT_URLS", "ModelInfo", "ScoreConfig", "ScoringSetupError", "model_info", "score_images"]

DEFAULT_URLS = {"grpc": "localhost:8001", "http": "localhost:8000"}


class ScoringSetupError(ValueError):
    """The run cannot start: the options do not fit the served model (batch too large, no maps, not images)."""


class ScoreConfig(BaseModel):
    """How to reach the model and how hard to drive it (``client.py score`` has one option per field)."""

    model_config = {"extra": "forbid"}

    model: str = Field("ad_inference", description="ensemble to call (the pixel-input one; the encoded-input "
                       "ensembles, the output profiles and the calibrated network <model>_fast are found by its name)")
    protocol: Literal["grpc", "http"] = Field("grpc", description="wire protocol")
    url: str | None = Field(None, description=f"host:port of that protocol's endpoint (default {DEFAULT_URLS['grpc']} "
                            f"for gRPC, {DEFAULT_URLS['http']} for HTTP)")
    batch_size: int = Field(8, ge=1, description="images (or tiles) per request, at most the model's max batch")
    concurrency: int = Field(4, ge=1, le=256, description="requests kept in flight")
    timeout: float = Field(120.0, gt=0, description="seconds to wait for one reply")
    shared_memory: Literal["none", "system"] = Field(
        "none", description="'system': pass pixels and maps through POSIX shared memory (client and server on one host)"
    )
    encoded: bool = Field(False, description="send the files' bytes unchanged to <model>_encoded; the server decodes "
                          "and resizes them (less bandwidth; no tiling)")
    tiling: TilingConfig | None = Field(None, description="sliding windows for large frames")
    maps: bool = Field(False, description="request anomaly maps (heatmaps, pixel metrics)")
    map_format: Literal["fp32", "uint8"] = Field(
        "fp32", description="'uint8': maps as 0..255 from <model>_map8, a quarter of the bytes (resolution 1/255)"
    )
    keep_images: bool = Field(False, description="keep each decoded image on its result (heatmaps)")
    workers: int = Field(2, ge=1, le=64, description="threads reading and preparing images")
    retries: int = Field(6, ge=0, le=100, description="resends of a request while the server is unreachable; the "
                         "files still unscored after them are reported as not scored")
    backoff: float = Field(0.5, gt=0, description=f"seconds before the first resend, doubled each time (at most "
                           f"{MAX_BACKOFF:g} s)")
    tls_root: str | None = Field(None, description="PEM CA certificate: talk gRPC over TLS")

    @model_validator(mode="after")
    def _compatible(self) -> ScoreConfig:
        if self.encoded and self.tiling is not None:
            raise ValueError("tiling cuts decoded frames on the client: it cannot be combined with encoded input")
        if self.encoded and self.shared_memory != "none":
            raise ValueError("shared memory carries decoded pixels: it cannot be combined with encoded input")
        return self

    @property
    def endpoint(self) -> str:
        """The URL to use."""
        return self.url or DEFAULT_URLS[self.protocol]

    @property
    def candidates(self) -> list[str]:
        """Models that can serve these options, best first (repositories exported before the output profiles
        existed have only ``<model>``)."""
        names = ModelNames(self.model)
        if self.encoded:
            return [names.encoded] if self.maps else [names.encoded_score, names.encoded]
        if not self.maps:
            # The calibrated network first: one ONNX model, no ensemble or Python step (repositories exported
            # before it existed have the score-only ensemble, older ones only <model>).
            return [names.fast, names.score_only, names.ensemble]
        return [names.map8] if self.map_format == "uint8" else [names.ensemble]

    @property
    def map_output(self) -> str:
        """The output carrying the map."""
        return MAP_U8 if self.map_format == "uint8" and not self.encoded else MAP

    def outputs(self, served: str) -> list[str]:
        """The outputs to request from the ``served`` model (the calibrated network sends its decision as a
        boolean, the scorer's models as the label text)."""
        decision = IS_ANOMALOUS if served == ModelNames(self.model).fast else LABEL
        return [SCORE, RAW_SCORE, decision, *([self.map_output] if self.maps else [])]


@dataclass(frozen=True)
class ModelInfo:
    """What the client needs to know about the served model."""

    served: str
    input_name: str
    input_datatype: str
    size: int | None
    max_batch_size: int
    map_shape: tuple[int, ...] | None
    patch_grid: TilingConfig | None = None
    """The grid a patch-trained model was trained and calibrated on (from its ensemble config's
    :data:`~kdcore.contract.PATCH_GRID_PARAMETER`): frames are tiled by it unless the options tile otherwise."""


def patch_grid_of(model_config: dict) -> TilingConfig | None:
    """The patch grid a model config carries, as the client's tiling (``None`` for whole-image models)."""
    value = model_config.get("parameters", {}).get(PATCH_GRID_PARAMETER)
    if not value:
        return None
    return tiling_of(PatchGrid.model_validate_json(value.get("string_value") or value.get("stringValue")))


def model_info(config: ScoreConfig) -> ModelInfo:
    """Ask the server for the model's input, batch limit and map shape; raises if it is not ready."""
    client = connect(config.protocol, config.endpoint, timeout=config.timeout, tls_root=config.tls_root)
    try:
        served = next((m for m in config.candidates if client.is_model_ready(m)), None)
        if served is None:
            raise InferenceServerException(f"model '{config.candidates[0]}' is not ready on {config.endpoint}")
        kwargs = {"as_json": True} if config.protocol == "grpc" else {}
        meta = client.get_model_metadata(served, **kwargs)
        cfg = client.get_model_config(served, **kwargs)
        cfg = cfg.get("config", cfg)
        # The pixel ensemble's input tells the model's image size (the encoded ensembles take bytes), its config
        # the patch grid of a patch-trained model.
        base = client.get_model_metadata(config.model, **kwargs) if served != config.model else meta
        base_cfg = client.get_model_config(config.model, **kwargs) if served != config.model else {"config": cfg}
    finally:
        client.close()
    inp = meta["inputs"][0]
    shape = [int(d) for d in base["inputs"][0]["shape"]]
    outputs = {o["name"]: [int(d) for d in o["shape"]] for o in meta["outputs"]}
    return ModelInfo(
        served=served,
        input_name=inp["name"],
        input_datatype=inp["datatype"],
        size=shape[1] if len(shape) == 4 else None,
        max_batch_size=int(cfg.get("max_batch_size", cfg.get("maxBatchSize", 1)) or 1),
        map_shape=next((tuple(outputs[n][1:]) for n in (MAP, MAP_U8) if n in outputs), None),
        patch_grid=patch_grid_of(base_cfg.get("config", base_cfg)),
    )


def _check_fits(config: ScoreConfig, info: ModelInfo) -> None:
    """Raise :class:`ScoringSetupError` when the options cannot work with the served model."""
    if config.batch_size > info.max_batch_size:
        raise ScoringSetupError(f"batch size {config.batch_size} exceeds the model's max_batch_size "
                                f"{info.max_batch_size}")
    if config.maps and info.map_shape is None:
        raise ScoringSetupError(f"model '{config.model}' has no {MAP} output (a vector model?)")
    if info.size is None:
        raise ScoringSetupError(f"model '{config.model}' does not take images")


def score_images(
    inputs: Iterable[str | Path],
    config: ScoreConfig,
    on_result: Callable[[ImageResult], None],
    *,
    progress: bool = False,
) -> RunSummary:
    """Score every image of ``inputs`` (files, folders, globs); calls ``on_result`` once per file.

    Args:
        inputs: Files, folders (searched recursively) and glob patterns.
        config: Model, endpoint, batching, concurrency and options.
        on_result: Called in the calling thread for each file, as results arrive.
        progress: Show a progress bar with images/s on stderr.

    Returns:
        The run's :class:`RunSummary` (``interrupted`` when Ctrl-C stopped it).

    Raises:
        FileNotFoundError: ``inputs`` name no image.
        InferenceServerException: The server or model cannot be reached before the run starts.
        ScoringSetupError: The options do not fit the served model.
    """
    paths = expand_inputs(inputs)
    info = model_info(config)
    if info.patch_grid is not None and config.tiling is None:
        if config.encoded:
            raise ScoringSetupError(f"model '{config.model}' was trained on a patch grid: frames are tiled on the "
                                    "client, which encoded input cannot do (drop --encoded)")
        config = config.model_copy(update={"tiling": info.patch_grid})  # scored as it was trained and calibrated
    _check_fits(config, info)
    transport = Transport(
        config.protocol, config.endpoint, info.served,
        input_name=info.input_name, input_datatype=info.input_datatype, outputs=config.outputs(info.served),
        concurrency=config.concurrency, timeout=config.timeout, shared_memory=config.shared_memory,
        max_batch=config.batch_size, item_shape=(info.size, info.size, 3), map_shape=info.map_shape,
        tls_root=config.tls_root,
    )
    summary = RunSummary(model=info.served, protocol=config.protocol, images=len(paths))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(paths), unit="img", desc=f"scoring {info.served}", dynamic_ncols=True)
    start = time.perf_counter()
    pipeline = None
    try:
        with StopOnCtrlC() as stop:
            pipeline = ScoringPipeline(paths, config, info, transport, on_result, summary, stop, bar)
            pipeline.run()
    except (KeyboardInterrupt, Stopped):
        summary.interrupted = True
    finally:
        summary.seconds = time.perf_counter() - start
        if pipeline is not None:
            pipeline.close()
        transport.close()
        if bar is not None:
            bar.close()
    summary.not_scored = summary.images - summary.scored - summary.errors
    return summary
