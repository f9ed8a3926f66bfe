"""The reportlet figures and the structure-removed measure (arrays in, SVG / numbers out)."""

from __future__ import annotations

import re
import xml.dom.minidom

import numpy as np
import pytest
from scipy import ndimage

from bids_auton2n.reports.figures import before_after_svg, residual_svg
from bids_auton2n.reports.iqms import STRUCTURE_REMOVED_FLAG, structure_removed


def _head(shape=(40, 44, 36), seed=0):
    """Nested ellipsoids with a textured interior, Rician noise at 4 % of the brightest."""
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    radius = np.sqrt(sum(((g - c) / (s * 0.42)) ** 2 for g, c, s in zip(grid, centre, shape)))
    clean = np.select([radius < 0.5, radius < 0.8, radius < 1.0], [100.0, 65.0, 30.0], 0.0)
    clean += 8 * np.sin(grid[0] / 2.0) * (radius < 0.8)
    rng = np.random.default_rng(seed)
    noisy = np.hypot(clean + rng.normal(0, 4, shape), rng.normal(0, 4, shape))
    return clean.astype(np.float32), noisy.astype(np.float32), radius < 1.0


def test_structure_removed_is_near_zero_when_only_noise_went():
    clean, noisy, mask = _head()
    assert abs(structure_removed(noisy, clean, mask)) < 0.15


@pytest.mark.parametrize("sigma", [0.7, 1.0, 2.0])
def test_structure_removed_flags_over_smoothing(sigma):
    _, noisy, mask = _head()
    assert structure_removed(noisy, ndimage.gaussian_filter(noisy, sigma), mask) \
        > STRUCTURE_REMOVED_FLAG


def test_structure_removed_is_undefined_when_nothing_went():
    _, noisy, mask = _head()
    assert np.isnan(structure_removed(noisy, noisy, mask))


def _svg_images(svg: str):
    document = xml.dom.minidom.parseString(svg)  # valid XML, or this raises
    return document, document.getElementsByTagName("image")


def test_before_after_shows_both_images_without_animation():
    clean, noisy, mask = _head()
    svg = before_after_svg(noisy, clean, mask, (1.0, 1.0, 1.2), n_cuts=3)
    document, images = _svg_images(svg)
    # 3 views x (noisy row + denoised row) x 3 cuts, then the flicker: 2 layers x 3 views
    assert len(images) == 3 * 2 * 3 + 2 * 3
    assert all(float(i.getAttribute("width")) > 0 and float(i.getAttribute("height")) > 0
               for i in images)
    labels = [t.firstChild.data for t in document.getElementsByTagName("text")]
    assert labels.count("noisy") == 3 and labels.count("denoised") == 3
    # only the flicker's upper layer is animated; the rows above are static
    assert sum(i.getAttribute("class") == "flicker" for i in images) == 3
    noisy_tile, denoised_tile = images[0].getAttribute("href"), images[3].getAttribute("href")
    assert noisy_tile != denoised_tile
    # nireports strips width/height from the line opening with <svg: it must be alone
    assert re.fullmatch(r"<svg [^>]*>", svg.splitlines()[0])


def test_residual_has_a_colour_bar_in_image_units_and_sigma():
    clean, noisy, mask = _head()
    svg = residual_svg(noisy - clean, mask, 4.0, (1.0, 1.0, 1.0), n_cuts=3)
    document, images = _svg_images(svg)
    assert len(images) == 3 * 3
    assert document.getElementsByTagName("linearGradient")
    labels = [t.firstChild.data for t in document.getElementsByTagName("text")]
    assert "+12 (+3 \u03c3)" in labels and "-12 (-3 \u03c3)" in labels
    assert any("image units" in label for label in labels)
    # no blank band: the figure is as tall as its three rows of tiles and its margins
    height = float(document.documentElement.getAttribute("height"))
    bottom = max(float(i.getAttribute("y")) + float(i.getAttribute("height")) for i in images)
    assert height - bottom < 20


def test_group_flags_structure_removed_and_writes_no_empty_reason():
    import pandas as pd

    from bids_auton2n.reports.iqms import robust_z
    from bids_auton2n.workflows.group import _outlier_reasons

    table = pd.DataFrame({
        "status": ["success"] * 3, "suffix": ["T1w"] * 3, "noise_percent": [3.0, 3.1, 2.9],
        "snr_before": [10.0] * 3, "snr_after": [20.0] * 3, "fwhm_before": [2.0] * 3,
        "fwhm_after": [2.2] * 3,
        "structure_removed": [0.02, STRUCTURE_REMOVED_FLAG + 0.1, float("nan")]})
    reasons = _outlier_reasons(table, robust_z)
    assert reasons[0] is None and reasons[2] is None  # written n/a
    assert reasons[1].startswith("structure_removed (")


def test_threshold_study_chooses_between_clean_and_over_smoothed_outputs():
    from bids_auton2n.bench.studies.structure_threshold import choose_flag

    def row(output, value, selection=True):
        return {"output": output, "structure_removed": value, "selection": selection}

    rows = [row("noise only", 0.02), row("ours", 0.11), row("over-smoothed 0.7 vx", 0.12),
            row("over-smoothed 1 vx", 0.31), row("over-smoothed 2 vx", 0.4),
            row("ours", 0.9, selection=False)]  # the held-out scan takes no part
    assert choose_flag(rows) == (0.11, 0.31, 0.2)
