"""Tests of the Auto-N2N residual denoiser architecture."""

import numpy as np
import pytest
import torch

from bids_auton2n.denoise.network import (
    HighPass3D,
    ResidualDenoiser3D,
    count_parameters,
)


def _numpy_highpass(x):
    """Slow reference: x minus its 3x3x3 mean with edge-replicate ('symmetric' for 1 voxel) padding."""
    padded = np.pad(x, 1, mode="symmetric")
    mean = np.zeros_like(x)
    for dz in range(3):
        for dy in range(3):
            for dx in range(3):
                mean += padded[dz : dz + x.shape[0], dy : dy + x.shape[1], dx : dx + x.shape[2]]
    return x - mean / 27.0


def test_parameter_count_is_documented_choice():
    model = ResidualDenoiser3D()
    assert count_parameters(model) == 69_745
    assert count_parameters(model, trainable_only=True) == 69_745


def test_highpass_matches_numpy_reference_and_is_fixed():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6, 7)).astype(np.float32)
    got = HighPass3D()(torch.from_numpy(x)[None, None])[0, 0].numpy()
    np.testing.assert_allclose(got, _numpy_highpass(x), atol=1e-5)
    assert list(HighPass3D().parameters()) == []
    assert HighPass3D().state_dict() == {}


def test_highpass_of_constant_is_zero():
    x = torch.full((1, 1, 4, 5, 6), 3.5)
    assert torch.allclose(HighPass3D()(x), torch.zeros_like(x), atol=1e-6)


def test_output_shape_and_global_skip():
    torch.manual_seed(0)
    model = ResidualDenoiser3D()
    x = torch.randn(2, 1, 7, 9, 11)
    assert model(x).shape == x.shape
    # With a zero head the residual map vanishes: the network is the identity.
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    assert torch.equal(model(x), x)


def test_constant_input_gives_spatially_constant_output():
    # Replicate padding + high-pass first layer: a constant volume has zero
    # high-pass content everywhere, so every voxel sees identical features.
    torch.manual_seed(1)
    model = ResidualDenoiser3D()
    x = torch.full((1, 1, 6, 6, 6), 0.7)
    out = model(x)
    assert torch.allclose(out, out.flatten()[0].expand_as(out), atol=1e-6)


def test_rejects_multichannel_input():
    with pytest.raises(ValueError, match="shape"):
        ResidualDenoiser3D()(torch.zeros(1, 2, 4, 4, 4))


def test_receptive_field_is_eleven_voxels():
    # stem + 10 block convs = 11 stacked 3x3x3 convs; the high-pass adds 1 more.
    torch.manual_seed(2)
    model = ResidualDenoiser3D()
    x = torch.zeros(1, 1, 31, 31, 31, requires_grad=True)
    model(x)[0, 0, 15, 15, 15].backward()
    nonzero = torch.nonzero(x.grad[0, 0].abs() > 0)
    extent = (nonzero.max(0).values - nonzero.min(0).values).tolist()
    assert extent == [24, 24, 24]
