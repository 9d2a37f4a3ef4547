"""Synthetic local changes of good images, for the two detectors that learn from changed good images.

- The score-regressing student (:mod:`training.student`) learns "how the teacher reacts to local change"; it can
  only imitate the teacher on the kinds of change it has seen (``kd-train --student-perturbations``).
- RD4AD's denoising training (``kd-train --denoising``, :mod:`training.rd4ad.model`) feeds the bottleneck the
  teacher's features of a changed image and asks the decoder for the unchanged image's features.

Either way the family should span change broadly rather than resemble any test defect. Two families:

- ``structural``: Gaussian-noise, locally blurred, pixel-shuffled and same-image cut-paste rectangles, 8-30% of
  the side. Structure changes only; colour and brightness stay, and nothing is smaller than 8% of the side.
- ``broad``: the same four changes plus two photometric ones, a per-channel gain and offset (the colour jitter
  of CutPaste, Li et al., CVPR 2021) and a smooth two-colour synthetic texture blended in (the procedural
  analogue of DRAEM's pasted textures, Zavrtanik et al., ICCV 2021, which needs no texture dataset), on
  soft-edged blobs of random shape whose size is log-uniform from 2% to 30% of the side, one to three per image.

Neither family draws on the test defects of the demo (scratches, holes, stains, foreign textures) or of the
benchmark (streaks, smudges, spots, rotated cut-paste, defocus, channel-rotated tint, erased regions); the
benchmark's kinds are classes of change (colour, blur, missing structure) that ``broad`` covers in general form,
which the README states where it reports the student and RD4AD's denoising (``broad`` also moves and mirrors the
image's own content, a cousin of the benchmark's rotated cut-paste).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

#: The perturbation families, by ``kd-train --student-perturbations`` / ``--denoising`` name.
FAMILIES = ("structural", "broad")


def _uniform(generator: torch.Generator, low: float, high: float, shape: tuple[int, ...] = ()) -> Tensor:
    return low + (high - low) * torch.rand(shape, generator=generator)


def _box(size: int, generator: torch.Generator, min_frac: float = 0.08, max_frac: float = 0.3) -> tuple[int, int, int, int]:
    h = int(size * float(_uniform(generator, min_frac, max_frac)))
    w = int(size * float(_uniform(generator, min_frac, max_frac)))
    y = int(torch.randint(0, size - h + 1, (), generator=generator))
    x = int(torch.randint(0, size - w + 1, (), generator=generator))
    return y, x, max(h, 2), max(w, 2)


def _log_box(size: int, generator: torch.Generator, min_frac: float = 0.02, max_frac: float = 0.3) -> tuple[int, int, int, int]:
    """A box whose sides are log-uniform in ``[min_frac, max_frac]`` of ``size`` and differ by at most 2x."""
    side = math.exp(float(_uniform(generator, math.log(min_frac), math.log(max_frac))))
    aspect = math.exp(float(_uniform(generator, -math.log(2.0), math.log(2.0))) / 2)
    h = min(size, max(3, round(size * side * aspect)))
    w = min(size, max(3, round(size * side / aspect)))
    y = int(torch.randint(0, size - h + 1, (), generator=generator))
    x = int(torch.randint(0, size - w + 1, (), generator=generator))
    return y, x, h, w


def _smooth_field(h: int, w: int, generator: torch.Generator, cells: int) -> Tensor:
    """Low-frequency noise ``(h, w)`` in about [-1, 1]: random values on a coarse grid, bicubically upsampled."""
    coarse = torch.randn((1, 1, cells + 1, cells + 1), generator=generator)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)[0, 0]


def _blob(h: int, w: int, generator: torch.Generator) -> Tensor:
    """A soft-edged random shape filling part of an ``(h, w)`` box: mask values in [0, 1]."""
    yy = torch.linspace(-1, 1, h)[:, None]
    xx = torch.linspace(-1, 1, w)[None, :]
    # An ellipse whose edge is pushed in and out by smooth noise; a sigmoid over a pixel or two softens it.
    radius = 1.0 - (yy**2 + xx**2).sqrt() + 0.35 * _smooth_field(h, w, generator, cells=3)
    return torch.sigmoid(radius * min(h, w) / 2.0)


def _noise(patch: Tensor, image: Tensor, generator: torch.Generator) -> Tensor:
    return patch + torch.randn(patch.shape, generator=generator) * float(_uniform(generator, 0.3, 1.0))


def _defocus(patch: Tensor, image: Tensor, generator: torch.Generator) -> Tensor:
    k = 2 * int(torch.randint(2, 6, (), generator=generator)) + 1
    return F.avg_pool2d(patch[None], k, stride=1, padding=k // 2, count_include_pad=False)[0]


def _shuffle(patch: Tensor, image: Tensor, generator: torch.Generator) -> Tensor:
    flat = patch.reshape(patch.shape[0], -1)
    return flat[:, torch.randperm(flat.shape[1], generator=generator)].reshape(patch.shape)


def _jitter(patch: Tensor, image: Tensor, generator: torch.Generator) -> Tensor:
    # Normalised inputs span about [-1, 1] for every teacher here; gain about the patch mean keeps it a colour
    # change rather than a contrast blow-up.
    mean = patch.mean((1, 2), keepdim=True)
    gain = _uniform(generator, 0.5, 1.5, (patch.shape[0], 1, 1))
    offset = _uniform(generator, -0.5, 0.5, (patch.shape[0], 1, 1))
    return mean + (patch - mean) * gain + offset


def _texture(patch: Tensor, image: Tensor, generator: torch.Generator) -> Tensor:
    _, h, w = patch.shape
    cells = int(torch.randint(1, 9, (), generator=generator))
    t = torch.sigmoid(2.0 * _smooth_field(h, w, generator, cells))
    a, b = (_uniform(generator, -1.0, 1.0, (patch.shape[0], 1, 1)) for _ in range(2))
    return a + (b - a) * t


def _moved(patch: Tensor, image: Tensor, generator: torch.Generator) -> Tensor:
    """The image's own content from a random place, mirrored (``image``: the unperturbed ``(3, S, S)``)."""
    (_, h, w), size = patch.shape, image.shape[-1]
    y = int(torch.randint(0, size - h + 1, (), generator=generator))
    x = int(torch.randint(0, size - w + 1, (), generator=generator))
    return image[:, y : y + h, x : x + w].flip(-1)


#: A change of a patch ``(3, h, w)`` given its whole unperturbed image: ``(patch, image, generator) -> new patch``.
Change = Callable[[Tensor, Tensor, torch.Generator], Tensor]
_BROAD: tuple[Change, ...] = (_noise, _defocus, _shuffle, _moved, _jitter, _texture)


def _structural(out: Tensor, x: Tensor, i: int, generator: torch.Generator) -> None:
    size = x.shape[-1]
    y, xx, h, w = _box(size, generator)
    patch = out[i, :, y : y + h, xx : xx + w]
    kind = int(torch.randint(0, 4, (), generator=generator))
    if kind == 3:  # a rectangle of the same image, moved
        sy, sx, _, _ = _box(size, generator)
        sy, sx = min(sy, size - h), min(sx, size - w)
        patch.copy_(x[i, :, sy : sy + h, sx : sx + w].flip(-1))
    else:
        patch.copy_((_noise, _defocus, _shuffle)[kind](patch, x[i], generator))


def _broad(out: Tensor, x: Tensor, i: int, generator: torch.Generator) -> None:
    size = x.shape[-1]
    for _ in range(int(torch.randint(1, 4, (), generator=generator))):
        y, xx, h, w = _log_box(size, generator)
        patch = out[i, :, y : y + h, xx : xx + w]
        changed = _BROAD[int(torch.randint(0, len(_BROAD), (), generator=generator))](patch, x[i], generator)
        mask = _blob(h, w, generator)
        patch.copy_(patch * (1 - mask) + changed * mask)


def perturb(x: Tensor, generator: torch.Generator, family: str = "broad") -> Tensor:
    """A perturbed copy of a normalised batch ``(N, 3, S, S)``: local changes to every image.

    Args:
        x: Normalised images.
        generator: Source of randomness (seeded by the caller for reproducibility).
        family: One of :data:`FAMILIES` (module docstring).

    Returns:
        A new tensor of the same shape.

    Raises:
        ValueError: An unknown family.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    apply = _structural if family == "structural" else _broad
    out = x.clone()
    for i in range(x.shape[0]):
        apply(out, x, i, generator)
    return out
