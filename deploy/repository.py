"""What an exported model repository holds, read the way every other part of the project reads it.

The detectors are the ensembles that carry the exporter's manifest (:func:`kdcore.manifest.discover`); each
manifest names the models that serve it (:attr:`kdcore.manifest.Manifest.served_models`). A repository is
deployable when it has at least one detector and every model its manifests name has a ``config.pbtxt``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdcore.manifest import Manifest, ManifestError, load_manifests

#: Triton's per-model configuration file.
CONFIG_FILE = "config.pbtxt"


class DeployError(ValueError):
    """The inputs cannot make a deployment (no repository, no detector, bad benchmark figures); the message says
    which and what to do."""


@dataclass(frozen=True)
class RepositoryInfo:
    """An exported repository's detectors and models.

    Attributes:
        path: The repository folder.
        manifests: One manifest per detector, sorted by detector name.
        models: Every model folder with a ``config.pbtxt`` (detectors, networks, steps, profiles), sorted.
    """

    path: Path
    manifests: tuple[Manifest, ...]
    models: tuple[str, ...]

    @property
    def detectors(self) -> list[str]:
        """The detectors (ensembles that take decoded pixels, vectors or windows), sorted."""
        return [m.model for m in self.manifests]


def read_repository(path: Path | str) -> RepositoryInfo:
    """Read an exported repository.

    Args:
        path: The repository folder (``kd-export --repository``).

    Returns:
        Its detectors and models.

    Raises:
        DeployError: The folder is missing or not a folder, holds no detector, a manifest is unreadable, or a
            manifest names a model the repository lacks.
    """
    path = Path(path)
    if not path.exists():
        raise DeployError(f"model repository {path} does not exist: export one first (kd-export --repository "
                          f"{path}, or make export)")
    if not path.is_dir():
        raise DeployError(f"model repository {path} is not a folder")
    try:
        manifests = tuple(load_manifests(path))
    except ManifestError as e:
        raise DeployError(f"model repository {path}: {e}") from e
    if not manifests:
        raise DeployError(f"model repository {path} holds no exported detector (no <model>/validation/manifest.json):"
                          f" export one with kd-export")
    models = tuple(sorted(p.parent.name for p in path.glob(f"*/{CONFIG_FILE}")))
    missing = sorted({f"{m.model}: {name}" for m in manifests for name in m.served_models if name not in models})
    if missing:
        raise DeployError(f"model repository {path}: manifests name models without a {CONFIG_FILE}: "
                          + ", ".join(missing))
    return RepositoryInfo(path=path, manifests=manifests, models=models)
