"""The denoisers compared by the benchmark: a registry of small functions.

Each method takes the noisy volume and a :class:`MethodInput` and returns the denoised volume
plus a dict of stage timings (seconds; empty when the method has no stages). Methods import
their packages inside the function, so a missing package only makes that method unavailable.
They are run one method x one volume per process by :mod:`bids_auton2n.bench.worker`.

References
----------
.. [1] Avants B.B. et al. ANTs DenoiseImage: Manjón J.V. et al. (2010) Adaptive non-local means
   denoising of MR images with spatially varying noise levels. JMRI 31:192-203.
.. [2] Coupé P. et al. (2008) An optimized blockwise non local means denoising filter for 3D
   magnetic resonance images. IEEE TMI 27(4):425-441 (DIPY ``nlmeans``).
.. [3] Maggioni M. et al. (2013) Nonlocal transform-domain filter for volumetric data denoising
   and reconstruction. IEEE TIP 22(1):119-133 (BM4D).
.. [4] Buades A. et al. (2005) A non-local algorithm for image denoising. CVPR (scikit-image
   ``denoise_nl_means``); Donoho D.L., Johnstone I.M. (1994) wavelet MAD sigma estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class MethodInput:
    """What a method may know besides the noisy image.

    ``true_sigma`` (image units) is only given to oracle methods; ``None`` on real scans.
    """

    contrast: str
    voxel_size: tuple
    true_sigma: float | None
    threads: int


@dataclass(frozen=True)
class Method:
    name: str
    description: str
    run: Callable[[np.ndarray, MethodInput], tuple[np.ndarray, dict]]
    needs_true_sigma: bool = False


def _identity(noisy, _):
    return noisy, {}


def _ours(**flags):
    def run(noisy, given):
        from bids_auton2n.denoise.pipeline import denoise_array

        result = denoise_array(noisy, contrast=given.contrast, mask=None, device="auto", **flags)
        return result.denoised, dict(result.timings)

    return run


def _paper_pipeline(noisy, given):
    """Auto-N2N as the paper describes it, from the library's steps (four single-axis flips)."""
    from bids_auton2n.denoise import pipeline
    from bids_auton2n.denoise.experts import ExpertRegistry
    from bids_auton2n.denoise.inference import PAPER_TTA_FLIPS
    from bids_auton2n.denoise.noise import head_mask

    mask = head_mask(noisy)
    noise = pipeline.estimate_array_noise(noisy, contrast=given.contrast, mask=mask)
    registry = ExpertRegistry()
    cnn = pipeline.run_experts(noisy, noise, pipeline.choose_experts(registry, noise.percent),
                               registry, tta=True, device="cpu", mask=mask,
                               flips=PAPER_TTA_FLIPS)
    return pipeline.final_image(noisy, cnn, noise.sigma, fusion=True, guard=False, rician=True,
                                wiener=False), {}


def _ants(noisy, given):
    import ants

    image = ants.from_numpy(np.ascontiguousarray(noisy, dtype=np.float32), spacing=given.voxel_size)
    return ants.denoise_image(image, noise_model="Rician").numpy(), {}


def _dipy(noisy, _):
    from dipy.denoise.nlmeans import nlmeans
    from dipy.denoise.noise_estimate import estimate_sigma

    # N=0 (no coil correction): on the phantom N=1 overestimated sigma 1.9x and N=0 1.25x
    # (3 % T1w, true sigma 6), so N=0 is the kinder setting for this peer.
    sigma = float(np.ravel(estimate_sigma(noisy, N=0))[0])
    return nlmeans(noisy, sigma, patch_radius=1, block_radius=5, rician=True), {}


def _bm4d(noisy, given):
    import bm4d

    if given.true_sigma is None:
        raise LookupError("oracle method: needs the true sigma, unknown on real scans")
    return np.asarray(bm4d.bm4d(noisy, given.true_sigma), dtype=np.float32), {}


def _bm4d_estimated(noisy, _):
    import bm4d
    from skimage.restoration import estimate_sigma

    # What a user gets without the true sigma: BM4D with the wavelet (Donoho-Johnstone MAD)
    # estimate, the estimator scikit-image and the BM3D/BM4D examples pair with it.
    sigma = float(estimate_sigma(noisy, channel_axis=None))
    return np.asarray(bm4d.bm4d(noisy, sigma), dtype=np.float32), {"sigma": sigma}


#: Training budget of the Noise2Void peer on each volume: N2V_STEPS Adam steps of N2V_BATCH
#: patches of N2V_PATCH voxels (CAREamics tiles the training array into patches; the number
#: of epochs is set to reach the steps).
N2V_STEPS = 400
N2V_BATCH = 8
N2V_PATCH = (32, 32, 32)
#: Patches CAREamics keeps for its validation.
N2V_VAL = 2


def _careamics_import():
    """``careamics`` with a CPU torch: the PyPI torchvision wheel it imports is built for CUDA.

    Its compiled operators cannot load against a CPU build of torch, and it then fails at
    import registering fake kernels for two operators that were never defined.  Defining their
    schemas lets the pure-Python part import; CAREamics' Noise2Void uses none of the operators.
    """
    import torch

    try:
        import torchvision  # noqa: F401
    except RuntimeError:
        library = torch.library.Library("torchvision", "DEF")
        for name in ("nms", "qnms"):
            library.define(f"{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _careamics_import.library = library  # keep the definitions alive
        import torchvision  # noqa: F401
    import careamics

    return careamics


def n2v_tiles(shape) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Tile sizes and overlaps of the Noise2Void peer's prediction for a volume of ``shape``.

    CAREamics accepts tiles that are powers of two of at least 16 (its TiledPatchingConfig;
    they are then divisible by 2**depth of its U-Net) and even overlaps below the tile.
    """
    tile = tuple(min(t, max(16, 2 ** int(np.log2(s)))) for t, s in zip((64, 128, 128), shape))
    return tile, tuple(min(o, t // 2) for o, t in zip((16, 32, 32), tile))


def _noise2void(noisy, given):
    import tempfile

    careamics = _careamics_import()
    from careamics.config import create_n2v_config

    with tempfile.TemporaryDirectory(prefix="n2v_") as work:
        patches = int(np.prod([max(n // p, 1) for n, p in zip(noisy.shape, N2V_PATCH)])) - N2V_VAL
        steps_per_epoch = max(-(-patches // N2V_BATCH), 1)
        config = create_n2v_config(
            experiment_name="bench_n2v", data_type="array", axes="ZYX", patch_size=list(N2V_PATCH),
            batch_size=N2V_BATCH, num_epochs=max(-(-N2V_STEPS // steps_per_epoch), 1),
            augmentations=["x_flip", "y_flip"], n_val_patches=N2V_VAL,
        )
        model = careamics.CAREamist(config=config, work_dir=work, enable_progress_bar=False)
        volume = np.ascontiguousarray(noisy, dtype=np.float32)
        model.train(train_data=volume)
        tile, overlap = n2v_tiles(volume.shape)
        predictions, _ = model.predict(volume, data_type="array", axes="ZYX", tile_size=tile,
                                       tile_overlap=overlap)
    output = np.squeeze(np.asarray(predictions[0]))
    return output.astype(np.float32), {}


def _skimage(noisy, _):
    from skimage.restoration import denoise_nl_means, estimate_sigma

    sigma = float(estimate_sigma(noisy, channel_axis=None))
    # h = 0.8 sigma with the sigma subtraction: scikit-image's documented recommendation.
    denoised = denoise_nl_means(noisy, h=0.8 * sigma, sigma=sigma, patch_size=3, patch_distance=5,
                                fast_mode=True, channel_axis=None)
    return denoised, {}


METHODS = {
    m.name: m
    for m in (
        Method("noisy", "the noisy input, unchanged", _identity),
        Method("ours", "Auto-N2N experts + flip TTA (2 passes) + RI-NLM fusion + collaborative "
               "Wiener stage + do-no-harm guard (denoise_array defaults)", _ours()),
        Method("ours-noguard", "ours without the do-no-harm guard (guard=False)", _ours(guard=False)),
        Method("ours-nowiener", "ours without the collaborative Wiener stage (wiener=False)",
               _ours(wiener=False)),
        Method("ours-paper", "the paper's pipeline: experts, four single-axis flips, RI-NLM fusion; "
               "no Wiener stage, no guard", _paper_pipeline),
        Method("ours-cnn", "ours, CNN + TTA only: no RI-NLM fusion, no Wiener stage, no guard",
               _ours(fusion=False, guard=False, wiener=False)),
        Method("ours-notta", "ours without flip TTA (tta=False)", _ours(tta=False)),
        Method("ours-global", "ours with one noise level for the whole image (noise_model="
               "'global'), never the local noise map's routing", _ours(noise_model="global")),
        Method("ours-auto", "ours with noise_model='auto': the local noise map's routing where "
               "its spread exceeds noisemap.ADAPTIVE_SPREAD (the default until 2026-12-02)",
               _ours(noise_model="auto")),
        Method("ours-adaptive", "ours always with the local noise map's routing (noise_model="
               "'adaptive')", _ours(noise_model="adaptive")),
        Method("ants", "ANTs DenoiseImage via antspyx, Rician model, own noise estimate", _ants),
        Method("dipy", "DIPY blockwise nlmeans, Rician, sigma from dipy estimate_sigma(N=0)", _dipy),
        Method("bm4d", "BM4D (bm4d package) given the TRUE sigma: an oracle, Gaussian model", _bm4d,
               needs_true_sigma=True),
        Method("bm4d-est", "BM4D (bm4d package) with sigma from scikit-image estimate_sigma "
               "(wavelet MAD): what a user gets", _bm4d_estimated),
        Method("n2v", f"CAREamics Noise2Void 3D trained on the noisy volume itself: about {N2V_STEPS} "
               f"Adam steps of {N2V_BATCH} patches of {'x'.join(map(str, N2V_PATCH))} voxels",
               _noise2void),
        Method("skimage", "scikit-image denoise_nl_means 3D, h=0.8 sigma, sigma from estimate_sigma",
               _skimage),
    )
}

#: Cheap enough for CI smoke runs.
QUICK_METHODS = ("noisy", "dipy", "ours")
