"""Thick-slice volumes: the slice axis, NS-N2N's match mask and slice-wise CNN inference.

Clinical scans with 4-7 mm slices break the premise of the synthetic 3D pair: a 3D patch
has no close match when the anatomy changes from one slice to the next.  Neighbouring-Slice
Noise2Noise (Zhou et al. 2025, seed paper 002) pairs each slice with the next one instead:
their anatomy is the same wherever it does not change between slices, and their noises are
independent (slices are reconstructed separately, even where the in-plane noise is
correlated).  The *match mask* ``W`` marks those regions: 1 where the strongly low-pass
filtered slices differ by at most a threshold, 0 elsewhere (paper eq. 3).

This module holds the array algorithms; the training (losses, budget) is
:mod:`bids_auton2n.train.nsn2n`.

* :func:`slice_axis`: the axis whose spacing is at least :data:`THICK_SLICE_RATIO` times
  the in-plane spacing (``None`` for near-isotropic volumes).
* :func:`low_pass_slices`: the paper's LPF, a non-local means filter followed by a 3x3
  median, applied to each slice on its own (a 3D filter would mix the slices it is meant to
  compare): our RI-NLM on the one-slice volume (so its search window is in-plane only),
  guided by the slice smoothed with a 1-pixel Gaussian.
* :func:`match_mask`: ``|LPF(x_i) - LPF(x_{i+1})| <= MATCH_THRESHOLD * sigma``.  The paper
  sets its threshold by eye per noise level (0.01-0.05 on [0, 1] images at 5-9 % noise, i.e.
  0.2-0.6 sigma for its LPF); ours is a fixed multiple of the noise sigma (one value, or the
  mean of the two slices' local sigma): 0.5, inside the paper's range.  It has not been
  tuned on data yet (never to be tuned on the benchmark phantom).
* :func:`slicewise_cnn_denoise`: an expert applied to each slice on its own, as NS-N2N's
  network is trained (a 3D network on a one-slice input with replicate padding is a 2D
  network), with the four in-plane flips as test-time augmentation.

References
----------
.. [1] Zhou L, Zhou Z, Huang X, Wang H, Zhang X, Li G. Neighboring Slice Noise2Noise:
   self-supervised medical image denoising from single noisy image volume (seed paper 002).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage as ndi
from torch import nn
from tqdm.auto import tqdm

from ._checks import real_volume
from .inference import _autocast, memory_format, resolve_device, resolve_precision
from .rinlm import ri_nlm

__all__ = ["THICK_SLICE_RATIO", "low_pass_slices", "match_mask", "slice_axis",
           "slicewise_cnn_denoise", "to_slices_first", "from_slices_first"]

#: A volume is thick-sliced when one spacing is at least this multiple of the other two.
THICK_SLICE_RATIO = 2.0
#: Match threshold in units of the noise sigma (see the module docstring).
MATCH_THRESHOLD = 0.5
#: In-plane search radius of the LPF's non-local means (pixels).
LPF_SEARCH_RADIUS = 5
#: Gaussian sigma (pixels) of the guide of the LPF's non-local means.
LPF_GUIDE_SMOOTHING = 1.0
#: Slices per forward pass of :func:`slicewise_cnn_denoise`.
SLICE_BATCH = 8
#: The in-plane flips of the slice-wise test-time augmentation (axes of (N, 1, 1, H, W)).
SLICE_FLIPS = ((), (3,), (4,), (3, 4))


def slice_axis(voxel_size, ratio: float = THICK_SLICE_RATIO) -> int | None:
    """Index of the slice axis of a thick-slice volume, or ``None``.

    The axis of the largest spacing counts as the slice axis when that spacing is at least
    ``ratio`` times the larger of the two others (a 1 x 1 x 4 mm volume: axis 2;
    0.5 x 0.5 x 1 mm: axis 2; 1 x 1 x 1.2 mm: None).
    """
    spacing = np.asarray([float(z) for z in voxel_size], dtype=np.float64)
    if spacing.shape != (3,) or not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise ValueError(f"voxel size must be 3 positive numbers, got {voxel_size!r}")
    axis = int(np.argmax(spacing))
    in_plane = np.delete(spacing, axis).max()
    return axis if spacing[axis] >= ratio * in_plane * (1.0 - 1e-6) else None


def to_slices_first(volume: np.ndarray, axis: int) -> np.ndarray:
    """The volume with its slice axis first (a view)."""
    return np.moveaxis(volume, axis, 0)


def from_slices_first(volume: np.ndarray, axis: int) -> np.ndarray:
    """Inverse of :func:`to_slices_first`."""
    return np.moveaxis(volume, 0, axis)


def _slice_sigma(sigma, shape) -> np.ndarray:
    """Per-slice sigma: ``(n,)`` for one value, ``(n, H, W)`` for a map."""
    sigma = np.asarray(sigma, dtype=np.float64)
    if sigma.ndim == 0:
        return np.full(shape[0], float(sigma))
    if sigma.shape != tuple(shape):
        raise ValueError(f"sigma map shape {sigma.shape} differs from the volume's {tuple(shape)}")
    return sigma


def low_pass_slices(slices: np.ndarray, sigma) -> np.ndarray:
    """NS-N2N's strong low-pass filter of each slice: in-plane NLM, then a 3x3 median.

    Parameters
    ----------
    slices : numpy.ndarray
        ``(n, H, W)`` finite volume, slice axis first.
    sigma : float or numpy.ndarray
        Noise sigma: one value or a map of ``slices``' shape.

    Returns
    -------
    numpy.ndarray
        float32, ``slices``' shape.
    """
    slices = real_volume(slices, "low_pass_slices").astype(np.float32, copy=False)
    guide = ndi.gaussian_filter(slices, (0.0, LPF_GUIDE_SMOOTHING, LPF_GUIDE_SMOOTHING))
    filtered = ri_nlm(slices, guide, sigma, search_radius=LPF_SEARCH_RADIUS, rician=False,
                      in_plane=True)
    return ndi.median_filter(filtered, size=(1, 3, 3), mode="nearest")


def match_mask(low_passed: np.ndarray, sigma, *, threshold: float = MATCH_THRESHOLD) -> np.ndarray:
    """NS-N2N weight matrices ``W_i`` of the neighbouring pairs ``(i, i + 1)`` (paper eq. 3).

    Parameters
    ----------
    low_passed : numpy.ndarray
        ``(n, H, W)`` output of :func:`low_pass_slices`.
    sigma : float or numpy.ndarray
        Noise sigma, one value or a map of ``low_passed``'s shape (the pair's threshold is
        then the mean of its two slices' sigma).
    threshold : float
        In units of sigma.

    Returns
    -------
    numpy.ndarray of bool
        ``(n - 1, H, W)``: True where ``|LPF_i - LPF_{i+1}| <= threshold * sigma``.
    """
    low_passed = real_volume(low_passed, "match_mask")
    if low_passed.shape[0] < 2:
        raise ValueError(f"match_mask: needs at least 2 slices, got {low_passed.shape[0]}")
    if not threshold > 0:
        raise ValueError(f"match_mask: threshold must be > 0, got {threshold}")
    sigma = _slice_sigma(sigma, low_passed.shape)
    pair_sigma = 0.5 * (sigma[1:] + sigma[:-1])
    if pair_sigma.ndim == 1:
        pair_sigma = pair_sigma[:, None, None]
    difference = np.abs(low_passed[1:].astype(np.float64) - low_passed[:-1])
    return difference <= threshold * pair_sigma


def _bounding_rectangle(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows, cols = np.nonzero(mask.any(axis=0))
    if rows.size == 0:
        return slice(0, 0), slice(0, 0)
    return (slice(max(int(rows.min()) - margin, 0), min(int(rows.max()) + margin + 1, mask.shape[1])),
            slice(max(int(cols.min()) - margin, 0), min(int(cols.max()) + margin + 1, mask.shape[2])))


def slicewise_cnn_denoise(slices: np.ndarray, model: nn.Module, *, tta: bool = True,
                          device="auto", mask: np.ndarray | None = None, margin: int = 8,
                          precision: str = "auto", progress: bool = False) -> np.ndarray:
    """Apply a network to each slice on its own, as NS-N2N trains it.

    Each slice is a ``(1, 1, 1, H, W)`` input (the 3D network with replicate padding then
    acts as a 2D one); with ``tta`` the output is the mean over the four in-plane flips
    (:data:`SLICE_FLIPS`).  Only the in-plane bounding rectangle of ``mask`` (grown by
    ``margin``) is computed; the rest keeps its input value.

    Parameters
    ----------
    slices : numpy.ndarray
        ``(n, H, W)`` finite volume in network units, slice axis first.
    model : torch.nn.Module
    tta, device, precision, progress
        As in :func:`~.inference.cnn_denoise`.
    mask : numpy.ndarray of bool, optional
        Head mask (slice axis first).
    margin : int

    Returns
    -------
    numpy.ndarray
        float32, ``slices``' shape.
    """
    volume = real_volume(slices, "slicewise_cnn_denoise").astype(np.float32, copy=False)
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    output = volume.copy()
    rows, cols = (slice(0, volume.shape[1]), slice(0, volume.shape[2])) if mask is None else \
        _bounding_rectangle(np.asarray(mask, bool), margin)
    if rows.stop <= rows.start:
        return output
    flips = SLICE_FLIPS if tta else ((),)
    model.to(device, memory_format=memory_format(device)).eval()
    starts = range(0, volume.shape[0], SLICE_BATCH)
    with torch.inference_mode():
        for start in tqdm(starts, desc="CNN slices", disable=not progress):
            batch = np.ascontiguousarray(volume[start:start + SLICE_BATCH, rows, cols])
            inputs = torch.from_numpy(batch)[:, None, None].to(device)
            accumulated = torch.zeros_like(inputs)
            for flip in flips:
                flipped = torch.flip(inputs, flip) if flip else inputs
                with _autocast(device, precision):
                    prediction = model(flipped)
                prediction = prediction.float()
                accumulated += torch.flip(prediction, flip) if flip else prediction
            output[start:start + SLICE_BATCH, rows, cols] = (accumulated / len(flips))[:, 0, 0].cpu().numpy()
    return output
