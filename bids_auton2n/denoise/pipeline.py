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
from . import CONTRASTS, memory
from .experts import ExpertChoice, ExpertRegistry
from .guard import MAX_RESIDUAL_RMS, limit_residual
from .inference import cnn_denoise, resolve_device
from .intensity import IntensityNormalizer, sanitize
from .noise import (NoiseEstimate, estimate_noise, head_mask, noise_pair_values,
                    reference_intensity)
from .noisemap import NoiseMap, choose_noise_model, local_noise_map, percent_map
from .rician import expected_bias, rician_correct
from .rinlm import ri_nlm
from .routing import routed_cnn_denoise
from .slices import from_slices_first, slice_axis, slicewise_cnn_denoise, to_slices_first
from .wiener import BLOCK, GROUP_SIZE, PASS_STEPS, SEARCH_RADIUS, collaborative_wiener

LOGGER = logging.getLogger("bids_auton2n.denoise")

#: Where the Noise2Noise training pairs of an image come from (sidecar ``PairSource``):
#: the Auto-N2N synthetic pair of 3D patches (the shipped experts, as they are), the
#: neighbouring slices of a thick-slice image (NS-N2N fine-tuning on the image itself), or
#: repeated acquisitions of the image (Noise2Average / consensus N2N).
PAIR_SOURCES = ("synthetic-patches", "neighbouring-slices", "repeats")
#: ``pair_source`` choices of :func:`denoise_array`: ``auto`` picks neighbouring slices for
#: a thick-slice volume (:func:`~.slices.slice_axis`), synthetic patches otherwise.
PAIR_SOURCE_CHOICES = ("auto", "synthetic-patches", "neighbouring-slices")


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
    noise_model: dict = field(default_factory=lambda: {"Model": "global"})
    pair_source: str = "synthetic-patches"
    slice_pairs: dict | None = None
    noise_map: NoiseMap | None = None

    def provenance(self) -> dict:
        """JSON-serialisable record for sidecars and reports."""
        return {
            "NoiseEstimate": noise_sidecar(self.noise, self.noise_source),
            "NoiseModel": self.noise_model,
            "PairSource": self.pair_source,
            **({"SlicePairFineTuning": self.slice_pairs} if self.slice_pairs else {}),
            "Experts": [
                {"NoiseLevelPercent": c.level, "Weight": c.weight,
                 "SHA256": self.weights_sha256[_level_key(c.level)]}
                for c in self.experts
            ],
            "ExpertSelection": self.expert_selection,
            "TestTimeAugmentation": self.tta,
            "RINLMFusion": self.fusion,
            "CollaborativeWiener": ({"BlockSize": BLOCK, "GroupSize": GROUP_SIZE,
                                     "SearchRadius": SEARCH_RADIUS,
                                     "PassSteps": list(PASS_STEPS)}
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
    voxel_size=None,
    noise_model: str = "global",
    pair_source: str = "auto",
    slice_pair_budget_s: float | None = None,
    slice_pair_steps: int | None = None,
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
    voxel_size : sequence of 3 float, optional
        Voxel edges in mm (default 1 mm isotropic): the smoothing of the noise map and the
        slice axis of thick-slice volumes.
    noise_model : {"auto", "global", "adaptive"}
        ``global``: one noise level for the image; ``adaptive``: the local noise map
        (:mod:`~.noisemap`) routes each region to the experts of its level
        (:mod:`~.routing`) and gives RI-NLM, the guard and the Rician correction their local
        sigma; ``auto``: adaptive when the map's spread says the noise varies.  ``global`` is
        the default: on the held-out real scan the adaptive path lost 0.6-4.6 dB to it at
        1-9 % added noise, and every real scan in ``../shared/data`` has a spread that makes
        ``auto`` adaptive (docs/noise-models.md).
    pair_source : {"auto", "synthetic-patches", "neighbouring-slices"}
        ``neighbouring-slices``: fine-tune the selected expert on the image's own
        neighbouring-slice pairs (NS-N2N, :mod:`bids_auton2n.train.nsn2n`) and apply it slice
        by slice; ``auto``: for thick-slice volumes (:func:`~.slices.slice_axis`).
    slice_pair_budget_s : float, optional
        Wall-clock budget of that fine-tuning, all of it (default
        :data:`bids_auton2n.train.nsn2n.BUDGET_S`; ``None`` with ``slice_pair_steps``: no
        time limit).
    slice_pair_steps : int, optional
        Step limit of that fine-tuning.

    Returns
    -------
    DenoiseResult
    """
    if contrast not in CONTRASTS:
        raise ValueError(f"contrast must be one of {', '.join(CONTRASTS)}, got {contrast!r}")
    timings: dict[str, float] = {}
    start = time.perf_counter()
    finite, nonfinite = sanitize(x)
    memory.warn_if_below_minimum(finite.shape)
    if mask is None:
        mask = head_mask(finite)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != finite.shape:
        raise ValueError(f"mask shape {mask.shape} differs from image shape {finite.shape}")

    voxel_size = (1.0, 1.0, 1.0) if voxel_size is None else tuple(float(z) for z in voxel_size)
    source = resolve_pair_source(pair_source, voxel_size)
    if noise_level is None:
        noise, noise_map = estimate_noise_and_map(finite, contrast=contrast, mask=mask,
                                                  voxel_size=voxel_size, timings=timings,
                                                  progress=progress)
        noise_source = "estimated"
    else:
        noise = noise_for_level(finite, mask=mask, contrast=contrast, percent=noise_level)
        noise_source, noise_map = "user", None
    model = choose_noise_model(noise_map, noise_model)
    sigma = noise_map.sigma if model == "adaptive" else noise.sigma

    registry = registry or ExpertRegistry()
    choices = choose_experts(registry, noise.percent, expert=expert, blend=blend)
    torch_device = resolve_device(device)
    cnn, used = denoise_cnn(
        finite, noise, choices, registry, noise_model=model,
        sigma_map=None if noise_map is None else noise_map.sigma,
        pair_source=source, voxel_size=voxel_size, slice_pair_budget_s=slice_pair_budget_s,
        slice_pair_steps=slice_pair_steps, tta=tta, device=torch_device, mask=mask,
        timings=timings, progress=progress)
    denoised = final_image(finite, cnn, sigma, fusion=fusion, guard=guard, rician=rician,
                           wiener=wiener, timings=timings, progress=progress)
    denoised = output_image(denoised, x, nonfinite)
    timings["total"] = time.perf_counter() - start
    return DenoiseResult(
        denoised=denoised,
        noise=noise,
        noise_source=noise_source,
        experts=used.choices,
        weights_sha256=used.sha256,
        tta=tta,
        fusion=fusion,
        rician=rician,
        device=str(torch_device),
        guard=guard,
        wiener=wiener,
        timings=timings,
        expert_selection=expert_selection(expert, blend),
        noise_model=noise_model_record(model, noise_model, noise_map, noise),
        pair_source=source,
        slice_pairs=used.slice_pairs,
        noise_map=noise_map,
    )


def resolve_pair_source(requested: str, voxel_size) -> str:
    """The pair source for ``requested`` and the voxel size.

    Parameters
    ----------
    requested : str
        One of :data:`PAIR_SOURCE_CHOICES`; ``auto`` is ``neighbouring-slices`` for a
        thick-slice volume (:func:`~.slices.slice_axis`), ``synthetic-patches`` otherwise.
    voxel_size : sequence of 3 float
        Voxel edges in mm.
    """
    if requested not in PAIR_SOURCE_CHOICES:
        raise ValueError(f"pair source must be one of {', '.join(PAIR_SOURCE_CHOICES)}, "
                         f"got {requested!r}")
    if requested != "auto":
        return requested
    return "neighbouring-slices" if slice_axis(voxel_size) is not None else "synthetic-patches"


def pair_slice_axis(voxel_size) -> int:
    """Slice axis of the neighbouring-slice pairs: the thick-slice axis, else the axis of the
    largest spacing (the last of equal ones).

    Parameters
    ----------
    voxel_size : sequence of 3 float
        Voxel edges in mm.
    """
    axis = slice_axis(voxel_size)
    if axis is None:
        spacing = np.asarray(voxel_size, dtype=np.float64)
        axis = int(len(spacing) - 1 - np.argmax(spacing[::-1]))
    return axis


def noise_model_record(model: str, requested: str, noise_map: NoiseMap | None,
                       noise: NoiseEstimate) -> dict:
    """Sidecar record of the noise model: which one ran, who chose it, the map's summary.

    Parameters
    ----------
    model : {"global", "adaptive"}
        The model that ran (:func:`~.noisemap.choose_noise_model`).
    requested : {"auto", "global", "adaptive"}
        What was asked (``auto``: the choice was the map's).
    noise_map : NoiseMap or None
        The local noise map (None with a user-given noise level).
    noise : NoiseEstimate
        Its reference intensity turns the map into percent.
    """
    record = {"Model": model, "Choice": "user" if requested != "auto" else "auto"}
    if noise_map is not None:
        record["NoiseMap"] = noise_map.summary(noise.reference_intensity)
    return record


@dataclass
class ExpertsUsed:
    """The experts the CNN stage ran (for the sidecar): choices, their hashes, NS-N2N record."""

    choices: list[ExpertChoice]
    sha256: dict[str, str]
    slice_pairs: dict | None = None


def denoise_cnn(finite: np.ndarray, noise: NoiseEstimate, choices: list[ExpertChoice],
                registry: ExpertRegistry, *, noise_model: str, sigma_map: np.ndarray | None,
                pair_source: str, voxel_size, tta: bool, device, mask: np.ndarray,
                slice_pair_budget_s: float | None = None, slice_pair_steps: int | None = None,
                slice_pair_state: dict | None = None, timings: dict | None = None,
                progress: bool = False) -> tuple[np.ndarray, ExpertsUsed]:
    """The CNN stage of every path, in image units (shared with the ``CNNDenoise`` node).

    * ``neighbouring-slices``: the first of ``choices`` is fine-tuned on the image's
      neighbouring-slice pairs (:func:`bids_auton2n.train.nsn2n.finetune_expert_on_slices`,
      the local sigma with the adaptive model) unless ``slice_pair_state`` gives the weights
      already tuned, and applied slice by slice;
    * ``adaptive``: the experts are routed by the local level map
      (:func:`~.routing.routed_cnn_denoise`);
    * otherwise: ``choices`` everywhere (:func:`run_experts`).

    Parameters
    ----------
    finite : ndarray, 3D
        The image, non-finite voxels set to 0.
    noise : NoiseEstimate
        Its ``reference_intensity`` is the unit of the networks.
    choices : list of ExpertChoice
        The selected experts (:func:`choose_experts`).
    registry : ExpertRegistry
        Where their weights come from.
    noise_model : {"global", "adaptive"}
        The model chosen (:func:`~.noisemap.choose_noise_model`).
    sigma_map : ndarray or None
        Local noise sigma (image units), needed with ``adaptive``.
    pair_source : {"synthetic-patches", "neighbouring-slices"}
        Resolved by :func:`resolve_pair_source`.
    voxel_size : sequence of 3 float
        Voxel edges in mm (the slice axis).
    tta : bool
        Flip test-time augmentation.
    device : str or torch.device
        See :func:`~.inference.resolve_device`.
    mask : ndarray of bool
        Head mask.
    slice_pair_budget_s, slice_pair_steps : float or int, optional
        Limits of the NS-N2N fine-tuning (:func:`~bids_auton2n.train.nsn2n.finetune_on_slices`).
    slice_pair_state : dict, optional
        Weights already fine-tuned on the slices (the ``SlicePairFineTune`` node's).
    timings : dict, optional
        Receives the seconds of the stages ``"slice_pairs"`` and ``"cnn"``.
    progress : bool
        Log each stage and show progress bars.

    Returns
    -------
    cnn : ndarray, float32
        The CNN output in image units.
    used : ExpertsUsed
        The experts that ran, their hashes and the NS-N2N record.
    """
    timings = {} if timings is None else timings
    if pair_source == "neighbouring-slices":
        from ..train.nsn2n import finetune_expert_on_slices

        axis = pair_slice_axis(voxel_size)
        level = choices[0].level
        sigma = sigma_map if noise_model == "adaptive" else noise.sigma
        record = None
        if slice_pair_state is None:
            with _stage("slice_pairs", timings, progress):
                slice_pair_state, record = finetune_expert_on_slices(
                    finite, mask, sigma, noise, registry, level, axis=axis,
                    budget_s=slice_pair_budget_s, max_steps=slice_pair_steps, device=device,
                    progress=progress)
        with _stage("cnn", timings, progress):
            cnn = run_slicewise_expert(finite, noise, slice_pair_state, axis=axis, tta=tta,
                                       device=device, mask=mask, progress=progress)
        from ..train.trainer import state_sha256

        return cnn, ExpertsUsed([ExpertChoice(level, 1.0)], {_level_key(level): state_sha256(
            slice_pair_state)}, record)
    with _stage("cnn", timings, progress):
        if noise_model == "adaptive":
            normalizer = IntensityNormalizer(noise.reference_intensity)
            routed_output, routed = routed_cnn_denoise(
                normalizer.forward(finite), percent_map(sigma_map, noise), registry, tta=tta,
                device=device, mask=mask, progress=progress)
            cnn = normalizer.inverse(routed_output)
            choices = routed.choices
        else:
            cnn = run_experts(finite, noise, choices, registry, tta=tta, device=device,
                              mask=mask, progress=progress)
    return cnn, ExpertsUsed(choices, expert_hashes(registry, choices))


def run_slicewise_expert(finite: np.ndarray, noise: NoiseEstimate, state_dict: dict, *, axis: int,
                         tta: bool, device, mask: np.ndarray, progress: bool = False) -> np.ndarray:
    """An expert's weights applied slice by slice along ``axis``, in image units.

    Parameters
    ----------
    finite : ndarray, 3D
        The image, non-finite voxels set to 0.
    noise : NoiseEstimate
        Its ``reference_intensity`` is the unit of the network.
    state_dict : dict
        Weights of a :class:`~.network.ResidualDenoiser3D`.
    axis : int
        Slice axis.
    tta : bool
        Average the four in-plane flips.
    device : str or torch.device
        See :func:`~.inference.resolve_device`.
    mask : ndarray of bool
        Head mask (only its in-plane bounding rectangle is computed).
    progress : bool
        Show a progress bar.
    """
    from .network import ResidualDenoiser3D

    model = ResidualDenoiser3D()
    model.load_state_dict(state_dict, strict=True)
    normalizer = IntensityNormalizer(noise.reference_intensity)
    slices = to_slices_first(normalizer.forward(finite), axis)
    output = slicewise_cnn_denoise(slices, model, tta=tta, device=device,
                                   mask=to_slices_first(mask, axis), progress=progress)
    return normalizer.inverse(from_slices_first(output, axis))


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


def fuse_rinlm(finite: np.ndarray, cnn: np.ndarray, sigma, *, rician: bool,
               cnn_part: np.ndarray | None = None) -> np.ndarray:
    """The paper's final image: the mean of the CNN output and RI-NLM guided by it.

    RI-NLM runs on the whole volume, not only in the head mask: where a mask misses tissue
    (e.g. dark CSF of a field of view cropped inside the head) a masked filter would return
    the noisy input there and the mean would keep half of the noise.  ``cnn`` guides the
    filter; ``cnn_part`` (default ``cnn``) is the CNN half of the mean (its Rician-corrected
    version, see :func:`final_image`).  ``sigma``: one value or a map.
    """
    guided = ri_nlm(finite, cnn, sigma, rician=rician)
    guided += cnn if cnn_part is None else cnn_part  # in place: no two more volumes
    guided *= 0.5
    return guided


def final_image(finite: np.ndarray, cnn: np.ndarray, sigma, *, fusion: bool, guard: bool,
                rician: bool, wiener: bool = True, wiener_passes=None,
                timings: dict | None = None, progress: bool = False) -> np.ndarray:
    """From the CNN output to the pipeline's output: RI-NLM fusion, Wiener stage, guard.

    The guard (:func:`~.guard.limit_residual`) is applied to the CNN output before it guides
    RI-NLM, so that structure the network removed does not steer the filter's weights either,
    and again after each later step.  With ``rician``, the CNN output, an estimate of the local
    mean of the magnitude, is bias-corrected (:func:`~.rician.rician_correct`) as RI-NLM
    corrects its own average, and the later guards measure the residual against the
    bias-corrected input (what the Rician bias explains is not structure).  The collaborative
    Wiener stage (:func:`~.wiener.collaborative_wiener`) takes the image so far as its pilot
    and re-estimates it from the noisy data (the block means kept from the pilot), in
    :data:`~.wiener.PASS_STEPS` passes, each guarded and the pilot of the next
    (``wiener_passes``, a sequence of keyword arguments of ``collaborative_wiener``, one per
    pass, replaces them: the final-stage study's variants).  Each step is optional;
    ``timings`` receives their seconds under ``"rinlm"``, ``"wiener"`` and ``"guard"``.
    ``sigma`` is one noise level or a map of the volume's shape (spatially varying noise).
    """
    timings = {} if timings is None else timings
    if guard:
        with _stage("guard", timings, progress):
            cnn = limit_residual(finite, cnn, sigma)
    output = rician_correct(cnn, finite, sigma) if rician else cnn

    def guarded(image):
        if not guard:
            return image
        with _stage("guard", timings, progress):
            expected = finite
            if rician:  # finite - expected_bias(image, sigma), computed in the bias's buffer
                expected = expected_bias(image, sigma)
                np.subtract(finite, expected, out=expected)
            return limit_residual(expected, image, sigma)

    if fusion:
        with _stage("rinlm", timings, progress):
            output = fuse_rinlm(finite, cnn, sigma, rician=rician, cnn_part=output)
        output = guarded(output)
    if wiener:
        for settings in wiener_passes or [{"step": step} for step in PASS_STEPS]:
            with _stage("wiener", timings, progress):
                output = collaborative_wiener(finite, output, sigma, **settings)
            output = guarded(output)
    return output


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


def estimate_noise_and_map(finite: np.ndarray, *, contrast: str, mask: np.ndarray, voxel_size,
                           timings: dict | None = None, progress: bool = False
                           ) -> tuple[NoiseEstimate, NoiseMap | None]:
    """:func:`estimate_array_noise` and the local noise map from the same synthetic pair
    (``None`` for a noise-free image: its estimate is 0).

    Parameters
    ----------
    finite : ndarray, 3D
        The image, non-finite voxels set to 0.
    contrast : {"T1w", "T2w", "FLAIR", "PDw"}
        Selects the reference tissue.
    mask : ndarray of bool
        Head mask.
    voxel_size : sequence of 3 float
        Voxel edges in mm (the map's smoothing is in mm).
    timings : dict, optional
        Receives the seconds of ``"estimate"`` and ``"noise_map"``.
    progress : bool
        Log each stage.
    """
    timings = {} if timings is None else timings
    # Both read the pair at a few per cent of the voxels, the map mostly where the estimate did.
    pair = noise_pair_values(finite)
    with _stage("estimate", timings, progress):
        noise = estimate_noise(finite, contrast=contrast, mask=mask, pair=pair)
    if noise.sigma == 0:  # a noise-free image has no noise to map (and stays as it is)
        return noise, None
    with _stage("noise_map", timings, progress):
        noise_map = local_noise_map(finite, pair, mask, voxel_size=voxel_size)
    return noise, noise_map


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
