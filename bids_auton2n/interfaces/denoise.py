"""Nipype nodes of the Auto-N2N steps, each a thin wrapper of :mod:`bids_auton2n.denoise.pipeline`.

The BIDS-App composes the denoising from these nodes in the order of
:func:`~bids_auton2n.denoise.pipeline.denoise_array`, and every node calls the function that
``denoise_array`` calls for its step:

* :class:`EstimateNoise` reads, checks and sanitises the image (the only node that does), makes
  the head mask, then ``estimate_noise_and_map`` or ``noise_for_level``, ``choose_noise_model``
  and ``resolve_pair_source``;
* :class:`SelectExperts`: ``choose_experts``;
* :class:`SlicePairFineTune`: the NS-N2N fine-tuning of ``denoise_cnn`` (thick slices only);
* :class:`CNNDenoise`: ``denoise_cnn`` (global, routed or slice-wise experts);
* :class:`FuseRINLM`: ``final_image`` and ``output_image``;
* :class:`DenoiseProvenance`: ``DenoiseResult.provenance`` (the sidecar).

Files travel between the nodes (the sanitised float32 image, its head mask, the CNN output)
with small records (the noise estimate and the chosen experts, as dicts); no node reads
another's state back from JSON. ``tests/test_workflow_equivalence.py`` checks that the
workflow's image and sidecar equal those of :func:`~bids_auton2n.utils.io.denoise_file`, byte
for byte, for every option.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..denoise import CONTRASTS
from ..denoise.noisemap import NOISE_MODELS
from ..denoise.pipeline import PAIR_SOURCE_CHOICES


class _DenoiseStepInputSpec(BaseInterfaceInputSpec):
    omp_nthreads = traits.Int(desc="threads of torch and numba in this node (default: as they are)")
    mem_gb = traits.Float(desc="memory budget of this node's image (GB): slabs and tiles fit it "
                          "(default: whole volume)")


class DenoiseStep(SimpleInterface):
    """The prologue the denoising nodes share.

    :meth:`_run_interface` limits torch and numba to the node's ``omp_nthreads`` (the cores
    Nipype granted it) and the stages' working memory to its ``mem_gb`` (its share of
    ``--mem-gb``; unset, the whole volume: a worker process runs many nodes, so the setting
    is made by every node), then runs :meth:`_run_step` and returns its outputs; the helpers read
    and write the float32 images that travel between the nodes, in the node's folder.
    """

    input_spec = _DenoiseStepInputSpec

    def _run_interface(self, runtime):
        from ..denoise.memory import set_memory_limit
        from ..utils.threads import set_threads

        if isdefined(self.inputs.omp_nthreads):
            set_threads(max(1, self.inputs.omp_nthreads))
        mem_gb = self.inputs.mem_gb
        set_memory_limit(mem_gb if isdefined(mem_gb) and mem_gb else None)
        self._cwd = Path(runtime.cwd)
        self._results.update(self._run_step())
        return runtime

    def _run_step(self) -> dict:
        """The node's work; returns its outputs."""
        raise NotImplementedError

    @staticmethod
    def _read(path) -> tuple[nb.Nifti1Image, np.ndarray]:
        """A float32 image another node wrote, and its data."""
        img = nb.load(path)
        return img, np.asarray(img.dataobj, dtype=np.float32)

    def _save(self, data: np.ndarray, reference: nb.Nifti1Image, name: str) -> str:
        """Write ``data`` in the node folder with the header of ``reference``; return its path."""
        from ..utils.io import save_like

        out_file = self._cwd / name
        save_like(data, reference, out_file)
        return str(out_file)

    @staticmethod
    def _registry(experts_dir):
        from ..denoise.experts import ExpertRegistry

        return ExpertRegistry(experts_dir if isdefined(experts_dir) and experts_dir else None)


class _EstimateNoiseInputSpec(_DenoiseStepInputSpec):
    in_file = File(exists=True, mandatory=True, desc="noisy anatomical image")
    contrast = traits.Enum(*CONTRASTS, mandatory=True, desc="BIDS suffix of in_file")
    noise_level = traits.Float(desc="user-given noise level (percent); skips the estimate")
    noise_model = traits.Enum(*NOISE_MODELS, usedefault=True,
                              desc="global, adaptive (local noise map) or auto (by its spread)")
    pair_source = traits.Enum(*PAIR_SOURCE_CHOICES, usedefault=True,
                              desc="N2N pairs: auto (neighbouring slices for thick slices)")


class _EstimateNoiseOutputSpec(TraitedSpec):
    finite_file = File(exists=True, desc="the image in image units, float32, non-finite voxels 0: "
                                         "what the other nodes read")
    nonfinite_file = File(exists=True, desc="the input's values where they are not finite, 0 "
                                            "elsewhere (only written for an image that has some)")
    mask_file = File(exists=True, desc="head mask (noise estimate, CNN bounding box)")
    noise = traits.Dict(desc="the NoiseEstimate's fields")
    noise_source = traits.Enum("estimated", "user", desc="where the noise level comes from")
    percent = traits.Float(desc="noise in percent of the reference tissue")
    sigma = traits.Float(desc="noise standard deviation in image units")
    timings = traits.Dict(desc="seconds of the stages (DenoiseResult.timings keys)")
    sigma_map_file = File(exists=True, desc="local noise sigma map (image units); not with a "
                                            "given noise level")
    noise_model = traits.Enum("global", "adaptive", desc="the noise model chosen")
    noise_model_record = traits.Dict(desc="sidecar NoiseModel (model, choice, map summary)")
    pair_source = traits.Str(desc="the pair source chosen (PAIR_SOURCES)")


class EstimateNoise(DenoiseStep):
    """Read and sanitise the image once; its head mask and noise level (both units).

    :func:`~bids_auton2n.utils.io.read_volume` (refuses what cannot be denoised),
    :func:`~bids_auton2n.denoise.intensity.sanitize`, :func:`~bids_auton2n.denoise.noise.head_mask`,
    then :func:`~bids_auton2n.denoise.pipeline.estimate_noise_and_map` (noise level and local
    noise map) or, with ``noise_level``, :func:`~bids_auton2n.denoise.pipeline.noise_for_level`;
    then :func:`~bids_auton2n.denoise.noisemap.choose_noise_model` and
    :func:`~bids_auton2n.denoise.pipeline.resolve_pair_source` (voxel size from the header).
    """

    input_spec = _EstimateNoiseInputSpec
    output_spec = _EstimateNoiseOutputSpec

    def _run_step(self):
        from ..denoise.intensity import sanitize
        from ..denoise.memory import warn_if_below_minimum
        from ..denoise.noise import head_mask
        from ..denoise.noisemap import choose_noise_model
        from ..denoise.pipeline import (
            estimate_noise_and_map, noise_for_level, noise_model_record, resolve_pair_source,
        )
        from ..utils.io import InputImageError, read_volume

        img, data = read_volume(self.inputs.in_file)
        finite, nonfinite = sanitize(data)
        warn_if_below_minimum(finite.shape)  # as denoise_array does, once per image
        mask = head_mask(finite)
        voxel_size = tuple(float(z) for z in img.header.get_zooms()[:3])
        timings: dict[str, float] = {}
        if isdefined(self.inputs.noise_level):
            noise = noise_for_level(finite, mask=mask, contrast=self.inputs.contrast,
                                    percent=self.inputs.noise_level)
            source, noise_map = "user", None
        else:
            try:
                noise, noise_map = estimate_noise_and_map(
                    finite, contrast=self.inputs.contrast, mask=mask, voxel_size=voxel_size,
                    timings=timings)
            except ValueError as exc:  # e.g. an image too small to find enough voxels
                raise InputImageError(f"{self.inputs.in_file}: the noise cannot be estimated "
                                      f"({exc}); give it with --noise-level") from None
            source = "estimated"
        model = choose_noise_model(noise_map, self.inputs.noise_model)
        outputs = {
            "finite_file": self._save(finite, img, "image.nii.gz"),
            "noise": asdict(noise), "noise_source": source, "percent": float(noise.percent),
            "sigma": float(noise.sigma), "timings": timings, "noise_model": model,
            "noise_model_record": noise_model_record(model, self.inputs.noise_model, noise_map,
                                                     noise),
            "pair_source": resolve_pair_source(self.inputs.pair_source, voxel_size),
        }
        if noise_map is not None:
            outputs["sigma_map_file"] = self._save(noise_map.sigma, img, "sigma.nii.gz")
        if nonfinite.any():
            outputs["nonfinite_file"] = self._save(np.where(nonfinite, data, 0), img,
                                                   "nonfinite.nii.gz")
        mask_img = nb.Nifti1Image(mask.astype(np.uint8), img.affine, img.header)
        mask_img.set_data_dtype(np.uint8)
        outputs["mask_file"] = str(self._cwd / "head_mask.nii.gz")
        mask_img.to_filename(outputs["mask_file"])
        return outputs


class _SelectExpertsInputSpec(_DenoiseStepInputSpec):
    percent = traits.Float(mandatory=True, desc="noise level (percent)")
    expert = traits.Float(desc="user-chosen expert level; overrides the selection")
    blend = traits.Bool(False, usedefault=True, desc="blend the two bracketing experts")
    experts_dir = Directory(desc="expert registry (default: shipped experts)")


class _SelectExpertsOutputSpec(TraitedSpec):
    experts = traits.List(traits.Dict, desc="chosen experts: ExpertChoice fields (level, weight)")
    weights_sha256 = traits.Dict(desc="SHA-256 of each chosen expert's weights, by level")
    selection = traits.Str(desc="how they were chosen: user, blend or nearest")


class SelectExperts(DenoiseStep):
    """Pick the expert(s) for a noise level (:func:`~bids_auton2n.denoise.pipeline.choose_experts`)."""

    input_spec = _SelectExpertsInputSpec
    output_spec = _SelectExpertsOutputSpec

    def _run_step(self):
        from ..denoise.pipeline import choose_experts, expert_hashes, expert_selection

        expert = self.inputs.expert if isdefined(self.inputs.expert) else None
        registry = self._registry(self.inputs.experts_dir)
        choices = choose_experts(registry, self.inputs.percent, expert=expert,
                                 blend=self.inputs.blend)
        return {"experts": [asdict(c) for c in choices],
                "weights_sha256": expert_hashes(registry, choices),
                "selection": expert_selection(expert, self.inputs.blend)}


def _sigma_for(inputs) -> tuple[np.ndarray | None, object]:
    """The node's sigma map (or None) and the sigma of its noise model (map or one value)."""
    sigma_map = None
    if isdefined(inputs.sigma_map_file) and inputs.sigma_map_file:
        sigma_map = DenoiseStep._read(inputs.sigma_map_file)[1]
    return sigma_map, sigma_map if inputs.noise_model == "adaptive" else inputs.sigma


class _SlicePairFineTuneInputSpec(_DenoiseStepInputSpec):
    in_file = File(exists=True, mandatory=True, desc="EstimateNoise's finite_file")
    mask_file = File(exists=True, mandatory=True, desc="head mask")
    noise = traits.Dict(mandatory=True, desc="the NoiseEstimate's fields")
    sigma = traits.Float(mandatory=True, desc="noise standard deviation in image units")
    sigma_map_file = File(exists=True, desc="local noise sigma map (used with the adaptive model)")
    noise_model = traits.Enum("global", "adaptive", mandatory=True, desc="the noise model chosen")
    pair_source = traits.Str(mandatory=True, desc="the node only works for neighbouring-slices")
    experts = traits.List(traits.Dict, mandatory=True, desc="chosen experts (the first: the start)")
    experts_dir = Directory(desc="expert registry (default: shipped experts)")
    budget_s = traits.Float(desc="wall-clock budget of all the fine-tuning (seconds)")
    max_steps = traits.Int(desc="step limit of the fine-tuning")
    device = traits.Str("auto", usedefault=True, desc="auto, cpu, cuda or cuda:N")


class _SlicePairFineTuneOutputSpec(TraitedSpec):
    tuned_dir = Directory(desc="one-expert registry of the fine-tuned weights (NS-N2N only)")
    record = traits.Dict(desc="the sidecar's SlicePairFineTuning (NS-N2N only)")
    timings = traits.Dict(desc="seconds of the stages (DenoiseResult.timings keys)")


class SlicePairFineTune(DenoiseStep):
    """NS-N2N fine-tuning of the selected expert on the image's neighbouring slices.

    :func:`bids_auton2n.train.nsn2n.finetune_expert_on_slices`, as
    :func:`~bids_auton2n.denoise.pipeline.denoise_cnn` calls it; the weights are saved as a
    one-expert registry.  Does nothing (no output) when the pair source is not
    ``neighbouring-slices``.
    """

    input_spec = _SlicePairFineTuneInputSpec
    output_spec = _SlicePairFineTuneOutputSpec

    def _run_step(self):
        if self.inputs.pair_source != "neighbouring-slices":
            return {"timings": {}}
        from ..denoise.experts import ExpertChoice, write_manifest_entry
        from ..denoise.inference import resolve_device
        from ..denoise.noise import NoiseEstimate
        from ..denoise.pipeline import pair_slice_axis
        from ..train.nsn2n import finetune_expert_on_slices

        img, finite = self._read(self.inputs.in_file)
        mask = np.asanyarray(nb.load(self.inputs.mask_file).dataobj) > 0
        level = ExpertChoice(**self.inputs.experts[0]).level
        start = time.perf_counter()
        state, record = finetune_expert_on_slices(
            finite, mask, _sigma_for(self.inputs)[1], NoiseEstimate(**self.inputs.noise),
            self._registry(self.inputs.experts_dir), level,
            axis=pair_slice_axis(img.header.get_zooms()[:3]),
            budget_s=self.inputs.budget_s if isdefined(self.inputs.budget_s) else None,
            max_steps=self.inputs.max_steps if isdefined(self.inputs.max_steps) else None,
            device=resolve_device(self.inputs.device))
        seconds = time.perf_counter() - start
        tuned_dir = self._cwd / "slice_pair_expert"
        write_manifest_entry(tuned_dir, level, state, {
            "training_data": "the image's own neighbouring slices (NS-N2N)",
            "command": "SlicePairFineTune", "revision": "see SoftwareVersion"})
        return {"tuned_dir": str(tuned_dir), "record": record,
                "timings": {"slice_pairs": seconds}}


class _CNNDenoiseInputSpec(_DenoiseStepInputSpec):
    in_file = File(exists=True, mandatory=True, desc="EstimateNoise's finite_file")
    mask_file = File(exists=True, mandatory=True, desc="head mask")
    noise = traits.Dict(mandatory=True, desc="the NoiseEstimate's fields")
    sigma = traits.Float(mandatory=True, desc="noise standard deviation in image units")
    sigma_map_file = File(exists=True, desc="local noise sigma map (routes the experts)")
    noise_model = traits.Enum("global", "adaptive", usedefault=True, desc="the noise model chosen")
    pair_source = traits.Str("synthetic-patches", usedefault=True, desc="PAIR_SOURCES value")
    tuned_dir = Directory(desc="the NS-N2N fine-tuned expert (SlicePairFineTune)")
    experts = traits.List(traits.Dict, mandatory=True, desc="chosen experts (level, weight)")
    experts_dir = Directory(desc="expert registry (default: shipped experts)")
    tta = traits.Bool(True, usedefault=True, desc="average the flips (test-time augmentation)")
    device = traits.Str("auto", usedefault=True, desc="auto, cpu, cuda or cuda:N")


class _CNNDenoiseOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="CNN output in image units")
    experts = traits.List(traits.Dict, desc="the experts that ran (routed shares, tuned weights)")
    weights_sha256 = traits.Dict(desc="SHA-256 of their weights, by level")
    device = traits.Str(desc="torch device that ran")
    timings = traits.Dict(desc="seconds of the stages (DenoiseResult.timings keys)")


class CNNDenoise(DenoiseStep):
    """The CNN stage: :func:`~bids_auton2n.denoise.pipeline.denoise_cnn` (the selected experts,
    experts routed by the local noise map, or the NS-N2N fine-tuned expert slice by slice)."""

    input_spec = _CNNDenoiseInputSpec
    output_spec = _CNNDenoiseOutputSpec

    def _run_step(self):
        from ..denoise.experts import ExpertChoice
        from ..denoise.inference import resolve_device
        from ..denoise.noise import NoiseEstimate
        from ..denoise.pipeline import denoise_cnn

        img, finite = self._read(self.inputs.in_file)
        mask = np.asanyarray(nb.load(self.inputs.mask_file).dataobj) > 0
        device = resolve_device(self.inputs.device)
        state = None
        if self.inputs.pair_source == "neighbouring-slices":
            tuned = self._registry(self.inputs.tuned_dir)
            state = tuned.load(tuned.levels[0], "cpu").state_dict()
        timings: dict[str, float] = {}
        cnn, used = denoise_cnn(
            finite, NoiseEstimate(**self.inputs.noise),
            [ExpertChoice(**e) for e in self.inputs.experts],
            self._registry(self.inputs.experts_dir), noise_model=self.inputs.noise_model,
            sigma_map=_sigma_for(self.inputs)[0], pair_source=self.inputs.pair_source,
            voxel_size=img.header.get_zooms()[:3], slice_pair_state=state,
            tta=self.inputs.tta, device=device, mask=mask, timings=timings)
        return {"timings": timings, "device": str(device),
                "experts": [asdict(c) for c in used.choices], "weights_sha256": used.sha256,
                "out_file": self._save(cnn, img, "cnn.nii.gz")}


class _FuseRINLMInputSpec(_DenoiseStepInputSpec):
    in_file = File(exists=True, mandatory=True, desc="EstimateNoise's finite_file")
    nonfinite_file = File(exists=True, desc="EstimateNoise's nonfinite_file, if any")
    cnn_file = File(exists=True, mandatory=True, desc="CNN output (image units)")
    sigma = traits.Float(mandatory=True, desc="noise standard deviation in image units")
    sigma_map_file = File(exists=True, desc="local noise sigma map (used with the adaptive model)")
    noise_model = traits.Enum("global", "adaptive", usedefault=True, desc="the noise model chosen")
    fusion = traits.Bool(True, usedefault=True, desc="average CNN and guided RI-NLM")
    guard = traits.Bool(True, usedefault=True,
                        desc="give back what was removed beyond what the noise explains")
    rician = traits.Bool(True, usedefault=True, desc="Rician (magnitude) noise model")
    wiener = traits.Bool(True, usedefault=True,
                         desc="collaborative Wiener stage with the fused image as pilot")


class _FuseRINLMOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="denoised image, non-finite input voxels restored")
    noise_image = File(exists=True, desc="residual: input minus denoised")
    timings = traits.Dict(desc="seconds of the stages (DenoiseResult.timings keys)")


class FuseRINLM(DenoiseStep):
    """Average the CNN output with RI-NLM guided by it (paper's final image), Wiener stage, guard.

    :func:`~bids_auton2n.denoise.pipeline.final_image` (every step optional), then the output
    as written (:func:`~bids_auton2n.denoise.pipeline.output_image`: no negative voxel in a
    magnitude image, the input's non-finite voxels put back).
    """

    input_spec = _FuseRINLMInputSpec
    output_spec = _FuseRINLMOutputSpec

    def _run_step(self):
        from ..denoise.pipeline import final_image, output_image

        img, finite = self._read(self.inputs.in_file)
        _, cnn = self._read(self.inputs.cnn_file)
        timings: dict[str, float] = {}
        denoised = final_image(finite, cnn, _sigma_for(self.inputs)[1], fusion=self.inputs.fusion,
                               guard=self.inputs.guard, rician=self.inputs.rician,
                               wiener=self.inputs.wiener, timings=timings)
        original = finite
        nonfinite = np.zeros(finite.shape, dtype=bool)
        if isdefined(self.inputs.nonfinite_file):
            _, values = self._read(self.inputs.nonfinite_file)
            nonfinite = ~np.isfinite(values)
            original = np.where(nonfinite, values, finite)
        denoised = output_image(denoised, original, nonfinite)
        with np.errstate(invalid="ignore"):  # inf - inf at restored voxels: 0 in the residual
            residual = np.nan_to_num(original - denoised)
        return {"timings": timings,
                "out_file": self._save(denoised, img, "denoised.nii.gz"),
                "noise_image": self._save(residual, img, "noise.nii.gz")}


class _ProvenanceInputSpec(BaseInterfaceInputSpec):
    source_file = File(exists=True, mandatory=True, desc="raw BIDS image")
    bids_dir = Directory(exists=True, mandatory=True, desc="raw BIDS dataset root")
    source_metadata = traits.Dict(desc="sidecar metadata of the source (BIDS inheritance)")
    noise = traits.Dict(mandatory=True, desc="the NoiseEstimate's fields")
    noise_source = traits.Str(mandatory=True, desc="estimated or user")
    experts = traits.List(traits.Dict, mandatory=True, desc="chosen experts (level, weight)")
    weights_sha256 = traits.Dict(mandatory=True, desc="SHA-256 of the experts' weights")
    selection = traits.Str(mandatory=True, desc="how the experts were chosen")
    noise_model_record = traits.Dict(desc="the sidecar's NoiseModel (EstimateNoise)")
    pair_source = traits.Str("synthetic-patches", usedefault=True, desc="PAIR_SOURCES value")
    slice_pairs = traits.Dict(desc="the sidecar's SlicePairFineTuning (SlicePairFineTune)")
    tta = traits.Bool(mandatory=True)
    fusion = traits.Bool(mandatory=True)
    guard = traits.Bool(True, usedefault=True, desc="do-no-harm guard applied")
    wiener = traits.Bool(True, usedefault=True, desc="collaborative Wiener stage applied")
    rician = traits.Bool(True, usedefault=True)
    device = traits.Str(mandatory=True)
    finetuned = traits.Bool(False, usedefault=True, desc="experts fine-tuned on this dataset")
    estimate_timings = traits.Dict(desc="EstimateNoise's timings")
    slice_pair_timings = traits.Dict(desc="SlicePairFineTune's timings")
    cnn_timings = traits.Dict(desc="CNNDenoise's timings")
    fusion_timings = traits.Dict(desc="FuseRINLM's timings")
    denoised_file = File(exists=True, mandatory=True,
                         desc="the denoised image (the record is remade when it changes)")


class _ProvenanceOutputSpec(TraitedSpec):
    metadata = traits.Dict(desc="sidecar content of the denoised image")
    out_json = File(exists=True, desc="the same record as JSON")


class DenoiseProvenance(SimpleInterface):
    """Sidecar record of one denoised image: :meth:`DenoiseResult.provenance` and BIDS fields.

    The source's own metadata is carried forward; ``Sources`` are BIDS URIs.
    """

    input_spec = _ProvenanceInputSpec
    output_spec = _ProvenanceOutputSpec

    def _run_interface(self, runtime):
        from ..denoise.experts import ExpertChoice, sha256_file
        from ..denoise.noise import NoiseEstimate
        from ..denoise.pipeline import DenoiseResult
        from ..utils.bids import bids_uri

        timings = {}
        for stage in (self.inputs.estimate_timings, self.inputs.slice_pair_timings,
                      self.inputs.cnn_timings, self.inputs.fusion_timings):
            timings.update(stage if isdefined(stage) else {})
        timings["total"] = sum(timings.values())
        result = DenoiseResult(
            denoised=None,
            noise=NoiseEstimate(**self.inputs.noise),
            noise_source=self.inputs.noise_source,
            experts=[ExpertChoice(**e) for e in self.inputs.experts],
            weights_sha256=dict(self.inputs.weights_sha256),
            tta=self.inputs.tta,
            fusion=self.inputs.fusion,
            rician=self.inputs.rician,
            device=self.inputs.device,
            guard=self.inputs.guard,
            wiener=self.inputs.wiener,
            timings=timings,
            expert_selection=self.inputs.selection,
            noise_model=(dict(self.inputs.noise_model_record)
                         if isdefined(self.inputs.noise_model_record) else {"Model": "global"}),
            pair_source=self.inputs.pair_source,
            slice_pairs=(dict(self.inputs.slice_pairs)
                         if isdefined(self.inputs.slice_pairs) and self.inputs.slice_pairs
                         else None),
        )
        carried = dict(self.inputs.source_metadata) if isdefined(self.inputs.source_metadata) else {}
        metadata = {
            **carried,
            "Sources": [bids_uri(self.inputs.source_file, self.inputs.bids_dir)],
            "SkullStripped": bool(carried.get("SkullStripped", False)),
            "Description": "Denoised with Auto-N2N (mixture of 3D residual CNN experts"
            + (", fine-tuned on the image's neighbouring slices (NS-N2N)"
               if self.inputs.pair_source == "neighbouring-slices" else "")
            + (", routed by the local noise level" if result.noise_model["Model"] == "adaptive"
               else "")
            + (", flip test-time augmentation" if self.inputs.tta else "")
            + (", fused with RI-NLM" if self.inputs.fusion else "")
            + (", collaborative Wiener stage" if self.inputs.wiener else "") + ").",
            **result.provenance(),
            "FineTuned": self.inputs.finetuned,
            "SourceSHA256": sha256_file(self.inputs.source_file),
        }
        out_json = Path(runtime.cwd) / "provenance.json"
        out_json.write_text(json.dumps(metadata, indent=2, default=float))
        self._results.update(metadata=metadata, out_json=str(out_json))
        return runtime


class _FineTuneInputSpec(_DenoiseStepInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="images of the dataset")
    experts_dir = Directory(desc="registry to start from (default: shipped experts)")
    time_budget_s = traits.Float(600.0, usedefault=True,
                                 desc="time budget of all of fine-tuning (preparation included)")
    max_steps = traits.Int(desc="Adam-step limit (default: none)")
    device = traits.Str("auto", usedefault=True)


class _FineTuneOutputSpec(TraitedSpec):
    experts_dir = Directory(exists=True, desc="registry of the fine-tuned expert")


class FineTune(DenoiseStep):
    """Self-supervised fine-tuning of the expert nearest the dataset's median noise level.

    Wraps :func:`bids_auton2n.train.finetune`, shared by all images of the run.
    """

    input_spec = _FineTuneInputSpec
    output_spec = _FineTuneOutputSpec

    def _run_step(self):
        from ..train import TrainConfig, finetune
        from ..utils.bids import contrast_from_filename

        out_dir = self._cwd / "finetuned_experts"
        finetune(
            [(f, contrast_from_filename(f)) for f in self.inputs.in_files],
            out_dir=out_dir,
            time_budget_s=self.inputs.time_budget_s,
            registry=self._registry(self.inputs.experts_dir),
            config=TrainConfig(level=0.0, device=self.inputs.device,
                               max_steps=self.inputs.max_steps
                               if isdefined(self.inputs.max_steps) else None),
            progress=False,
        )
        return {"experts_dir": str(out_dir)}
