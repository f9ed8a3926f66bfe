"""The Auto-N2N denoising pipeline: estimate → select expert → CNN + TTA → RI-NLM fusion → guard.

Arrays in, arrays out. Every caller goes through :func:`denoise_array` (the single-image command
through its file-level wrapper :func:`bids_auton2n.utils.io.denoise_file`, the benchmark directly)
or, in the BIDS-App's Nipype nodes (:mod:`bids_auton2n.interfaces.denoise`), through the very
functions it composes, so the steps and the provenance record are the same everywhere
(``tests/test_workflow_equivalence.py`` checks the two give the same bytes).

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

import numpy as np

from .. import __version__
from . import CONTRASTS
from .experts import ExpertChoice, ExpertRegistry
from .guard import MAX_RESIDUAL_RMS, limit_residual
from .inference import cnn_denoise, resolve_device
from .intensity import IntensityNormalizer, sanitize
from .noise import NoiseEstimate, estimate_noise, head_mask, reference_intensity
from .rinlm import ri_nlm
from .wiener import BLOCK, GROUP_SIZE, SEARCH_RADIUS, STEP, collaborative_wiener

LOGGER = logging.getLogger("bids_auton2n.denoise")


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
    wiener: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    expert_selection: str = "nearest"

    def provenance(self) -> dict:
        """JSON-serialisable record for sidecars and reports."""
        return {
            "NoiseEstimate": noise_sidecar(self.noise, self.noise_source),
            "Experts": [
                {"NoiseLevelPercent": c.level, "Weight": c.weight,
                 "SHA256": self.weights_sha256[_level_key(c.level)]}
                for c in self.experts
            ],
            "ExpertSelection": self.expert_selection,
            "TestTimeAugmentation": self.tta,
            "RINLMFusion": self.fusion,
            "CollaborativeWiener": ({"BlockSize": BLOCK, "GroupSize": GROUP_SIZE,
                                     "SearchRadius": SEARCH_RADIUS, "Step": STEP}
                                    if self.wiener else False),
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
    if key.startswith("n_"):
        key = "number_of" + key[1:]
    return key.replace("_", " ").title().replace(" ", "")


def noise_sidecar(noise: NoiseEstimate, source: str) -> dict:
    """The ``NoiseEstimate`` entry of a sidecar, in the CamelCase of BIDS keys.

    The one definition of those keys (``Sigma``, ``Percent``, ``ReferenceTissue``,
    ``ReferenceIntensity``, ...: each field of :class:`~.noise.NoiseEstimate`), with
    ``Source``: ``"estimated"`` or ``"user"``.

    Parameters
    ----------
    noise : NoiseEstimate
        The estimate (or the user's ``--noise-level``) the image was denoised with.
    source : str
        ``"estimated"`` or ``"user"``: where the noise level came from.
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
    wiener: bool = True,
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
    wiener : bool
        Re-estimate the image from the noisy data by collaborative Wiener filtering with the
        fused image as pilot (:func:`~.wiener.collaborative_wiener`).
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
                           wiener=wiener, timings=timings, progress=progress)
    denoised = output_image(denoised, x, nonfinite)
    timings["total"] = time.perf_counter() - start
    return DenoiseResult(
        denoised=denoised,
        noise=noise,
        noise_source=noise_source,
        experts=choices,
        weights_sha256=expert_hashes(registry, choices),
        tta=tta,
        fusion=fusion,
        rician=rician,
        device=str(torch_device),
        guard=guard,
        wiener=wiener,
        timings=timings,
        expert_selection=expert_selection(expert, blend),
    )


def noise_for_level(finite: np.ndarray, *, mask: np.ndarray, contrast: str,
                    percent: float) -> NoiseEstimate:
    """A user-given noise level (percent of the reference tissue) as a :class:`NoiseEstimate`.

    Parameters
    ----------
    finite : ndarray, 3D
        The image, non-finite voxels set to 0 (:func:`~.intensity.sanitize`).
    mask : ndarray of bool
        Head mask (the reference tissue is measured in it).
    contrast : {"T1w", "T2w", "FLAIR", "PDw"}
        Selects the reference tissue.
    percent : float
        Noise level, percent of the reference tissue's intensity (>= 0).

    Returns
    -------
    NoiseEstimate
        ``raw_std`` is NaN (nothing was measured).
    """
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
    """The user's expert if given (it must be in the registry), else the registry's choice.

    Parameters
    ----------
    registry : ExpertRegistry
        Where the experts come from.
    percent : float
        Noise level (percent of the reference tissue) the registry selects for.
    expert : float, optional
        Level of the expert to use instead of the selection.
    blend : bool
        Blend the two experts bracketing ``percent`` instead of taking the nearest.

    Returns
    -------
    list of ExpertChoice
        Levels and weights (summing to 1).
    """
    if expert is None:
        return registry.select(percent, blend=blend)
    registry.entry(expert)  # fails clearly for a level the registry does not have
    return [ExpertChoice(level=float(expert), weight=1.0)]


def expert_selection(expert: float | None, blend: bool) -> str:
    """How :func:`choose_experts` chose: ``"user"`` (``expert`` given), ``"blend"`` or ``"nearest"``.

    Parameters
    ----------
    expert, blend
        The arguments of :func:`choose_experts`.
    """
    return "user" if expert is not None else "blend" if blend else "nearest"


def expert_hashes(registry: ExpertRegistry, choices: list[ExpertChoice]) -> dict[str, str]:
    """SHA-256 of the weights of each chosen expert, by level (``DenoiseResult.weights_sha256``).

    Parameters
    ----------
    registry : ExpertRegistry
    choices : list of ExpertChoice
    """
    return {_level_key(c.level): registry.sha256(c.level) for c in choices}


def run_experts(finite: np.ndarray, noise: NoiseEstimate, choices: list[ExpertChoice],
                registry: ExpertRegistry, *, tta: bool, device, mask: np.ndarray,
                flips=None, progress: bool = False) -> np.ndarray:
    """CNN mixture of experts in network units (reference tissue = 1), back in image units.

    Parameters
    ----------
    finite : ndarray, 3D
        The image, non-finite voxels set to 0.
    noise : NoiseEstimate
        Its ``reference_intensity`` is the unit of the networks.
    choices : list of ExpertChoice
        Experts and their weights.
    registry : ExpertRegistry
        Where their weights come from.
    tta : bool
        Average the passes of :data:`~.inference.TTA_FLIPS`.
    device : str or torch.device
        See :func:`~.inference.resolve_device`.
    mask : ndarray of bool
        Head mask (the networks run on its bounding box).
    flips : sequence of tuples of int, optional
        Other passes than :data:`~.inference.TTA_FLIPS` (see :func:`~.inference.cnn_denoise`).
    progress : bool
        Show a progress bar.

    Returns
    -------
    ndarray, float32
        The mixture's output in image units.
    """
    device = resolve_device(device)
    models = [(registry.load(c.level, device), c.weight) for c in choices]
    normalizer = IntensityNormalizer(noise.reference_intensity)
    return normalizer.inverse(cnn_denoise(
        normalizer.forward(finite), models, tta=tta, device=device, mask=mask, flips=flips,
        progress=progress,
    ))


def fuse_rinlm(finite: np.ndarray, cnn: np.ndarray, sigma: float, *, rician: bool) -> np.ndarray:
    """The paper's final image: the mean of the CNN output and RI-NLM guided by it.

    RI-NLM runs on the whole volume, not only in the head mask: where a mask misses tissue
    (e.g. dark CSF of a field of view cropped inside the head) a masked filter would return
    the noisy input there and the mean would keep half of the noise.
    """
    guided = ri_nlm(finite, cnn, sigma, rician=rician)
    guided += cnn  # in place: 0.5 * (cnn + guided) without two more volumes
    guided *= 0.5
    return guided


def final_image(finite: np.ndarray, cnn: np.ndarray, sigma: float, *, fusion: bool, guard: bool,
                rician: bool, wiener: bool = True, timings: dict | None = None,
                progress: bool = False) -> np.ndarray:
    """From the CNN output to the pipeline's output: RI-NLM fusion, Wiener stage, guard.

    The guard (:func:`~.guard.limit_residual`) is applied to the CNN output before it guides
    RI-NLM, so that structure the network removed does not steer the filter's weights either,
    and again after each later step.  The collaborative Wiener stage
    (:func:`~.wiener.collaborative_wiener`) takes the image so far as its pilot and
    re-estimates it from the noisy data.  Each step is optional; ``timings`` receives their
    seconds under ``"rinlm"``, ``"wiener"`` and ``"guard"``.
    """
    timings = {} if timings is None else timings

    def guarded(image):
        if not guard:
            return image
        with _stage("guard", timings, progress):
            return limit_residual(finite, image, sigma)

    image = guarded(cnn)
    if fusion:
        with _stage("rinlm", timings, progress):
            image = fuse_rinlm(finite, image, sigma, rician=rician)
        image = guarded(image)
    if wiener:
        with _stage("wiener", timings, progress):
            image = collaborative_wiener(finite, image, sigma)
        image = guarded(image)
    return image


def output_image(denoised: np.ndarray, original: np.ndarray,
                 nonfinite: np.ndarray) -> np.ndarray:
    """The pipeline's output as it is written, the last step of every path (library and workflow).

    float32; no negative voxel where the input is a magnitude image (none of its finite voxels
    is negative: the denoiser's negative values there are not signal, they are set to 0); the
    input's NaN/Inf voxels put back where they were.

    Parameters
    ----------
    denoised : ndarray
        Output of :func:`final_image`.
    original : ndarray
        The input (its values are taken where ``nonfinite``; its sign decides the clipping).
    nonfinite : ndarray of bool
        Where the input was NaN or infinite (:func:`~.intensity.sanitize`).
    """
    denoised = np.array(denoised, dtype=np.float32)
    original = np.asarray(original, dtype=np.float32)
    if not np.any(original[~nonfinite] < 0):
        np.maximum(denoised, 0.0, out=denoised)
    denoised[nonfinite] = original[nonfinite]
    return denoised


def estimate_array_noise(finite: np.ndarray, *, contrast: str, mask: np.ndarray,
                         timings: dict | None = None, progress: bool = False) -> NoiseEstimate:
    """Auto-N2N noise estimate: the calibrated std of x − y, y the synthetic pair.

    The pair is searched only at the voxels the estimate reads (see
    :func:`~.noise.raw_noise_statistic`).

    Parameters
    ----------
    finite : ndarray, 3D
        The image, non-finite voxels set to 0.
    contrast : {"T1w", "T2w", "FLAIR", "PDw"}
        Selects the reference tissue of the percentage.
    mask : ndarray of bool
        Head mask.
    timings : dict, optional
        Receives the seconds of the stage ``"estimate"``.
    progress : bool
        Log each stage.

    Returns
    -------
    NoiseEstimate
    """
    timings = {} if timings is None else timings
    with _stage("estimate", timings, progress):
        return estimate_noise(finite, contrast=contrast, mask=mask)
