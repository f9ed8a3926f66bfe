"""Thin Nipype wrappers of the Auto-N2N steps in :mod:`bids_auton2n.denoise`.

Every interface loads its inputs, calls one step of :mod:`bids_auton2n.denoise` and writes
the result as NIfTI (float32, same grid and affine as the input) or JSON. The order of the steps and
the way they combine follow :func:`bids_auton2n.denoise.pipeline.denoise_array`; the
workflow test ``test_workflow_matches_pipeline`` checks that both give the same image.
"""

from __future__ import annotations

import json
import time
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

from ..denoise.pipeline import CONTRASTS


def _registry(experts_dir):
    from ..denoise.experts import ExpertRegistry

    return ExpertRegistry(experts_dir if isdefined(experts_dir) and experts_dir else None)


def _limit_threads(n_threads: int) -> None:
    """Keep torch and numba within the cores Nipype granted this node."""
    import numba
    import torch

    torch.set_num_threads(max(1, n_threads))
    numba.set_num_threads(max(1, min(n_threads, numba.config.NUMBA_NUM_THREADS)))


def _limit_memory(mem_gb) -> None:
    """This node's share of ``--mem-gb`` (None: unlimited); workers run many nodes."""
    from ..denoise.memory import set_memory_limit

    set_memory_limit(mem_gb if isdefined(mem_gb) and mem_gb else None)


def _save_like(data: np.ndarray, reference: nb.Nifti1Image, out_file: Path) -> str:
    from ..denoise.pipeline import save_like

    save_like(data, reference, out_file)
    return str(out_file)


class _EstimateNoiseInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="noisy anatomical image")
    contrast = traits.Enum(*CONTRASTS, mandatory=True, desc="BIDS suffix of in_file")
    noise_level = traits.Float(desc="user-given noise level (percent); skips the estimate")
    omp_nthreads = traits.Int(1, usedefault=True, desc="threads of the numba kernels")
    mem_gb = traits.Float(desc="memory budget of this image (GB): slabs and tiles fit it")


class _EstimateNoiseOutputSpec(TraitedSpec):
    out_json = File(exists=True, desc="noise record (NoiseEstimate.to_dict() + Source)")
    mask_file = File(exists=True, desc="head mask (noise estimate, CNN bounding box)")
    percent = traits.Float(desc="noise in percent of the reference tissue")
    sigma = traits.Float(desc="noise standard deviation in image units")
    runtime_s = traits.Float(desc="seconds spent")


class EstimateNoise(SimpleInterface):
    """Head mask and noise level (both units) of one image (:func:`~.noise.estimate_noise`)."""

    input_spec = _EstimateNoiseInputSpec
    output_spec = _EstimateNoiseOutputSpec

    def _run_interface(self, runtime):
        from ..denoise.intensity import sanitize
        from ..denoise.noise import head_mask
        from ..denoise.pipeline import (InputImageError, estimate_array_noise, noise_for_level,
                                        read_volume)

        start = time.perf_counter()
        _limit_threads(self.inputs.omp_nthreads)
        _limit_memory(self.inputs.mem_gb)
        img, data = read_volume(self.inputs.in_file)
        finite, _ = sanitize(data)
        mask = head_mask(finite)
        if isdefined(self.inputs.noise_level):
            noise = noise_for_level(finite, mask=mask, contrast=self.inputs.contrast,
                                    percent=self.inputs.noise_level)
            source = "user"
        else:
            try:
                noise = estimate_array_noise(finite, contrast=self.inputs.contrast, mask=mask)
            except ValueError as exc:  # e.g. an image too small to find enough voxels
                raise InputImageError(f"{self.inputs.in_file}: the noise cannot be estimated "
                                      f"({exc}); give it with --noise-level") from None
            source = "estimated"

        mask_img = nb.Nifti1Image(mask.astype(np.uint8), img.affine, img.header)
        mask_img.set_data_dtype(np.uint8)
        mask_file = Path(runtime.cwd) / "head_mask.nii.gz"
        mask_img.to_filename(str(mask_file))
        out_json = Path(runtime.cwd) / "noise.json"
        out_json.write_text(json.dumps({**noise.to_dict(), "Source": source}, indent=2))
        self._results.update(
            out_json=str(out_json),
            mask_file=str(mask_file),
            percent=float(noise.percent),
            sigma=float(noise.sigma),
            runtime_s=time.perf_counter() - start,
        )
        return runtime


class _SelectExpertsInputSpec(BaseInterfaceInputSpec):
    percent = traits.Float(mandatory=True, desc="noise level (percent)")
    expert = traits.Float(desc="user-chosen expert level; overrides the selection")
    blend = traits.Bool(False, usedefault=True, desc="blend the two bracketing experts")
    experts_dir = Directory(desc="expert registry (default: shipped experts)")


class _SelectExpertsOutputSpec(TraitedSpec):
    out_json = File(exists=True, desc="selected experts: level, weight, SHA-256")
    levels = traits.List(traits.Float, desc="selected expert levels (percent)")


class SelectExperts(SimpleInterface):
    """Pick the expert(s) for a noise level (:meth:`ExpertRegistry.select`)."""

    input_spec = _SelectExpertsInputSpec
    output_spec = _SelectExpertsOutputSpec

    def _run_interface(self, runtime):
        from ..denoise.pipeline import choose_experts

        registry = _registry(self.inputs.experts_dir)
        choices = choose_experts(
            registry, self.inputs.percent, blend=self.inputs.blend,
            expert=self.inputs.expert if isdefined(self.inputs.expert) else None,
        )
        record = {
            "Registry": str(registry.root),
            "Experts": [
                {"NoiseLevelPercent": c.level, "Weight": c.weight,
                 "SHA256": registry.sha256(c.level)}
                for c in choices
            ],
            "Selection": "user" if isdefined(self.inputs.expert) else
            ("blend" if self.inputs.blend else "nearest"),
        }
        out_json = Path(runtime.cwd) / "experts.json"
        out_json.write_text(json.dumps(record, indent=2))
        self._results.update(out_json=str(out_json), levels=[c.level for c in choices])
        return runtime


class _CNNDenoiseInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="noisy anatomical image")
    mask_file = File(exists=True, mandatory=True, desc="head mask")
    noise_json = File(exists=True, mandatory=True, desc="noise record (reference intensity)")
    experts_json = File(exists=True, mandatory=True, desc="selected experts")
    experts_dir = Directory(desc="expert registry (default: shipped experts)")
    tta = traits.Bool(True, usedefault=True, desc="average the flips (test-time augmentation)")
    device = traits.Str("auto", usedefault=True, desc="auto, cpu, cuda or cuda:N")
    omp_nthreads = traits.Int(1, usedefault=True, desc="torch CPU threads")
    mem_gb = traits.Float(desc="memory budget of this image (GB): slabs and tiles fit it")


class _CNNDenoiseOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="CNN output in image units")
    device = traits.Str(desc="torch device that ran")
    runtime_s = traits.Float(desc="seconds spent")


class CNNDenoise(SimpleInterface):
    """Mixture-of-experts CNN in network units (:func:`~.inference.cnn_denoise`)."""

    input_spec = _CNNDenoiseInputSpec
    output_spec = _CNNDenoiseOutputSpec

    def _run_interface(self, runtime):
        from ..denoise.inference import resolve_device
        from ..denoise.experts import ExpertChoice
        from ..denoise.intensity import sanitize
        from ..denoise.noise import NoiseEstimate
        from ..denoise.pipeline import read_volume, run_experts

        start = time.perf_counter()
        _limit_threads(self.inputs.omp_nthreads)
        _limit_memory(self.inputs.mem_gb)
        img, data = read_volume(self.inputs.in_file)
        finite, _ = sanitize(data)
        mask = np.asanyarray(nb.load(self.inputs.mask_file).dataobj) > 0
        noise_record = json.loads(Path(self.inputs.noise_json).read_text())
        noise_record.pop("Source")
        experts = json.loads(Path(self.inputs.experts_json).read_text())["Experts"]
        choices = [ExpertChoice(e["NoiseLevelPercent"], e["Weight"]) for e in experts]
        device = resolve_device(self.inputs.device)
        cnn = run_experts(finite, NoiseEstimate(**noise_record), choices,
                          _registry(self.inputs.experts_dir), tta=self.inputs.tta,
                          device=device, mask=mask)
        self._results.update(
            out_file=_save_like(cnn, img, Path(runtime.cwd) / "cnn.nii.gz"),
            device=str(device),
            runtime_s=time.perf_counter() - start,
        )
        return runtime


class _FuseRINLMInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="noisy anatomical image")
    cnn_file = File(exists=True, mandatory=True, desc="CNN output (image units)")
    sigma = traits.Float(mandatory=True, desc="noise standard deviation in image units")
    fusion = traits.Bool(True, usedefault=True, desc="average CNN and guided RI-NLM")
    guard = traits.Bool(True, usedefault=True,
                        desc="give back what was removed beyond what the noise explains")
    rician = traits.Bool(True, usedefault=True, desc="Rician (magnitude) noise model")
    omp_nthreads = traits.Int(1, usedefault=True, desc="threads of the numba kernel")
    mem_gb = traits.Float(desc="memory budget of this image (GB): slabs and tiles fit it")


class _FuseRINLMOutputSpec(TraitedSpec):
    out_file = File(exists=True, desc="denoised image, non-finite input voxels restored")
    noise_image = File(exists=True, desc="residual: input minus denoised")
    runtime_s = traits.Float(desc="seconds spent")


class FuseRINLM(SimpleInterface):
    """Average the CNN output with RI-NLM guided by it (paper's final image), then guard it.

    :func:`~.pipeline.final_image`: both steps optional.
    """

    input_spec = _FuseRINLMInputSpec
    output_spec = _FuseRINLMOutputSpec

    def _run_interface(self, runtime):
        from ..denoise.intensity import sanitize
        from ..denoise.pipeline import final_image, output_image, read_volume

        start = time.perf_counter()
        _limit_threads(self.inputs.omp_nthreads)
        _limit_memory(self.inputs.mem_gb)
        img, original = read_volume(self.inputs.in_file)
        finite, nonfinite = sanitize(original)
        cnn = np.asanyarray(nb.load(self.inputs.cnn_file).dataobj).astype(np.float32)
        denoised = output_image(
            final_image(finite, cnn, self.inputs.sigma, fusion=self.inputs.fusion,
                        guard=self.inputs.guard, rician=self.inputs.rician),
            original, nonfinite)
        cwd = Path(runtime.cwd)
        self._results.update(
            out_file=_save_like(denoised, img, cwd / "denoised.nii.gz"),
            noise_image=_save_like(np.nan_to_num(original - denoised), img, cwd / "noise.nii.gz"),
            runtime_s=time.perf_counter() - start,
        )
        return runtime


class _ProvenanceInputSpec(BaseInterfaceInputSpec):
    source_file = File(exists=True, mandatory=True, desc="raw BIDS image")
    bids_dir = Directory(exists=True, mandatory=True, desc="raw BIDS dataset root")
    source_metadata = traits.Dict(desc="sidecar metadata of the source (BIDS inheritance)")
    noise_json = File(exists=True, mandatory=True)
    experts_json = File(exists=True, mandatory=True)
    tta = traits.Bool(mandatory=True)
    fusion = traits.Bool(mandatory=True)
    guard = traits.Bool(True, usedefault=True, desc="do-no-harm guard applied")
    rician = traits.Bool(True, usedefault=True)
    device = traits.Str(mandatory=True)
    finetuned = traits.Bool(False, usedefault=True, desc="experts fine-tuned on this dataset")
    estimate_s = traits.Float(0.0, usedefault=True, desc="seconds: mask, pair and estimate")
    cnn_s = traits.Float(0.0, usedefault=True, desc="seconds: CNN experts with TTA")
    rinlm_s = traits.Float(0.0, usedefault=True, desc="seconds: RI-NLM fusion and guard")
    denoised_file = File(exists=True, mandatory=True, desc="the denoised image (for its hash)")


class _ProvenanceOutputSpec(TraitedSpec):
    metadata = traits.Dict(desc="sidecar content of the denoised image")
    out_json = File(exists=True, desc="the same record as JSON")


class DenoiseProvenance(SimpleInterface):
    """Sidecar record of one denoised image (:meth:`DenoiseResult.provenance` layout).

    The source's own metadata is carried forward; ``Sources`` are BIDS URIs.
    """

    input_spec = _ProvenanceInputSpec
    output_spec = _ProvenanceOutputSpec

    def _run_interface(self, runtime):
        from ..denoise.experts import ExpertChoice, sha256_file
        from ..denoise.noise import NoiseEstimate
        from ..denoise.pipeline import DenoiseResult
        from ..utils.bids import bids_uri

        noise_record = json.loads(Path(self.inputs.noise_json).read_text())
        source = noise_record.pop("Source")
        experts = json.loads(Path(self.inputs.experts_json).read_text())
        timings = {"estimate": self.inputs.estimate_s, "cnn": self.inputs.cnn_s,
                   "rinlm": self.inputs.rinlm_s}
        timings["total"] = sum(timings.values())
        result = DenoiseResult(
            denoised=None,
            noise=NoiseEstimate(**noise_record),
            noise_source=source,
            experts=[ExpertChoice(e["NoiseLevelPercent"], e["Weight"]) for e in experts["Experts"]],
            weights_sha256={f"{e['NoiseLevelPercent']:g}": e["SHA256"] for e in experts["Experts"]},
            tta=self.inputs.tta,
            fusion=self.inputs.fusion,
            rician=self.inputs.rician,
            device=self.inputs.device,
            guard=self.inputs.guard,
            timings=timings,
        )
        carried = dict(self.inputs.source_metadata) if isdefined(self.inputs.source_metadata) else {}
        metadata = {
            **carried,
            "Sources": [bids_uri(self.inputs.source_file, self.inputs.bids_dir)],
            "SkullStripped": bool(carried.get("SkullStripped", False)),
            "Description": "Denoised with Auto-N2N (mixture of 3D residual CNN experts"
            + (", flip test-time augmentation" if self.inputs.tta else "")
            + (", fused with RI-NLM" if self.inputs.fusion else "") + ").",
            **result.provenance(),
            "ExpertSelection": experts["Selection"],
            "FineTuned": self.inputs.finetuned,
            "SourceSHA256": sha256_file(self.inputs.source_file),
        }
        out_json = Path(runtime.cwd) / "provenance.json"
        out_json.write_text(json.dumps(metadata, indent=2, default=float))
        self._results.update(metadata=metadata, out_json=str(out_json))
        return runtime


class _FineTuneInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="images of the dataset")
    experts_dir = Directory(desc="registry to start from (default: shipped experts)")
    time_budget_s = traits.Float(600.0, usedefault=True,
                                 desc="time budget of all of fine-tuning (preparation included)")
    max_steps = traits.Int(desc="Adam-step limit (default: none)")
    device = traits.Str("auto", usedefault=True)
    omp_nthreads = traits.Int(1, usedefault=True)


class _FineTuneOutputSpec(TraitedSpec):
    experts_dir = Directory(exists=True, desc="registry of the fine-tuned expert")


class FineTune(SimpleInterface):
    """Self-supervised fine-tuning of the expert nearest the dataset's median noise level.

    Wraps :func:`bids_auton2n.train.finetune`, shared by all images of the run.
    """

    input_spec = _FineTuneInputSpec
    output_spec = _FineTuneOutputSpec

    def _run_interface(self, runtime):
        from ..denoise.pipeline import contrast_from_filename
        from ..train import TrainConfig, finetune

        _limit_threads(self.inputs.omp_nthreads)
        registry = _registry(self.inputs.experts_dir)
        out_dir = Path(runtime.cwd) / "finetuned_experts"
        finetune(
            [(f, contrast_from_filename(f)) for f in self.inputs.in_files],
            out_dir=out_dir,
            time_budget_s=self.inputs.time_budget_s,
            registry=registry,
            config=TrainConfig(level=0.0, device=self.inputs.device,
                               max_steps=self.inputs.max_steps
                               if isdefined(self.inputs.max_steps) else None),
            progress=False,
        )
        self._results["experts_dir"] = str(out_dir)
        return runtime
