"""The Auto-N2N denoising pipeline: estimate → select expert → CNN + TTA → RI-NLM fusion → guard.

Every caller (the single-image command, the Nipype interfaces, the benchmark) goes through
:func:`denoise_array` or its file-level wrapper :func:`denoise_file`, so the steps and the
provenance record are the same everywhere.

References
----------
.. [1] Morell-Ortega S. et al. Auto-N2N: Self-supervised MRI denoising using synthetic pair
   generation and mixture of experts. MIDL 2026 (under review).
.. [2] Manjón J.V. et al. New methods for MRI denoising based on sparseness and
   self-similarity. Med Image Anal 16:18-27, 2012.
.. [3] Buades A, Coll B, Morel JM. A review of image denoising algorithms, with a new one.
   Multiscale Model Simul 4:490-530, 2005 (method noise; the do-no-harm guard).
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from .. import __version__
from .experts import ExpertChoice, ExpertRegistry
from .guard import MAX_RESIDUAL_RMS, limit_residual
from .inference import cnn_denoise, resolve_device
from .intensity import IntensityNormalizer, sanitize
from .noise import NoiseEstimate, estimate_noise, head_mask, noise_pair, reference_intensity
from .rinlm import ri_nlm

LOGGER = logging.getLogger("bids_auton2n.denoise")

#: BIDS suffixes the app denoises; used to infer the contrast from a file name.
CONTRASTS = ("T1w", "T2w", "FLAIR", "PDw")


#: Fewest voxels along any axis of an image: the edge of the patches (3x3x3) of the pairs.
MIN_EDGE = 3


class InputImageError(ValueError):
    """An input image that cannot be denoised; the message names the file."""


@dataclass
class DenoiseResult:
    """What :func:`denoise_array` produced and how."""

    denoised: np.ndarray
    noise: NoiseEstimate
    noise_source: str
    experts: list[ExpertChoice]
    weights_sha256: dict[str, str]
    tta: bool
    fusion: bool
    rician: bool
    device: str
    guard: bool = True
    timings: dict[str, float] = field(default_factory=dict)

    def provenance(self) -> dict:
        """JSON-serialisable record for sidecars and reports."""
        return {
            "NoiseEstimate": noise_sidecar(self.noise, self.noise_source),
            "Experts": [
                {"NoiseLevelPercent": c.level, "Weight": c.weight,
                 "SHA256": self.weights_sha256[_level_key(c.level)]}
                for c in self.experts
            ],
            "TestTimeAugmentation": self.tta,
            "RINLMFusion": self.fusion,
            "DoNoHarmGuard": ({"MaxResidualRMS": f"{MAX_RESIDUAL_RMS:g} x sigma"} if self.guard
                              else False),
            "RicianNoiseModel": self.rician,
            "Device": self.device,
            "TimingsSeconds": {k: round(v, 3) for k, v in self.timings.items()},
            "SoftwareName": "bids-auton2n",
            "SoftwareVersion": __version__,
        }


def _level_key(level: float) -> str:
    return f"{level:g}"


def _camel_case(key: str) -> str:
    """``reference_tissue`` -> ``ReferenceTissue``, ``n_voxels`` -> ``NumberOfVoxels``."""
    words = key.split("_")
    if words[0] == "n" and len(words) > 1:
        words[0] = "number_of"
        words = "_".join(words).split("_")
    return "".join(word.capitalize() for word in words)


def noise_sidecar(noise: NoiseEstimate, source: str) -> dict:
    """The ``NoiseEstimate`` entry of a sidecar, in the CamelCase of BIDS keys.

    The one definition of those keys (``Sigma``, ``Percent``, ``ReferenceTissue``,
    ``ReferenceIntensity``, ...: each field of :class:`~.noise.NoiseEstimate`), with
    ``Source``: ``"estimated"`` or ``"user"``.
    """
    return {**{_camel_case(k): v for k, v in noise.to_dict().items()}, "Source": source}


@contextmanager
def _stage(name: str, timings: dict, progress: bool):
    if progress:
        LOGGER.info("%s ...", name)
    start = time.perf_counter()
    yield
    elapsed = time.perf_counter() - start
    timings[name] = timings.get(name, 0.0) + elapsed  # a stage may run more than once
    if progress:
        LOGGER.info("%s done in %.1f s", name, elapsed)


def denoise_array(
    x: np.ndarray,
    *,
    contrast: str = "T1w",
    mask: np.ndarray | None = None,
    noise_level: float | None = None,
    expert: float | None = None,
    blend: bool = False,
    tta: bool = True,
    fusion: bool = True,
    guard: bool = True,
    device: str = "auto",
    rician: bool = True,
    registry: ExpertRegistry | None = None,
    progress: bool = False,
) -> DenoiseResult:
    """Denoise one 3D volume with the Auto-N2N mixture of experts.

    Parameters
    ----------
    x : ndarray, 3D
        Noisy magnitude image in its own units. Non-finite voxels are left as they are.
    contrast : {"T1w", "T2w", "FLAIR", "PDw"}
        Selects the reference tissue for the noise percentage (BrainWeb convention).
    mask : ndarray of bool, optional
        Head foreground; estimated with :func:`~.noise.head_mask` when omitted.
    noise_level : float, optional
        Noise in percent of the reference tissue; skips the estimate when given.
    expert : float, optional
        Expert level (percent) to use instead of the one nearest to the noise level.
    blend : bool
        Blend the two experts bracketing the noise level instead of picking the nearest.
    tta : bool
        Average the identity and the three axis flips.
    fusion : bool
        Average the CNN output with the RI-NLM filter guided by it (the paper's final image).
    guard : bool
        Give back what the denoiser removed beyond what the noise explains
        (:func:`~.guard.limit_residual`), so clean images and edges are kept.
    device : {"auto", "cpu", "cuda"}
    rician : bool
        Treat the data as Rician magnitude (bias-corrected RI-NLM); ``False`` for Gaussian.
    registry : ExpertRegistry, optional
        Where the expert weights come from (default: the experts shipped with the package).
    progress : bool
        Log each stage and show progress bars on long ones.

    Returns
    -------
    DenoiseResult
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, got {contrast!r}")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    finite, nonfinite = sanitize(x)
    if mask is None:
        mask = head_mask(finite)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != finite.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {finite.shape}")

    if noise_level is None:
        noise = estimate_array_noise(finite, contrast=contrast, mask=mask, timings=timings,
                                     progress=progress)
        noise_source = "estimated"
    else:
        noise = noise_for_level(finite, mask=mask, contrast=contrast, percent=noise_level)
        noise_source = "user"

    registry = registry or ExpertRegistry()
    choices = choose_experts(registry, noise.percent, expert=expert, blend=blend)
    torch_device = resolve_device(device)
    with _stage("cnn", timings, progress):
        cnn = run_experts(finite, noise, choices, registry, tta=tta, device=torch_device,
                          mask=mask, progress=progress)
    denoised = final_image(finite, cnn, noise.sigma, fusion=fusion, guard=guard, rician=rician,
                           timings=timings, progress=progress)
    denoised = output_image(denoised, x, nonfinite)
    timings["total"] = time.perf_counter() - start
    return DenoiseResult(
        denoised=denoised,
        noise=noise,
        noise_source=noise_source,
        experts=choices,
        weights_sha256={_level_key(c.level): registry.sha256(c.level) for c in choices},
        tta=tta,
        fusion=fusion,
        rician=rician,
        device=str(torch_device),
        guard=guard,
        timings=timings,
    )


def noise_for_level(finite: np.ndarray, *, mask: np.ndarray, contrast: str,
                    percent: float) -> NoiseEstimate:
    """A user-given noise level (percent of the reference tissue) as a :class:`NoiseEstimate`."""
    if not np.isfinite(percent) or percent < 0:
        raise ValueError(f"noise level must be a non-negative percentage, got {percent}")
    reference = reference_intensity(finite, mask, contrast)
    return NoiseEstimate(
        sigma=percent / 100.0 * reference.intensity,
        percent=float(percent),
        reference_tissue=reference.name,
        reference_intensity=reference.intensity,
        raw_std=float("nan"),
        n_voxels=int(mask.sum()),
    )


def choose_experts(registry: ExpertRegistry, percent: float, *, expert: float | None = None,
                   blend: bool = False) -> list[ExpertChoice]:
    """The user's expert if given (it must be in the registry), else the registry's choice."""
    if expert is None:
        return registry.select(percent, blend=blend)
    registry.entry(expert)  # fails clearly for a level the registry does not have
    return [ExpertChoice(level=float(expert), weight=1.0)]


def run_experts(finite: np.ndarray, noise: NoiseEstimate, choices: list[ExpertChoice],
                registry: ExpertRegistry, *, tta: bool, device, mask: np.ndarray,
                progress: bool = False) -> np.ndarray:
    """CNN mixture of experts in network units (reference tissue = 1), back in image units."""
    device = resolve_device(device)
    models = [(registry.load(c.level, device), c.weight) for c in choices]
    normalizer = IntensityNormalizer(noise.reference_intensity)
    return normalizer.inverse(cnn_denoise(
        normalizer.forward(finite), models, tta=tta, device=device, mask=mask, progress=progress,
    ))


def fuse_rinlm(finite: np.ndarray, cnn: np.ndarray, sigma: float, *, rician: bool) -> np.ndarray:
    """The paper's final image: the mean of the CNN output and RI-NLM guided by it.

    RI-NLM runs on the whole volume, not only in the head mask: where a mask misses tissue
    (e.g. dark CSF of a field of view cropped inside the head) a masked filter would return
    the noisy input there and the mean would keep half of the noise.
    """
    guided = ri_nlm(finite, cnn, sigma, rician=rician)
    return 0.5 * (cnn + guided)


def final_image(finite: np.ndarray, cnn: np.ndarray, sigma: float, *, fusion: bool, guard: bool,
                rician: bool, timings: dict | None = None, progress: bool = False) -> np.ndarray:
    """From the CNN output to the pipeline's output: RI-NLM fusion and the do-no-harm guard.

    The guard (:func:`~.guard.limit_residual`) is applied to the CNN output before it guides
    RI-NLM, so that structure the network removed does not steer the filter's weights either,
    and again to the fused image.  Each step is optional; ``timings`` receives their seconds
    under ``"rinlm"`` and ``"guard"``.
    """
    timings = {} if timings is None else timings
    if guard:
        with _stage("guard", timings, progress):
            cnn = limit_residual(finite, cnn, sigma)
    if fusion:
        with _stage("rinlm", timings, progress):
            cnn = fuse_rinlm(finite, cnn, sigma, rician=rician)
        if guard:
            with _stage("guard", timings, progress):
                cnn = limit_residual(finite, cnn, sigma)
    return cnn


def output_image(denoised: np.ndarray, original: np.ndarray,
                 nonfinite: np.ndarray) -> np.ndarray:
    """The pipeline's output as it is written, the last step of every path (library and
    workflow): float32; no negative voxel where the input is a magnitude image (none of its
    finite voxels is negative: the denoiser's negative values there are not signal, they are
    set to 0); the input's NaN/Inf voxels put back where they were."""
    denoised = np.array(denoised, dtype=np.float32)
    original = np.asarray(original, dtype=np.float32)
    if not np.any(original[~nonfinite] < 0):
        np.maximum(denoised, 0.0, out=denoised)
    denoised[nonfinite] = original[nonfinite]
    return denoised


def estimate_array_noise(finite: np.ndarray, *, contrast: str, mask: np.ndarray,
                         timings: dict | None = None, progress: bool = False) -> NoiseEstimate:
    """Auto-N2N noise estimate: synthetic pair, then the calibrated std of x − y."""
    timings = {} if timings is None else timings
    with _stage("pairs", timings, progress):
        pair = noise_pair(finite, mask=mask)
    with _stage("estimate", timings, progress):
        return estimate_noise(finite, contrast=contrast, mask=mask, pair=pair)


def contrast_from_filename(path: str | Path, default: str = "T1w") -> str:
    """The BIDS suffix of ``path`` if it names a supported contrast, else ``default``."""
    stem = Path(path).name.split(".")[0]
    suffix = stem.rsplit("_", 1)[-1]
    return suffix if suffix in CONTRASTS else default


def load_volume(path: str | Path) -> nib.Nifti1Image:
    """Load a 3D NIfTI image, refusing what cannot be denoised.

    A 4D image with a single volume is accepted as 3D. Raises :class:`InputImageError`
    (message names the file) for a missing or unreadable file, a non-NIfTI file, a 2D or
    multi-volume 4D image, an image thinner than a patch, and an image with no finite or no
    non-zero voxel; a DataLad file whose content was not fetched or a broken link is said so.
    """
    from ..utils.inputs import unreadable_reason

    path = Path(path)
    problem = unreadable_reason(path)
    if problem:
        raise InputImageError(problem)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise InputImageError(f"{path}: not a readable NIfTI image ({exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputImageError(f"{path}: not a NIfTI image ({type(img).__name__})")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) == 4:
        raise InputImageError(
            f"{path}: 4D image with {shape[3]} volumes; select one first, e.g. "
            f"`python -c \"import nibabel as nb; nb.load('{path.name}').slicer[..., 0]"
            f".to_filename('vol0.nii.gz')\"`"
        )
    if len(img.shape) != 3 or min(img.shape) < 2:
        raise InputImageError(f"{path}: image of shape {shape} is not a 3D volume")
    if min(img.shape) < MIN_EDGE:
        raise InputImageError(
            f"{path}: image of shape {shape} is thinner than the {MIN_EDGE}x{MIN_EDGE}x{MIN_EDGE} "
            "patches the denoiser compares")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputImageError(f"{path}: image data cannot be read ({exc})") from None
    finite = np.isfinite(data)
    if not finite.any():
        raise InputImageError(f"{path}: image has no finite voxel (all NaN/Inf)")
    if not np.any(data[finite]):
        raise InputImageError(f"{path}: image is all zeros")
    return img


#: What a written image keeps of its source (the methods text and ``--help`` quote it).
KEPT_FROM_SOURCE = ("voxel grid, affine (qform and sform with their codes), voxel sizes and "
                    "units of the source; data are stored as float32 (an integer source's "
                    "scaling applied), whatever the source's data type")


def save_like(data: np.ndarray, reference: nib.Nifti1Image, out_file: str | Path) -> None:
    """Write ``data`` as float32 with the reference's header (see :data:`KEPT_FROM_SOURCE`),
    atomically.

    Every field that describes the geometry (dim, pixdim with qfac, qform/sform codes, the
    quaternion, srow_*, units, slice timing fields) is kept bit for bit: the image is built
    without an affine, so nibabel does not recompute the quaternion from one. The file is
    written under a temporary name and renamed (:func:`~bids_auton2n.utils.atomic.atomic_path`),
    so a killed run or a full disk never leaves a partial image under ``out_file``.
    """
    from ..utils.atomic import atomic_path

    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    image_class = type(reference) if isinstance(reference, nib.Nifti2Image) else nib.Nifti1Image
    out = image_class(data.astype(np.float32, copy=False), None, header)
    out.header.set_slope_inter(1.0, 0.0)
    with atomic_path(out_file) as tmp:
        out.to_filename(str(tmp))


def read_volume(path: str | Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """:func:`load_volume` and its data in image units (NIfTI scaling applied), float32."""
    img = load_volume(path)
    return img, np.asarray(img.get_fdata(dtype=np.float32))


def _read_inputs(in_file, mask_file):
    img, data = read_volume(in_file)
    mask = None
    if mask_file is not None:
        mask_img = load_volume(mask_file)
        if mask_img.shape != img.shape:
            raise InputImageError(
                f"{mask_file}: mask shape {mask_img.shape} differs from image shape {img.shape}")
        mask = np.asanyarray(mask_img.dataobj) > 0
    return img, data, mask


def estimate_file_noise(in_file: str | Path, *, contrast: str | None = None,
                        mask_file: str | Path | None = None) -> NoiseEstimate:
    """Noise estimate of a NIfTI file (see :func:`estimate_array_noise`)."""
    _, data, mask = _read_inputs(in_file, mask_file)
    finite, _ = sanitize(data)
    if mask is None:
        mask = head_mask(finite)
    return estimate_array_noise(finite, contrast=contrast or contrast_from_filename(in_file),
                                mask=mask)


def denoise_file(
    in_file: str | Path,
    out_file: str | Path,
    *,
    contrast: str | None = None,
    mask_file: str | Path | None = None,
    noise_map: str | Path | None = None,
    **kwargs,
) -> DenoiseResult:
    """Denoise a NIfTI file and write the result (and optionally input − output).

    ``contrast`` defaults to the file's BIDS suffix (T1w when it has none); the other
    keyword arguments are those of :func:`denoise_array`.
    """
    img, data, mask = _read_inputs(in_file, mask_file)
    result = denoise_array(data, contrast=contrast or contrast_from_filename(in_file),
                           mask=mask, **kwargs)
    save_like(result.denoised, img, out_file)
    if noise_map is not None:
        save_like(np.nan_to_num(data - result.denoised), img, noise_map)
    return result
