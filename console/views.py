"""What the console's page shows, as plain functions over the served models: the page (``console/app.py``) only lays
them out, and the tests call them against a real server.

Everything goes through the project's client (:mod:`client.scoring`, :mod:`client.heatmaps`) and the repository's
manifests and stats JSON (:mod:`kdcore.manifest`, :mod:`kdcore.stats`): the console is a client of the Triton server,
never a second inference path.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from client.heatmaps import render_heatmap
from client.results import ImageResult
from client.scoring import ScoreConfig, score_images
from client.transport import connect
from kdcore.contract import IMAGE_INPUT, SCORER_STATS_FILE
from kdcore.imageio import ImageDecodeError, decode_image
from kdcore.manifest import MANIFEST_FILE, Manifest, discover, validation_folder
from kdcore.regions import Region
from kdcore.stats import StatsError, load_stats

#: The largest upload the console scores (bytes): a 20 MP PNG is well under it.
MAX_UPLOAD = 64 * 1024 * 1024


class ConsoleError(ValueError):
    """Something the page shows as a message instead of a result (a bad upload, a server that is down)."""


@dataclass(frozen=True)
class ModelCard:
    """One detector of the repository, as the page lists it."""

    name: str
    method: str
    input: str
    image: bool
    test_metrics: dict[str, float | None]


def model_cards(repository: Path) -> list[ModelCard]:
    """The repository's image detectors with their method, input and the stats JSON's test metrics.

    Raises:
        ConsoleError: No detector in ``repository``.
    """
    names = discover(repository)
    if not names:
        raise ConsoleError(f"no exported detector in {repository} (run kd-export first)")
    cards = []
    for name in names:
        manifest = Manifest.load(validation_folder(repository, name) / MANIFEST_FILE)
        metrics: dict[str, float | None] = {}
        try:
            stats = load_stats(Path(repository) / manifest.names.scorer / SCORER_STATS_FILE)
            metrics = {k: v for k, v in stats.test_metrics.model_dump().items() if isinstance(v, float)}
        except StatsError:
            pass
        spec = manifest.input
        cards.append(ModelCard(name, manifest.method, f"{spec.name} {spec.datatype} {list(spec.dims)}",
                               spec.name == IMAGE_INPUT, metrics))
    return cards


@dataclass(frozen=True)
class Scored:
    """One uploaded image, scored by the server."""

    name: str
    score: float
    label: str
    overlay: np.ndarray
    """The heatmap over the image with the regions outlined (``client.py score --heatmaps``'s rendering)."""
    regions: list[Region]


def check_upload(name: str, data: bytes) -> np.ndarray:
    """The uploaded file decoded as RGB, or :class:`ConsoleError` saying why it is refused."""
    if len(data) > MAX_UPLOAD:
        raise ConsoleError(f"{name}: {len(data) / 1e6:.1f} MB is over the console's limit of {MAX_UPLOAD / 1e6:.0f} MB")
    try:
        return decode_image(data)
    except ImageDecodeError as e:
        raise ConsoleError(f"{name}: not an image the console can read ({e})") from e


def score_upload(name: str, data: bytes, model: str, url: str, protocol: str = "grpc") -> Scored:
    """Score one uploaded image file with the served ``model`` (maps on; large frames tiled as the client tiles).

    Raises:
        ConsoleError: The upload is not an image, too large, or the server or model cannot be reached.
    """
    image = check_upload(name, data)
    suffix = Path(name).suffix or ".png"
    results: list[ImageResult] = []
    with tempfile.TemporaryDirectory(prefix="kd-console-") as folder:
        path = Path(folder) / f"upload{suffix}"
        path.write_bytes(data)
        try:
            score_images([path], ScoreConfig(model=model, url=url, protocol=protocol, maps=True, batch_size=1),
                         results.append)
        except Exception as e:  # noqa: BLE001  (the page shows any failure as a message and keeps working)
            raise ConsoleError(f"the server at {url} could not score with '{model}': {e}") from e
    result = results[0]
    if not result.ok:
        raise ConsoleError(f"{name}: {result.error}")
    overlay = render_heatmap(image, result.anomaly_map, score=result.score, label=result.label, name=name,
                             regions=result.regions)
    return Scored(name, float(result.score), result.label, overlay, list(result.regions or []))


def server_health(url: str, protocol: str, models: list[str]) -> dict[str, bool]:
    """The server's liveness and readiness and each model's readiness (``{"server live": True, ...}``).

    Raises:
        ConsoleError: The server cannot be reached.
    """
    try:
        client = connect(protocol, url, timeout=5.0)
    except Exception as e:  # noqa: BLE001
        raise ConsoleError(f"cannot reach the server at {url}: {e}") from e
    try:
        status = {"server live": bool(client.is_server_live()), "server ready": bool(client.is_server_ready())}
        status.update({m: bool(client.is_model_ready(m)) for m in models})
        return status
    except Exception as e:  # noqa: BLE001
        raise ConsoleError(f"the server at {url} does not answer: {e}") from e
    finally:
        client.close()
