"""Spatially routed experts: each region of the head denoised by the experts of its noise level.

The global path runs the expert(s) of one noise level everywhere.  Where the noise varies
across the head (:mod:`~bids_auton2n.denoise.noisemap`), a sparse mixture of experts routes
each region to the experts of its own level (Mishra et al. 2025, seed paper 003; the
Auto-N2N experts are per noise level, so the gate is the local level itself, not a learned
clustering):

* every voxel's weights are those :meth:`ExpertRegistry.select` gives its local level with
  ``blend=True``: the two experts bracketing it, linearly (below the lowest expert, the
  lowest blended with the identity), so weights vary as smoothly as the noise map and the
  output has no seam where the routing changes;
* each expert runs only where its weight is not zero (its *region*): on the bounding box of
  each connected piece of that region, grown by the network's receptive radius
  (:data:`RECEPTIVE_RADIUS`), so that inside the region the expert's output is the one it
  would give on the whole head (up to the floating-point order of the convolutions);
* the output is ``sum_k w_k f_k(x)``: with a uniform map it is the global blended path.

The cost is that of about two experts over the head (each voxel lies in the regions of at
most two), plus the margins.

References
----------
.. [1] Mishra et al. (2025). Sparse mixture of experts for spatially varying noise in MRI
   denoising (seed paper ``003_*``).
.. [2] Morell-Ortega S. et al. Auto-N2N, sections 2.4-2.5 (noise-level experts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .experts import IDENTITY_LEVEL, ExpertChoice, ExpertRegistry
from .inference import DEFAULT_MARGIN, bounding_box, cnn_denoise, resolve_device
from .network import KERNEL, N_BLOCKS

__all__ = ["RECEPTIVE_RADIUS", "RoutedExperts", "expert_weights", "routed_cnn_denoise"]

#: Voxels around a voxel that its CNN output depends on: the high-pass layer, the stem and
#: the two convolutions of each residual block, one voxel each (the head is 1x1x1).
RECEPTIVE_RADIUS = (KERNEL // 2) * (2 + 2 * N_BLOCKS)


@dataclass(frozen=True)
class RoutedExperts:
    """What the routing did: the experts that ran and the share of the head each denoised."""

    choices: list[ExpertChoice]   # weight = share of the head's voxel weights (sums to 1)
    voxels_computed: int          # CNN voxels evaluated, per flip, all experts together

    def record(self, registry: ExpertRegistry) -> list[dict]:
        return [{"NoiseLevelPercent": c.level, "Weight": round(c.weight, 6),
                 "SHA256": registry.sha256(c.level)} for c in self.choices]


def expert_weights(levels, percent: np.ndarray) -> dict[float, np.ndarray]:
    """Per-voxel weights of the registry ``levels`` (and the identity) for a level map.

    The vectorised :meth:`ExpertRegistry.select` with ``blend=True``: linear between the two
    levels bracketing each voxel's percentage, the top level above the top, the lowest
    blended with the identity (:data:`~.experts.IDENTITY_LEVEL`) below it.  Only levels with
    a non-zero weight somewhere are returned; the weights sum to 1 at every voxel.
    """
    levels = sorted(float(level) for level in levels)
    percent = np.clip(np.asarray(percent, dtype=np.float64), 0.0, None)
    nodes = [IDENTITY_LEVEL] + levels
    weights = {}
    for index, level in enumerate(nodes):
        # Hat function of the piecewise-linear interpolation between the nodes.
        weight = np.zeros(percent.shape)
        if index > 0:
            lower = nodes[index - 1]
            rising = (percent > lower) & (percent <= level)
            weight[rising] = (percent[rising] - lower) / (level - lower)
        else:
            weight[percent <= level] = 1.0
        if index + 1 < len(nodes):
            upper = nodes[index + 1]
            falling = (percent > level) & (percent < upper)
            weight[falling] = (upper - percent[falling]) / (upper - level)
        else:
            weight[percent > level] = 1.0
        if weight.any():
            weights[level] = weight.astype(np.float32)
    return weights


def _grow(box: tuple[slice, ...], margin: int, limits: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(slice(max(b.start - margin, lim.start), min(b.stop + margin, lim.stop))
                 for b, lim in zip(box, limits))


def _regions(support: np.ndarray):
    """``(bounding box, voxels of the piece in the box)`` of each connected piece of
    ``support`` (26-connectivity)."""
    labels, _ = ndi.label(support, structure=np.ones((3, 3, 3), bool))
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is not None:
            yield box, labels[box] == index


def routed_cnn_denoise(x_norm: np.ndarray, percent: np.ndarray, registry: ExpertRegistry, *,
                       tta: bool = True, device="auto", mask: np.ndarray | None = None,
                       precision: str = "auto", progress: bool = False
                       ) -> tuple[np.ndarray, RoutedExperts]:
    """CNN mixture of experts with per-voxel weights from a noise level map.

    Parameters
    ----------
    x_norm : numpy.ndarray
        Finite 3D volume in network units (reference tissue ~1).
    percent : numpy.ndarray
        Local noise level (percent of the reference tissue) of every voxel, same shape.
    registry : ExpertRegistry
    tta, device, precision, progress
        As in :func:`~.inference.cnn_denoise`.
    mask : numpy.ndarray of bool, optional
        Head mask: only its bounding box (grown by the usual margin) is denoised, the rest
        keeps its input value, as in the global path.

    Returns
    -------
    output : numpy.ndarray
        float32, ``x_norm``'s shape.
    routed : RoutedExperts
    """
    volume = np.asarray(x_norm, dtype=np.float32)
    percent = np.asarray(percent, dtype=np.float32)
    if volume.ndim != 3 or percent.shape != volume.shape:
        raise ValueError(f"routed_cnn_denoise: volume {volume.shape} and level map {percent.shape} "
                         "must be 3D of one shape")
    if not np.isfinite(percent).all():
        raise ValueError("routed_cnn_denoise: the level map has non-finite values")
    device = resolve_device(device)
    output = volume.copy()
    full = tuple(slice(0, n) for n in volume.shape)
    head = full if mask is None else bounding_box(np.asarray(mask, bool), DEFAULT_MARGIN)
    if head is None:
        return output, RoutedExperts([], 0)
    weights = expert_weights(registry.levels, percent[head])
    head_shape = output[head].shape
    mixed = np.zeros(head_shape, np.float32)
    shares, computed = {}, 0
    crop_volume = volume[head]
    limits = tuple(slice(0, n) for n in head_shape)
    for level, weight in weights.items():
        shares[level] = float(weight.sum())
        if level == IDENTITY_LEVEL:
            mixed += weight * crop_volume
            continue
        model = registry.load(level, device)
        for region, piece in _regions(weight > 0):
            box = _grow(region, RECEPTIVE_RADIUS, limits)
            denoised = cnn_denoise(crop_volume[box], [(model, 1.0)], tta=tta, device=device,
                                   precision=precision, progress=progress)
            computed += int(np.prod(denoised.shape))
            inside = tuple(slice(r.start - b.start, r.stop - b.start) for r, b in zip(region, box))
            mixed[region] += np.where(piece, weight[region] * denoised[inside], 0.0)
    output[head] = mixed
    total = sum(shares.values())
    choices = [ExpertChoice(level, share / total) for level, share in sorted(shares.items())]
    return output, RoutedExperts(choices, computed)
