"""The plot renderer: deterministic, one band per lead on a fixed value axis, clear errors on bad windows."""

from __future__ import annotations

import numpy as np
import pytest

from kdcore.series_plot import PlotSpec, render_plot, render_plots


def _dark_rows(image: np.ndarray) -> np.ndarray:
    """Rows holding any drawn pixel."""
    return np.flatnonzero((image < 250).any(axis=(1, 2)))


def test_a_window_is_drawn_the_same_every_time_one_band_per_lead() -> None:
    t = np.linspace(0, 4 * np.pi, 256)
    window = np.stack([np.sin(t), 0.5 * np.cos(t)], 1)
    a, b = render_plot(window), render_plot(window.copy())
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    lead0 = render_plot(np.stack([np.sin(t), np.full(256, -10.0)], 1))  # lead 1 clipped to its band's bottom
    rows = _dark_rows(lead0[:127])
    assert rows.min() >= 0 and rows.max() <= 127  # lead 0 stays in the top band
    assert (lead0[255] < 250).any(axis=1).sum() > 200  # the clipped lead runs along the bottom row


def test_the_value_axis_is_fixed_so_an_amplitude_drop_looks_smaller() -> None:
    t = np.linspace(0, 4 * np.pi, 256)
    full = render_plot(np.sin(t)[:, None], PlotSpec(size=128))
    dropped = render_plot(0.2 * np.sin(t)[:, None], PlotSpec(size=128))
    assert len(_dark_rows(dropped)) < 0.5 * len(_dark_rows(full))


def test_bad_windows_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="NaN"):
        render_plot(np.full((10, 2), np.nan))
    with pytest.raises(ValueError, match="steps"):
        render_plot(np.zeros(10))
    assert render_plots(np.zeros((3, 20, 2))).shape == (3, 256, 256, 3)
    assert render_plots(np.zeros((0, 20, 2))).shape == (0, 256, 256, 3)
