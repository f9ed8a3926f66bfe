"""Tests of tiled, flip-augmented mixture-of-experts CNN inference."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bids_auton2n.denoise.inference import (
    bounding_box,
    cnn_denoise,
    gaussian_weight_map,
    resolve_precision,
    resolve_device,
)
from bids_auton2n.denoise.network import ResidualDenoiser3D


class AddConstant(nn.Module):
    def __init__(self, value):
        super().__init__()
        self.value = value

    def forward(self, x):
        return x + self.value


class ShiftDown(nn.Module):
    """Not flip-equivariant: each voxel takes its lower neighbour along axis 0 (replicate edge)."""

    def forward(self, x):
        return F.pad(x, (0, 0, 0, 0, 1, 0), mode="replicate")[:, :, :-1]


class BoxMean(nn.Module):
    """Flip-equivariant: symmetric 3x3x3 mean with replicate padding."""

    def forward(self, x):
        return F.avg_pool3d(F.pad(x, (1,) * 6, mode="replicate"), 3, stride=1)


def _identity_network():
    model = ResidualDenoiser3D()
    nn.init.zeros_(model.head.weight)
    nn.init.zeros_(model.head.bias)
    return model


def _random_network(seed=0):
    torch.manual_seed(seed)
    return ResidualDenoiser3D().eval()


@pytest.fixture
def volume():
    return np.random.default_rng(0).normal(1.0, 0.05, size=(14, 12, 10)).astype(np.float32)


def _direct(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x)[None, None])[0, 0].numpy()


def test_identity_network_gives_identity(volume):
    out = cnn_denoise(volume, [(_identity_network(), 0.3), (_identity_network(), 0.7)], device="cpu")
    np.testing.assert_allclose(out, volume, rtol=0, atol=1e-6)  # only weight rounding
    assert out.dtype == np.float32


def test_flip_equivariant_model_unchanged_by_tta(volume):
    with_tta = cnn_denoise(volume, [(BoxMean(), 1.0)], tta=True, device="cpu")
    without = cnn_denoise(volume, [(BoxMean(), 1.0)], tta=False, device="cpu")
    np.testing.assert_allclose(with_tta, without, atol=1e-6)
    np.testing.assert_allclose(without, _direct(BoxMean(), volume), atol=1e-6)


@pytest.mark.parametrize("flips, axes", [
    (None, [(), (0, 1, 2)]),  # the default: identity and the flip of all three axes
    ([(), (2,), (3,), (4,)], [(), (0,), (1,), (2,)]),  # the paper's single-axis flips
])
def test_tta_averages_inverted_flips(volume, flips, axes):
    model = ShiftDown()
    passes = [np.flip(_direct(model, np.ascontiguousarray(np.flip(volume, flip))), flip)
              for flip in axes]
    expected = np.mean(passes, axis=0)
    got = cnn_denoise(volume, [(model, 1.0)], tta=True, device="cpu", flips=flips)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert not np.allclose(got, passes[0], atol=1e-3)  # the flips did something


def test_flips_must_be_axes_of_the_volume(volume):
    with pytest.raises(ValueError, match="flips"):
        cnn_denoise(volume, [(ShiftDown(), 1.0)], device="cpu", flips=[(1,)])
    with pytest.raises(ValueError, match="flips"):
        cnn_denoise(volume, [(ShiftDown(), 1.0)], device="cpu", flips=[])


def test_experts_are_weighted(volume):
    out = cnn_denoise(volume, [(AddConstant(1.0), 3.0), (AddConstant(-1.0), 1.0)], device="cpu")
    np.testing.assert_allclose(out, volume + 0.5, atol=1e-6)


def test_volume_smaller_than_roi_is_one_untiled_pass(volume):
    model = _random_network()
    out = cnn_denoise(volume, [(model, 1.0)], tta=False, device="cpu", roi_size=(96, 96, 96),
                      precision="fp32")
    np.testing.assert_allclose(out, _direct(model, volume), atol=1e-5)


@pytest.mark.parametrize(
    "shape, roi",
    [((64, 20, 18), (48, 20, 18)), ((40, 40, 40), (32, 32, 32))],
    ids=["tiles-along-one-axis", "tiles-along-all-axes"],
)
def test_tiled_equals_untiled(shape, roi):
    # Tiles larger than twice the 12-voxel receptive-field radius, overlap 0.5.
    model = _random_network(1)
    x = np.random.default_rng(1).normal(1.0, 0.05, size=shape).astype(np.float32)
    untiled = _direct(model, x)
    tiled = cnn_denoise(x, [(model, 1.0)], tta=False, device="cpu", roi_size=roi, overlap=0.5,
                        precision="fp32")
    # The residual map of a random network is ~0.1; tiling changes it by < 0.5 %.
    assert np.abs(untiled - x).mean() > 0.05
    np.testing.assert_allclose(tiled, untiled, rtol=0, atol=5e-4)


def test_weight_map_is_separable_gaussian_without_coarse_clamp():
    weights = gaussian_weight_map((16, 8, 8), torch.device("cpu"))
    assert weights.shape == (16, 8, 8)
    assert weights.max() <= 1.0 and weights.min() > 0
    assert weights.min() < 1e-6  # MONAI's own map would clamp this at 1e-3
    assert torch.allclose(weights, weights.flip(0).flip(1).flip(2))


def test_bounding_box_crop_leaves_outside_unchanged():
    x = np.random.default_rng(2).normal(1.0, 0.05, size=(20, 18, 16)).astype(np.float32)
    mask = np.zeros(x.shape, bool)
    mask[8:11, 7:9, 6:9] = True
    box = bounding_box(mask, margin=2)
    assert box == (slice(6, 13), slice(5, 11), slice(4, 11))
    out = cnn_denoise(x, [(AddConstant(1.0), 1.0)], mask=mask, margin=2, device="cpu")
    inside = np.zeros(x.shape, bool)
    inside[box] = True
    np.testing.assert_array_equal(out[~inside], x[~inside])
    np.testing.assert_allclose(out[inside], x[inside] + 1.0, atol=1e-6)
    empty = cnn_denoise(x, [(AddConstant(1.0), 1.0)], mask=np.zeros(x.shape, bool), device="cpu")
    np.testing.assert_array_equal(empty, x)


def test_default_runs_a_small_crop_as_one_tile(volume):
    model = _random_network()
    out = cnn_denoise(volume, [(model, 1.0)], tta=False, device="cpu", precision="fp32")
    np.testing.assert_allclose(out, _direct(model, volume), atol=1e-5)


def test_cpu_convolutions_run_channels_last_with_the_contiguous_result(volume):
    contiguous = _random_network(5)
    model = _random_network(5)
    out = cnn_denoise(volume, [(model, 1.0)], tta=True, device="cpu", precision="fp32")
    weight = next(p for p in model.parameters() if p.dim() == 5 and p.shape[1] > 1)
    assert weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert not weight.is_contiguous()
    expected = np.mean([np.flip(_direct(contiguous, np.flip(volume, axes).copy()), axes)
                        for axes in ((), (0, 1, 2))], axis=0)
    assert next(contiguous.parameters()).is_contiguous()
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_auto_precision_follows_the_hardware():
    cpu = torch.device("cpu")
    expected = "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"
    assert resolve_precision("auto", cpu) == expected
    assert resolve_precision("fp32", cpu) == "fp32"


def test_bf16_precision_close_to_fp32(volume):
    model = _random_network(3)
    fp32 = cnn_denoise(volume, [(model, 1.0)], tta=False, device="cpu", precision="fp32")
    bf16 = cnn_denoise(volume, [(model, 1.0)], tta=False, device="cpu", precision="bf16")
    assert bf16.dtype == np.float32
    assert np.abs(bf16 - fp32).max() < 0.02


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"x_norm": np.zeros((4, 4))}, "3D"),
        ({"x_norm": np.full((4, 4, 4), np.nan)}, "non-finite"),
        ({"experts": []}, "at least one"),
        ({"experts": [(AddConstant(0.0), -1.0)]}, "weights"),
        ({"precision": "fp16"}, "precision"),
        ({"mask": np.ones((3, 3, 3), bool)}, "mask shape"),
        ({"roi_size": (8, 8)}, "roi_size"),
    ],
)
def test_bad_input(kwargs, message):
    arguments = {"x_norm": np.zeros((4, 4, 4), np.float32), "experts": [(AddConstant(0.0), 1.0)]}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        cnn_denoise(arguments.pop("x_norm"), arguments.pop("experts"), device="cpu", **arguments)


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")
    before = torch.get_num_threads()
    try:
        resolve_device("cpu", threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        resolve_device("cpu", threads=0)
