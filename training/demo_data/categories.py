"""Every category the dataset writer knows: the demo's textures and the benchmark's categories, by name.

A :class:`Category` is what the writer needs from a category: its defect kinds, how to render a good image
and how to draw a defect on it. The demo categories keep their renderer (:mod:`training.demo_data.defects`) and
their byte-exact images; the benchmark categories come from :mod:`training.demo_data.benchmark`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np

from training.demo_data import benchmark, defects, highres


@dataclass(frozen=True)
class Category:
    """One dataset category."""

    name: str
    kind: str
    """``"demo texture"``, ``"sparse texture"``, ``"stochastic texture"``, ``"periodic texture"``, ``"aligned object"``,
    ``"high-resolution texture"``."""
    defects: tuple[str, ...]
    """Defect kinds, in the order their folders are written."""
    good: Callable[[np.random.Generator, int], np.ndarray]
    """``good(rng, size)``: a defect-free uint8 RGB image."""
    defect: Callable[[np.random.Generator, np.ndarray, str], tuple[np.ndarray, np.ndarray]]
    """``defect(rng, good, kind)``: the image with the defect and its 0/255 mask."""


def _demo(name: str) -> Category:
    return Category(name, "demo texture", defects.DEFECT_TYPES, partial(defects.good_image, name),
                    lambda rng, good, kind: defects.apply_defect(rng, good, name, kind))


def _benchmark(name: str) -> Category:
    kind, _, kinds = benchmark.BENCHMARK_CATEGORIES[name]
    return Category(name, kind, kinds, partial(benchmark.good_image, name),
                    lambda rng, good, defect: benchmark.apply_defect(rng, good, name, defect))


def _highres(name: str) -> Category:
    kind, kinds = highres.HIGHRES_CATEGORIES[name]
    return Category(name, kind, kinds, partial(highres.good_image, name),
                    lambda rng, good, defect: highres.apply_defect(rng, good, name, defect))


#: Demo categories first: their position seeds their images, so appending keeps every demo image as it was.
CATEGORIES: dict[str, Category] = {
    **{name: _demo(name) for name in defects.DEMO_CATEGORIES},
    **{name: _benchmark(name) for name in benchmark.BENCHMARK_CATEGORIES},
    **{name: _highres(name) for name in highres.HIGHRES_CATEGORIES},
}
#: The categories of the detection-quality benchmark (``kd-compare --categories``).
BENCHMARK: tuple[str, ...] = tuple(benchmark.BENCHMARK_CATEGORIES)


def get_category(name: str) -> Category:
    """The category called ``name``.

    Raises:
        ValueError: An unknown name; the message lists the known ones.
    """
    if name not in CATEGORIES:
        raise ValueError(f"unknown demo category {name!r}; choose one of {', '.join(CATEGORIES)}")
    return CATEGORIES[name]
