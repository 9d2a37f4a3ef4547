"""What a scoring run produces: one :class:`ImageResult` per file and the run's :class:`RunSummary`.

The reports (:mod:`client.reports`), the evaluation against ground truth (:mod:`client.evaluation`) and the
command line read them; the pipeline (:mod:`client.pipeline`) makes them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from kdcore.regions import Region

#: How the error of a file that was never sent (the server stayed unreachable) begins.
NOT_SCORED = "not scored"


def _array(**kwargs: Any) -> Any:
    """A result field holding an array: left out of the written rows and of the repr."""
    return field(default=None, repr=False, metadata={"array": True}, **kwargs)


@dataclass
class ImageResult:
    """The outcome for one file; ``status`` is ``"ok"`` or ``"error"`` (then ``error`` says why)."""

    path: str
    status: str
    score: float | None = None
    raw_score: float | None = None
    label: str | None = None
    latency_ms: float | None = None
    width: int | None = None
    height: int | None = None
    tiles: int = 1
    regions: list[Region] | None = None
    """The anomalous regions of the map (:mod:`kdcore.regions`), strongest first, in pixels of the image
    (``width`` x ``height``: rescaled from a map at the model's input size, found at full resolution on a tiled
    frame's stitched map); in pixels of the map when the image's size is unknown (encoded input without
    heatmaps). ``None`` when the run fetched no maps. Written as :class:`RegionsColumn`."""
    error: str | None = None
    anomaly_map: np.ndarray | None = _array()
    """Calibrated map in [0, 1]: the model's resolution, or the frame's when tiled. Only with ``maps``."""
    image: np.ndarray | None = _array()
    """The decoded RGB image. Only with ``keep_images``."""

    @property
    def ok(self) -> bool:
        """Whether the image was scored."""
        return self.status == "ok"

    def record(self) -> dict[str, Any]:
        """The row written to CSV / JSON lines (no arrays), keys in :data:`RECORD_FIELDS` order; the regions as a
        :class:`RegionsColumn`."""
        row = {name: getattr(self, name) for name in RECORD_FIELDS}
        if self.regions is not None:
            row["regions"] = RegionsColumn(self.regions)
        return row


class RegionsColumn(list):
    """An image's regions as a report column: ``results.jsonl`` holds the list of region objects (``{"x0", "y0",
    "x1", "y1", "area", "peak", "peak_x", "peak_y", "mean"}``, box end exclusive, scores to 6 decimals like the
    other columns) and ``results.csv``, which writes a value's text, their count."""

    def __init__(self, regions: list[Region]) -> None:
        super().__init__({**asdict(r), "peak": round(r.peak, 6), "mean": round(r.mean, 6)} for r in regions)

    def __str__(self) -> str:
        return str(len(self))


#: The fields of :class:`ImageResult` that are written to the reports, in order.
RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ImageResult) if not f.metadata.get("array"))


@dataclass
class RunSummary:
    """Counts, throughput and latency of one scoring run."""

    model: str
    protocol: str
    images: int = 0
    scored: int = 0
    errors: int = 0
    anomalous: int = 0
    normal: int = 0
    not_scored: int = 0
    retries: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def anomalous_fraction(self) -> float | None:
        """Anomalous share of the scored images."""
        return self.anomalous / self.scored if self.scored else None

    @property
    def images_per_second(self) -> float | None:
        """Scored images per second of the run."""
        return self.scored / self.seconds if self.seconds > 0 else None

    def latency(self) -> dict[str, float | None]:
        """Latency percentiles (p50, p95, p99) and mean in milliseconds (``None`` without scored images)."""
        lat = np.asarray(self.latencies_ms, dtype=np.float64)
        pct = {f"p{q}": float(np.percentile(lat, q)) if lat.size else None for q in (50, 95, 99)}
        return {**pct, "mean": float(lat.mean()) if lat.size else None}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary with the anomalous fraction, images/s and latency percentiles."""
        counts = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "latencies_ms"}
        return {**counts, "anomalous_fraction": self.anomalous_fraction,
                "images_per_second": self.images_per_second, "latency_ms": self.latency()}
