"""Spatially routed experts: the routing rule and seamless blending across regions."""

import numpy as np
import pytest
import torch

from bids_auton2n.denoise.experts import IDENTITY_LEVEL, ExpertRegistry, write_manifest_entry
from bids_auton2n.denoise.inference import cnn_denoise
from bids_auton2n.denoise.network import ResidualDenoiser3D
from bids_auton2n.denoise.routing import RECEPTIVE_RADIUS, expert_weights, routed_cnn_denoise

LEVELS = (1.0, 3.0, 5.0, 7.0, 9.0)


@pytest.fixture(scope="module")
def distinct_experts(tmp_path_factory):
    """Experts whose outputs differ (seeded random weights, small residual head)."""
    root = tmp_path_factory.mktemp("distinct_experts")
    for level in LEVELS:
        torch.manual_seed(int(level))
        model = ResidualDenoiser3D()
        with torch.no_grad():
            model.head.weight.mul_(0.2)
        write_manifest_entry(root, level, model.state_dict(), {
            "training_data": "none (test)", "command": "tests/test_routing.py", "revision": "test"})
    return ExpertRegistry(root)


def test_weights_follow_the_registry_selection_voxel_by_voxel(distinct_experts):
    percent = np.array([0.0, 0.4, 1.0, 2.0, 3.0, 4.5, 8.0, 9.0, 12.0]).reshape(1, 3, 3)
    weights = expert_weights(distinct_experts.levels, percent)
    for index in np.ndindex(percent.shape):
        expected = {c.level: c.weight for c in distinct_experts.select(percent[index], blend=True)}
        found = {level: float(w[index]) for level, w in weights.items() if w[index] > 0}
        assert found.keys() == expected.keys(), percent[index]
        for level in found:
            assert found[level] == pytest.approx(expected[level], abs=1e-6)
    np.testing.assert_allclose(sum(weights.values()), 1.0, atol=1e-6)
    assert IDENTITY_LEVEL in weights and 9.0 in weights


def _ramp_case(shape=(24, 64, 20)):
    rng = np.random.default_rng(0)
    volume = (1.0 + 0.05 * rng.standard_normal(shape)).astype(np.float32)
    volume[:, :, 10:] *= 0.5  # an edge
    percent = np.broadcast_to(np.linspace(0.5, 9.5, shape[1])[None, :, None], shape).astype(np.float32)
    return volume, np.ascontiguousarray(percent)


def test_routed_output_is_the_dense_per_voxel_blend(distinct_experts, one_torch_thread):
    """Each expert runs only on its region's box (grown by the receptive radius), yet every
    voxel gets what the expert gives on the whole volume: no seam where regions meet."""
    volume, percent = _ramp_case()
    routed, used = routed_cnn_denoise(volume, percent, distinct_experts, tta=False,
                                      device="cpu", precision="fp32")
    dense = np.zeros_like(volume)
    for level, weight in expert_weights(distinct_experts.levels, percent).items():
        if level == IDENTITY_LEVEL:
            dense += weight * volume
            continue
        model = distinct_experts.load(level, "cpu")
        dense += weight * cnn_denoise(volume, [(model, 1.0)], tta=False, device="cpu",
                                      precision="fp32")
    np.testing.assert_allclose(routed, dense, rtol=0, atol=2e-5)
    assert {c.level for c in used.choices} == {0.0, *LEVELS}
    assert sum(c.weight for c in used.choices) == pytest.approx(1.0)
    # Sparse: fewer voxels computed than every expert over the whole volume.
    assert used.voxels_computed < len(LEVELS) * volume.size
    # The experts really differ, so the routing matters.
    single = cnn_denoise(volume, [(distinct_experts.load(5.0, "cpu"), 1.0)], tta=False,
                         device="cpu", precision="fp32")
    assert np.abs(single - routed).max() > 10 * 2e-5


def test_region_boxes_without_the_receptive_margin_would_leave_seams(distinct_experts,
                                                                      one_torch_thread):
    """The check above fails if an expert is run on its region alone: the margin matters."""
    volume, percent = _ramp_case()
    level = 5.0
    region = (slice(None), slice(25, 39), slice(None))  # inside the 5 % expert's region
    model = distinct_experts.load(level, "cpu")
    whole = cnn_denoise(volume, [(model, 1.0)], tta=False, device="cpu", precision="fp32")
    tight = cnn_denoise(volume[region], [(model, 1.0)], tta=False, device="cpu", precision="fp32")
    grown = (slice(None), slice(25 - RECEPTIVE_RADIUS, 39 + RECEPTIVE_RADIUS), slice(None))
    with_margin = cnn_denoise(volume[grown], [(model, 1.0)], tta=False, device="cpu",
                              precision="fp32")[:, RECEPTIVE_RADIUS:-RECEPTIVE_RADIUS]
    assert np.abs(tight - whole[region]).max() > 1e-4
    np.testing.assert_allclose(with_margin, whole[region], atol=2e-5)


def test_a_uniform_map_is_the_global_blended_path(distinct_experts, one_torch_thread):
    volume, _ = _ramp_case((16, 24, 20))
    percent = np.full(volume.shape, 4.0, np.float32)
    routed, used = routed_cnn_denoise(volume, percent, distinct_experts, tta=True, device="cpu",
                                      precision="fp32")
    choices = distinct_experts.select(4.0, blend=True)
    models = [(distinct_experts.load(c.level, "cpu"), c.weight) for c in choices]
    np.testing.assert_allclose(routed, cnn_denoise(volume, models, tta=True, device="cpu",
                                                   precision="fp32"), atol=2e-5)
    assert [c.level for c in used.choices] == [3.0, 5.0]


def test_outside_the_head_box_the_input_is_kept(distinct_experts, one_torch_thread):
    volume, percent = _ramp_case((16, 40, 20))
    mask = np.zeros(volume.shape, bool)
    mask[4:12, 5:15, 4:16] = True
    routed, _ = routed_cnn_denoise(volume, percent, distinct_experts, tta=False, device="cpu",
                                   mask=mask, precision="fp32")
    np.testing.assert_array_equal(routed[:, 15 + 8:], volume[:, 15 + 8:])
    assert np.abs(routed[mask] - volume[mask]).max() > 0
    with pytest.raises(ValueError, match="level map"):
        routed_cnn_denoise(volume, percent[:, :10], distinct_experts)
