"""Memory-bounded CNN inference: experts mixture, flip test-time augmentation, tiling.

Implements the inference side of the Auto-N2N paper [1]_ (sections 2.4-2.5):
the selected expert(s) are applied to the intensity-normalised volume with
test-time augmentation by flips along each axis, the passes averaged.  The
volume is cropped to the head bounding box and processed tile by tile with
MONAI's sliding-window inferer (Gaussian blending), so memory is bounded for
any image size.

References
----------
.. [1] S. Morell-Ortega et al., "Auto-N2N: Self-supervised MRI Denoising using
   Synthetic Pair Generation and Mixture of Experts", sections 2.4-2.5.
.. [2] MONAI Consortium, ``monai.inferers.sliding_window_inference``.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from . import memory
from ._checks import real_volume

#: Crops of at most this many voxels run as a single tile: no voxel is computed twice (with
#: 128^3 tiles and 25 % overlap a 181x217x181 head computes 2.4x its voxels) and peak memory
#: stays near 3 GiB in fp32 (measured: 2.9 GiB RSS for 7.1 M voxels, 2.1 GiB in bf16).
MAX_SINGLE_TILE_VOXELS = 8_000_000
#: Tile edge for larger crops; keeps memory bounded for any volume size.
DEFAULT_ROI_SIZE = (160, 160, 160)
#: Margin (voxels) kept around the head mask's bounding box, so that the edge
#: of the head is not at the crop border, where the network would see
#: replicated voxels instead of the real background.
DEFAULT_MARGIN = 8
#: Flip test-time augmentation, as the tensor dimensions each pass flips: the identity and the
#: flip of all three axes at once.  The paper averages the identity and the three single-axis
#: flips (section 2.5); on the held-out real scan (philips_ADNI_MPRAGE_T1w, 96x128x112 crop,
#: Rician 3-9 %) these two passes gave the full pipeline's PSNR to within 0.005-0.022 dB of the
#: four, at half the CNN's cost (measured during development on a loaded machine;
#: ``bids_auton2n-bench final-stage`` reruns the comparison, its results file is not yet made).
TTA_FLIPS = ((), (2, 3, 4))
#: The paper's passes: the identity and the flip of each axis alone (the benchmark's
#: ``ours-paper`` row and the final-stage study compare them with :data:`TTA_FLIPS`).
PAPER_TTA_FLIPS = ((), (2,), (3,), (4,))
#: Numerical precisions accepted by :func:`cnn_denoise` (see docs/cnn-performance.md).
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_device(name: str | torch.device = "auto", threads: int | None = None) -> torch.device:
    """Torch device from a name: ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda[:k]"``.

    Parameters
    ----------
    name : str or torch.device
    threads : int, optional
        On CPU, set ``torch.set_num_threads(threads)``; when omitted the
        caller's current setting is kept.

    Raises
    ------
    ValueError
        Unknown device name, or CUDA requested but not available.
    """
    if isinstance(name, str) and name.lower() == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError) as error:
            raise ValueError(f"unknown device {name!r} (use auto, cpu or cuda[:index])") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {name!r} (use auto, cpu or cuda[:index])")
    if device.type == "cpu" and threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(int(threads))
    return device


def bounding_box(mask: np.ndarray, margin: int = DEFAULT_MARGIN) -> tuple[slice, ...] | None:
    """Slices of the bounding box of ``mask`` grown by ``margin`` voxels (None if empty)."""
    nonzero = np.nonzero(mask)
    if nonzero[0].size == 0:
        return None
    return tuple(
        slice(max(int(axis.min()) - margin, 0), min(int(axis.max()) + margin + 1, size))
        for axis, size in zip(nonzero, mask.shape)
    )


def gaussian_weight_map(tile: Sequence[int], device: torch.device) -> torch.Tensor:
    """Separable Gaussian blending weights of one tile (sigma = 1/8 of its size per axis).

    Same profile as MONAI's ``mode="gaussian"`` but floored at 1e-20 instead of
    MONAI's 1e-3: near the volume's edges and corners, where every covering
    tile is below 1e-3, that clamp makes all tiles weigh the same, so a tile
    whose (replicate-padded) face lies within the network's receptive field
    gets as much say as one that sees the real neighbourhood.
    """
    weights = torch.ones((), dtype=torch.float64)
    for size in tile:
        centred = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
        profile = torch.exp(-0.5 * (centred / (size / 8.0)) ** 2)
        weights = weights[..., None] * profile
    return weights.clamp_min(1e-20).to(device=device, dtype=torch.float32)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: bf16 where the hardware computes it natively, else fp32.

    bf16 autocast cost no PSNR with the shipped experts on the ICBM152 phantom (1, 5, 9 %:
    +0.013, +0.002, +0.003 dB against fp32) and ran 1.37x faster on the 2-core AVX-512-BF16 CPU
    (docs/cnn-performance.md); without native support it would be emulated, hence slower.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def memory_format(device: torch.device) -> torch.memory_format:
    """``channels_last_3d`` on CPU, where oneDNN's 3D convolutions run faster in it.

    Measured on the whole 181x217x181 phantom, one pass (benchmarks/results/engine_targets.md):
    fp32 7.75 -> 5.47 s, bf16 5.77 -> 4.40 s.  CUDA keeps the default layout (not measured).
    """
    return torch.channels_last_3d if device.type == "cpu" else torch.contiguous_format


def _autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def cnn_denoise(
    x_norm: np.ndarray,
    experts: Sequence[tuple[nn.Module, float]],
    *,
    tta: bool = True,
    device: str | torch.device = "auto",
    roi_size: Sequence[int] | None = None,
    overlap: float = 0.25,
    mask: np.ndarray | None = None,
    margin: int = DEFAULT_MARGIN,
    sw_batch_size: int = 1,
    precision: str = "auto",
    flips: Sequence[tuple[int, ...]] | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Denoise a normalised 3D volume with a weighted mixture of CNN experts.

    ``output = sum_i w_i * mean_t T_t^-1(f_i(T_t(x))) / sum_i w_i`` over experts
    ``(f_i, w_i)`` and transforms ``T_t`` (identity and, with ``tta``, flips
    of :data:`TTA_FLIPS`), each pass run tile by tile
    by :func:`monai.inferers.sliding_window_inference` with Gaussian blending (a crop that
    fits one tile is a single forward pass).

    Parameters
    ----------
    x_norm : numpy.ndarray
        3D finite volume in network units (reference tissue ~1.0, see
        :class:`~bids_auton2n.denoise.intensity.IntensityNormalizer`).
    experts : sequence of (torch.nn.Module, float)
        Models (e.g. from :meth:`ExpertRegistry.load`) and non-negative blending
        weights (normalised to sum 1).  Models are moved to ``device``.
    tta : bool
        Average the passes of :data:`TTA_FLIPS` (the identity and the flip of all axes).
    device : str or torch.device
        See :func:`resolve_device`.
    roi_size : sequence of 3 int, optional
        Tile size; clipped to the (cropped) volume size so small volumes are
        processed in one tile, without padding.  Default: sized from the memory budget
        (:func:`~bids_auton2n.denoise.memory.cnn_tile`) when one is set, else the whole crop
        when it has at most :data:`MAX_SINGLE_TILE_VOXELS` voxels, else :data:`DEFAULT_ROI_SIZE`.
        On CPU keep tiles >= 48 per
        edge: PyTorch runs 32^3 convolutions outside oneDNN, ~10x slower
        (docs/cnn-performance.md).
    overlap : float
        Fractional tile overlap for the sliding window.
    mask : numpy.ndarray of bool, optional
        Head mask: only its bounding box (grown by ``margin``) is processed;
        voxels outside keep their input value.  An empty mask returns a copy.
    margin : int
        Voxels added around the mask's bounding box.
    sw_batch_size : int
        Tiles per forward call.
    precision : {"auto", "fp32", "bf16"}
        ``"bf16"`` runs the convolutions under bfloat16 autocast; ``"auto"`` (default)
        picks it where the hardware supports it (:func:`resolve_precision`).
        The input and the global skip stay fp32.
    flips : sequence of tuples of int, optional
        The passes of the augmentation, as the tensor dimensions (2, 3, 4) each flips;
        default :data:`TTA_FLIPS` with ``tta``, the identity alone without.
    progress : bool
        Show a tqdm bar over the (expert, flip) passes.

    Returns
    -------
    numpy.ndarray
        float32 volume of ``x_norm``'s shape.
    """
    volume = real_volume(x_norm, "cnn_denoise").astype(np.float32, copy=False)
    torch_device = resolve_device(device)
    precision = resolve_precision(precision, torch_device)
    if len(experts) == 0:
        raise ValueError("cnn_denoise needs at least one (model, weight) expert")
    weights = np.array([float(weight) for _, weight in experts], dtype=np.float64)
    if not np.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"expert weights must be finite, >= 0 and not all 0, got {weights.tolist()}")
    weights = weights / weights.sum()
    if roi_size is not None and (len(roi_size) != 3 or min(roi_size) < 1):
        raise ValueError(f"roi_size must be 3 positive ints, got {roi_size}")

    output = volume.copy()
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != volume.shape:
            raise ValueError(f"mask shape {mask.shape} differs from volume shape {volume.shape}")
        box = bounding_box(mask, margin)
        if box is None:
            return output
    else:
        box = tuple(slice(0, size) for size in volume.shape)

    crop = np.ascontiguousarray(volume[box])
    if roi_size is None:
        roi_size = memory.cnn_tile(crop.shape, volume.size)  # None without a memory budget
    if roi_size is None:
        roi_size = crop.shape if crop.size <= MAX_SINGLE_TILE_VOXELS else DEFAULT_ROI_SIZE
    tile = tuple(min(int(r), s) for r, s in zip(roi_size, crop.shape))
    if flips is None:
        flips = list(TTA_FLIPS) if tta else [()]
    flips = [tuple(flip) for flip in flips]
    if not flips or any(not set(flip) <= {2, 3, 4} for flip in flips):
        raise ValueError(f"flips must be a non-empty list of subsets of (2, 3, 4), got {flips}")
    passes = [(model, weight, flip) for (model, _), weight in zip(experts, weights) for flip in flips]

    layout = memory_format(torch_device)
    single_tile = tuple(tile) == crop.shape
    if single_tile:
        def predict(volume, model):
            return model(volume)
    else:
        # MONAI is imported only here: importing it loads all its submodules (seconds of a
        # command's start), and a crop that fits one tile needs no sliding window.
        from monai.inferers import sliding_window_inference

        def predict(volume, model):
            return sliding_window_inference(
                volume, roi_size=tile, sw_batch_size=sw_batch_size, predictor=model,
                overlap=overlap, roi_weight_map=gaussian_weight_map(tile, torch_device))
    with torch.inference_mode():
        inputs = torch.from_numpy(crop)[None, None].to(torch_device)
        accumulated = torch.zeros_like(inputs)
        for model, weight, flip in tqdm(passes, desc="CNN passes", disable=not progress):
            # The weights' layout sets the convolutions' (a one-channel input is both layouts).
            model.to(torch_device, memory_format=layout).eval()
            flipped = torch.flip(inputs, flip) if flip else inputs
            with _autocast(torch_device, precision):
                prediction = predict(flipped, model)
            del flipped  # whole-crop arrays: one fewer alive while the prediction is flipped
            prediction = prediction.float()
            if flip:
                prediction = torch.flip(prediction, flip)
            prediction *= weight / len(flips)
            accumulated += prediction
        output[box] = accumulated[0, 0].cpu().numpy()
    return output
