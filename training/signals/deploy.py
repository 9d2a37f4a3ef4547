"""The time-series detectors as they are deployed: a per-step logit network wrapped to the served outputs.

Both the recurrent student (signal in) and the vision teacher (plot in) answer the contract's raw outputs: the
window's raw score (its highest step logit, ``(N, 1)``) and the raw per-step scores (the logits, ``(N, T)``). The
scorer calibrates the per-step scores with the stats JSON's per-step calibration and the window score with the
window calibration (:mod:`kdcore.stats`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from kdcore.contract import NetworkSpec, plot_network_spec, signal_network_spec
from kdcore.stats import Stats, load_stats
from training.runs import RunPaths

#: ``model.method`` of the time-series detectors in the stats JSON.
STUDENT_METHOD, TEACHER_METHOD, VLM_TEACHER_METHOD = "recurrent_student", "plot_teacher", "vlm_teacher"


class SeriesDetector(nn.Module):
    """Wraps a network that returns per-step logits ``(N, T)`` into ``(window score (N, 1), per-step (N, T))``."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The raw outputs of the contract, in :func:`~kdcore.contract.signal_network_spec` order.

        A window with a NaN or infinite value gets NaN outputs, which the scorer refuses with an error: ONNX
        Runtime's LSTM turns such input into finite garbage, which would otherwise be served as a score.
        """
        logits = self.network(x)
        if x.is_floating_point():  # the signal (a plot is uint8: always finite)
            broken = ~torch.isfinite(x.flatten(1)).all(1, keepdim=True)
            logits = logits.masked_fill(broken, float("nan"))
        return logits.amax(1, keepdim=True), logits


def build_network(method: str, config: dict, *, steps: int, channels: int) -> nn.Module:
    """The bare network of a run (weights not loaded) from its saved training config.

    Raises:
        ValueError: An unknown method.
    """
    if method == STUDENT_METHOD:
        from training.signals.student import RecurrentStudent

        return RecurrentStudent(channels, config["hidden"], config["layers"], config["dropout"])
    if method == TEACHER_METHOD:
        from training.backbones import build_encoder
        from training.signals.teacher import PlotTeacher

        # The encoder's weights are part of the run's state dict: the random initialisation is overwritten.
        return PlotTeacher(build_encoder(config["backbone"], allow_random_init=True), channels, steps)
    if method == VLM_TEACHER_METHOD:
        from training.signals.vlm import load_vlm_teacher

        # The frozen model is read from the user's folder again; the run holds the trained head only.
        return load_vlm_teacher(Path(config["vlm"]), steps)
    raise ValueError(f"unknown time-series method {method!r}")


def series_spec(stats: Stats) -> NetworkSpec:
    """The served network's input and outputs for a time-series run's stats JSON."""
    info = stats.model
    if info.plot_size is not None:
        return plot_network_spec(info.plot_size, info.input_size)
    return signal_network_spec(info.input_size, int(info.channels))


def load_series_detector(run_dir: Path) -> tuple[nn.Module, NetworkSpec, Stats]:
    """A finished time-series run as it is deployed (eval mode), with its spec and validated stats.

    Raises:
        FileNotFoundError: The run folder is incomplete.
        StatsError: Its stats JSON is malformed.
    """
    paths = RunPaths(Path(run_dir))
    stats = load_stats(paths.stats)
    config = json.loads(paths.config.read_text())
    network = build_network(stats.model.method, config, steps=stats.model.input_size, channels=int(stats.model.channels))
    trained = network.head if stats.model.method == VLM_TEACHER_METHOD else network
    trained.load_state_dict(load_file(str(paths.weights)), strict=True)
    return SeriesDetector(network).eval(), series_spec(stats), stats
