"""The repository manifest and validation samples: what the exporter leaves beside each detector for its clients.

Every detector's ensemble folder holds ``validation/manifest.json`` (:class:`Manifest`: the models that serve it,
its input, the tolerance and the export's parity figures) and ``validation/samples.npz`` (real inputs with the
outputs the server must give back, :class:`ValidationSamples`). The exporter writes them with this module; the
validator (``client.py``), the health check, the benchmarks and the fault injector read them with it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from kdcore.contract import BYTES, FP32, INTERVALS, LABEL, MAP, RAW_SCORE, SCORE, SIGNAL_INPUT, ModelNames, TensorSpec

#: Folder inside the ensemble's model folder that holds the client's validation samples.
VALIDATION_DIR = "validation"
SAMPLES_FILE = "samples.npz"
MANIFEST_FILE = "manifest.json"


class ManifestError(ValueError):
    """A manifest or samples file that is missing or malformed; the message names the file and the field."""


class Profiles(BaseModel):
    """The output-profile ensembles of an image detector (absent for vector detectors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    score: str | None = Field(None, description="score, label and raw score alone: no map computed")
    map8: str | None = Field(None, description="the map as UINT8 0..255")
    encoded_score: str | None = Field(None, description="encoded files in, the score alone out")
    fast: str | None = Field(None, description="the calibrated network: pixels in, score, decision (BOOL) and raw "
                             "score out, one ONNX model with no ensemble or Python step")


class ParityEntry(BaseModel):
    """Largest absolute difference per output between one export and eager torch, measured at export."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: str
    max_abs: dict[str, float]


class Manifest(BaseModel):
    """``<model>/validation/manifest.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model: str = Field(description="the ensemble that takes decoded pixels (or vectors)")
    networks: list[str] = Field(description="the network models (ONNX, TorchScript)")
    encoded_model: str | None = Field(None, description="the ensemble that takes encoded files (image models)")
    profiles: Profiles = Field(default_factory=Profiles)
    input: TensorSpec
    network_input: TensorSpec | None = Field(
        None, description="the networks' own input where a step in the ensemble makes it (the plot a time-series "
        "teacher reads, drawn by its renderer); None: the same as 'input'"
    )
    has_map: bool
    method: str
    atol: float = Field(gt=0, description="tolerance of served outputs against the stored references")
    image_threshold: float = Field(description="raw image threshold (labels within atol of it may flip)")
    test_image_auroc: float | None = None
    parity: list[ParityEntry] = Field(default_factory=list)

    @property
    def names(self) -> ModelNames:
        """The detector's model names."""
        return ModelNames(self.model)

    @property
    def ensemble_outputs(self) -> dict[str, str]:
        """The full ensemble's outputs and their datatypes."""
        maps = {MAP: FP32} if self.has_map else {}
        if self.is_series:
            maps[INTERVALS] = BYTES
        return {SCORE: FP32, **maps, LABEL: BYTES, RAW_SCORE: FP32}

    @property
    def is_series(self) -> bool:
        """Whether the detector scores time-series windows (per-step map and intervals)."""
        return self.input.name == SIGNAL_INPUT

    @property
    def network_spec_input(self) -> TensorSpec:
        """What the network models take (the ensemble's input unless a step makes it)."""
        return self.network_input or self.input

    @property
    def score_model(self) -> str:
        """The model that serves the score alone with the least work: the calibrated network, else the score-only
        ensemble, else the full ensemble (repositories exported before each existed)."""
        return self.profiles.fast or self.profiles.score or self.model

    @property
    def served_models(self) -> list[str]:
        """Every model a client may call for this detector (ensembles and networks)."""
        profiles = self.profiles
        extra = [m for m in (profiles.score, profiles.map8, profiles.encoded_score, profiles.fast) if m]
        return [self.model, *self.networks, *extra, *([self.encoded_model] if self.encoded_model else [])]

    @classmethod
    def load(cls, path: Path | str) -> Manifest:
        """Read and validate a manifest file.

        Raises:
            ManifestError: Unreadable or malformed; the message names the offending field.
        """
        path = Path(path)
        try:
            return cls.model_validate_json(path.read_text(encoding="utf-8"))
        except OSError as e:
            raise ManifestError(f"{path}: cannot read the manifest ({e.strerror})") from e
        except ValidationError as e:
            fields = "; ".join(f"field '{'.'.join(map(str, x['loc'])) or '<root>'}': {x['msg']}" for x in e.errors())
            raise ManifestError(f"{path}: invalid manifest: {fields}") from e

    def save(self, path: Path | str) -> Path:
        """Write atomically (a temporary file renamed into place)."""
        return _atomic_write(Path(path), self.model_dump_json(indent=2) + "\n")


def _atomic_write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


class ValidationSamples:
    """The exporter's validation inputs and reference outputs for one detector, with its manifest.

    Attributes:
        inputs: The ensemble's inputs (uint8 images, float32 vectors or float32 windows), batch first.
        network_inputs: The network models' inputs (the rendered plots of a time-series teacher; else ``inputs``).
        labels: 0 (good) / 1 (anomalous) per input.
        names: Where each input came from.
        raw_score, score, label: The reference outputs (raw, calibrated, label text).
        raw_map, anomaly_map: The raw and calibrated maps (image detectors only, else ``None``).
        manifest: The detector's :class:`Manifest`.
    """

    #: The arrays of ``samples.npz``: inputs, labels and names, then the references named like the outputs.
    ARRAYS = ("inputs", "labels", "names", RAW_SCORE, SCORE, LABEL, "raw_map", MAP, INTERVALS, "network_inputs")

    def __init__(self, manifest: Manifest, arrays: dict[str, np.ndarray]) -> None:
        self.manifest = manifest
        missing = [k for k in self.ARRAYS[:6] if k not in arrays]
        if missing:
            raise ManifestError(f"validation samples lack {missing}")
        self.inputs: np.ndarray = arrays["inputs"]
        self.labels: np.ndarray = arrays["labels"]
        self.names: np.ndarray = arrays["names"]
        self.raw_score: np.ndarray = arrays[RAW_SCORE]
        self.score: np.ndarray = arrays[SCORE]
        self.label: np.ndarray = arrays[LABEL]
        self.raw_map: np.ndarray | None = arrays.get("raw_map")
        self.anomaly_map: np.ndarray | None = arrays.get(MAP)
        self.network_inputs: np.ndarray = arrays.get("network_inputs", self.inputs)
        self.intervals: np.ndarray | None = arrays.get(INTERVALS)

    @property
    def outputs(self) -> dict[str, str]:
        """The ensemble's outputs and their datatypes."""
        return self.manifest.ensemble_outputs

    @classmethod
    def load(cls, folder: Path | str) -> ValidationSamples:
        """Read ``manifest.json`` and ``samples.npz`` from ``folder``.

        Raises:
            ManifestError: A file is missing or malformed.
        """
        folder = Path(folder)
        manifest = Manifest.load(folder / MANIFEST_FILE)
        try:
            with np.load(folder / SAMPLES_FILE, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as e:
            raise ManifestError(f"cannot read validation samples in {folder}: {e}") from e
        return cls(manifest, arrays)

    @staticmethod
    def save(folder: Path | str, manifest: Manifest, **arrays: Any) -> None:
        """Write the samples and the manifest into ``folder`` (the exporter's staging copy)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        unknown = set(arrays) - set(ValidationSamples.ARRAYS)
        if unknown:
            raise ValueError(f"unknown sample arrays {sorted(unknown)}")
        np.savez_compressed(folder / SAMPLES_FILE, **arrays)
        manifest.save(folder / MANIFEST_FILE)


def validation_folder(repository: Path | str, model: str) -> Path:
    """Where the exporter keeps ``model``'s manifest and samples."""
    return Path(repository) / model / VALIDATION_DIR


def discover(repository: Path | str) -> list[str]:
    """Detectors in ``repository`` (ensembles that carry the exporter's manifest), sorted."""
    return sorted(p.parent.parent.name for p in Path(repository).glob(f"*/{VALIDATION_DIR}/{MANIFEST_FILE}"))


def load_manifests(repository: Path | str, only: list[str] | None = None) -> list[Manifest]:
    """The manifests of ``repository``'s detectors (or of those named in ``only``), sorted by model name."""
    names = [m for m in discover(repository) if not only or m in only]
    return [Manifest.load(validation_folder(repository, m) / MANIFEST_FILE) for m in names]
