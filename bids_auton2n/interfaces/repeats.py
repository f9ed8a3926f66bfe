"""Thin Nipype wrappers of :mod:`bids_auton2n.denoise.repeats` (repeated acquisitions).

``AlignRuns`` calls :func:`~bids_auton2n.denoise.repeats.align_runs` and writes the
transforms; ``DenoiseRepeats`` calls :func:`~bids_auton2n.denoise.repeats.denoise_repeats`
with those alignments; ``RepeatsProvenance`` assembles the sidecars. The images are those
of the library call (``tests/test_repeats_workflow.py`` compares them).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    Directory,
    File,
    InputMultiObject,
    OutputMultiObject,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)

from ..denoise import CONTRASTS
from .denoise import DenoiseStep, _DenoiseStepInputSpec


def _read_group(in_files):
    from ..utils.io import read_volume

    images, data = zip(*(read_volume(f) for f in in_files))
    return list(images), list(data)


class _AlignRunsInputSpec(_DenoiseStepInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True,
                                desc="runs of one image, the reference first")


class _AlignRunsOutputSpec(TraitedSpec):
    transforms = OutputMultiObject(File(exists=True),
                                   desc="ITK text transform of every run to the reference")
    out_json = File(exists=True, desc="alignment records (Alignment.to_dict) of every run")
    aligned_file = File(exists=True, desc="second run resampled on the reference grid")
    edges_file = File(exists=True, desc="strongest edges of the aligned second run (mask)")


class AlignRuns(DenoiseStep):
    """Rigid alignment of every run to the first (:func:`~.repeats.align_runs`)."""

    input_spec = _AlignRunsInputSpec
    output_spec = _AlignRunsOutputSpec

    def _run_step(self) -> dict:
        from ..denoise.align import edge_mask, resample_to_reference, write_transform
        from ..denoise.intensity import sanitize
        from ..denoise.noise import head_mask
        from ..denoise.repeats import align_runs

        images, data = _read_group(self.inputs.in_files)
        alignments = align_runs(data, [img.affine for img in images])
        cwd = self._cwd
        transforms = [str(write_transform(a.matrix, cwd / f"run{i + 1:02d}_to_reference_xfm.txt"))
                      for i, a in enumerate(alignments)]
        out_json = cwd / "alignments.json"
        out_json.write_text(json.dumps([a.to_dict() for a in alignments], indent=2))
        aligned, covered = resample_to_reference(data[1], images[1].affine, alignments[1].matrix,
                                                 data[0].shape, images[0].affine)
        edges = edge_mask(aligned, images[0].affine, head=head_mask(sanitize(data[0])[0]) & covered)
        edges_file = cwd / "run02_edges.nii.gz"
        nb.Nifti1Image(edges.astype(np.uint8), images[0].affine).to_filename(str(edges_file))
        return dict(transforms=transforms, out_json=str(out_json), edges_file=str(edges_file),
                    aligned_file=self._save(aligned, images[0], "run02_on_reference.nii.gz"))


class _DenoiseRepeatsInputSpec(_DenoiseStepInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True,
                                desc="runs of one image, the reference first")
    alignments_json = File(exists=True, mandatory=True, desc="AlignRuns out_json")
    contrast = traits.Enum(*CONTRASTS, mandatory=True, desc="BIDS suffix of the runs")
    method = traits.Enum("consensus", "n2a", usedefault=True, desc="fine-tuning method")
    budget_s = traits.Float(600.0, usedefault=True, desc="fine-tuning time budget (seconds)")
    max_steps = traits.Int(desc="most Adam steps of the fine-tuning (default: the budget only)")
    noise_level = traits.Float(desc="user-given noise level (percent) of every run")
    expert = traits.Float(desc="expert level to start from")
    experts_dir = Directory(desc="expert registry (default: shipped experts)")
    tta = traits.Bool(True, usedefault=True)
    fusion = traits.Bool(True, usedefault=True)
    guard = traits.Bool(True, usedefault=True)
    wiener = traits.Bool(True, usedefault=True)
    device = traits.Str("auto", usedefault=True)


class _DenoiseRepeatsOutputSpec(TraitedSpec):
    out_files = OutputMultiObject(File(exists=True), desc="every run denoised in its own space")
    noise_images = OutputMultiObject(File(exists=True), desc="input minus denoised, per run")
    combined_file = OutputMultiObject(File(exists=True),
                                      desc="combined image on the reference grid (empty "
                                      "when the group fell back to single images)")
    out_json = File(exists=True, desc="provenance of every run and of the combined image")


class DenoiseRepeats(DenoiseStep):
    """Fine-tune on the aligned runs and denoise them (:func:`~.repeats.denoise_repeats`)."""

    input_spec = _DenoiseRepeatsInputSpec
    output_spec = _DenoiseRepeatsOutputSpec

    def _run_step(self) -> dict:
        from ..denoise.align import Alignment
        from ..denoise.repeats import denoise_repeats

        images, data = _read_group(self.inputs.in_files)
        records = json.loads(Path(self.inputs.alignments_json).read_text())
        result = denoise_repeats(
            data, [img.affine for img in images], contrast=self.inputs.contrast,
            method=self.inputs.method, budget_s=self.inputs.budget_s,
            max_steps=self.inputs.max_steps if isdefined(self.inputs.max_steps) else None,
            alignments=[Alignment.from_dict(r) for r in records],
            noise_level=self.inputs.noise_level if isdefined(self.inputs.noise_level) else None,
            expert=self.inputs.expert if isdefined(self.inputs.expert) else None,
            tta=self.inputs.tta, fusion=self.inputs.fusion, guard=self.inputs.guard,
            wiener=self.inputs.wiener, device=self.inputs.device,
            registry=self._registry(self.inputs.experts_dir))
        out_files, noise_images = [], []
        for index, (img, original, denoised) in enumerate(zip(images, data, result.denoised)):
            out_files.append(self._save(denoised, img, f"run{index + 1:02d}_denoised.nii.gz"))
            noise_images.append(self._save(np.nan_to_num(original - denoised), img,
                                           f"run{index + 1:02d}_noise.nii.gz"))
        combined = [] if result.fell_back else [
            self._save(result.combined, images[0], "combined.nii.gz")]
        out_json = self._cwd / "repeats.json"
        out_json.write_text(json.dumps({
            "runs": [result.provenance(i) for i in range(len(data))],
            "in_group": result.in_group,
            "combined": None if result.fell_back else result.combined_provenance(),
        }, indent=2, default=float))
        return dict(out_files=out_files, noise_images=noise_images, combined_file=combined,
                    out_json=str(out_json))


class _RepeatsProvenanceInputSpec(BaseInterfaceInputSpec):
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="raw runs")
    bids_dir = Directory(exists=True, mandatory=True, desc="raw BIDS dataset root")
    output_dir = Directory(mandatory=True, desc="derivatives root (for the transforms' URIs)")
    source_metadata = traits.List(traits.Dict, desc="sidecar metadata of every run")
    repeats_json = File(exists=True, mandatory=True, desc="DenoiseRepeats out_json")
    transforms = InputMultiObject(File(exists=True), mandatory=True,
                                  desc="the written transform derivatives, one per run")
    finetuned = traits.Bool(False, usedefault=True, desc="experts fine-tuned on this dataset")


class _RepeatsProvenanceOutputSpec(TraitedSpec):
    metadata = traits.List(traits.Dict, desc="sidecar content of every denoised run")
    combined_metadata = traits.Dict(desc="sidecar content of the combined image")
    out_json = File(exists=True, desc="the same records as JSON")
    run_jsons = OutputMultiObject(File(exists=True), desc="each run's record as JSON")


class RepeatsProvenance(SimpleInterface):
    """Sidecars of a repeat group: every run's and the combined image's.

    ``Sources`` are BIDS URIs: the raw runs (``bids:raw:``) and the transforms written in
    this derivatives dataset (``bids::``).
    """

    input_spec = _RepeatsProvenanceInputSpec
    output_spec = _RepeatsProvenanceOutputSpec

    def _run_interface(self, runtime):
        from ..denoise.experts import sha256_file
        from ..utils.bids import bids_uri

        record = json.loads(Path(self.inputs.repeats_json).read_text())
        raw = [bids_uri(f, self.inputs.bids_dir) for f in self.inputs.in_files]
        xfms = [derivative_uri(f, self.inputs.output_dir) for f in self.inputs.transforms]
        carried_all = (list(self.inputs.source_metadata) if isdefined(self.inputs.source_metadata)
                       else [{} for _ in raw])
        n_runs = len(raw)
        metadata = []
        for index, (source, carried, run) in enumerate(zip(self.inputs.in_files, carried_all,
                                                           record["runs"])):
            grouped = record["in_group"][index]
            others = [uri for i, uri in enumerate(raw) if i != index and record["in_group"][i]]
            metadata.append({
                **carried,
                "Sources": [raw[index]] + ([*others, *xfms] if grouped else []),
                "SkullStripped": bool(carried.get("SkullStripped", False)),
                "Description": _description(run, grouped, n_runs),
                **run,
                "FineTuned": self.inputs.finetuned,
                "SourceSHA256": sha256_file(source),
            })
        combined = {}
        if record["combined"] is not None:
            used = [uri for uri, grouped in zip(raw, record["in_group"]) if grouped]
            combined = {
                **{k: v for k, v in carried_all[0].items()},
                "Sources": [*used, *[x for x, g in zip(xfms, record["in_group"]) if g]],
                "SkullStripped": bool(carried_all[0].get("SkullStripped", False)),
                "Description": "Mean of the denoised runs "
                + ", ".join(Path(f).name for f, g in zip(self.inputs.in_files, record["in_group"])
                            if g)
                + " on the grid of the first, after rigid alignment: "
                + _description(record["combined"], True, n_runs),
                **record["combined"],
                "FineTuned": self.inputs.finetuned,
            }
        cwd = Path(runtime.cwd)
        out_json = cwd / "provenance.json"
        out_json.write_text(json.dumps({"runs": metadata, "combined": combined}, indent=2,
                                       default=float))
        run_jsons = []
        for index, run in enumerate(metadata):
            run_jsons.append(cwd / f"run{index + 1:02d}_provenance.json")
            run_jsons[-1].write_text(json.dumps(run, indent=2, default=float))
        self._results.update(metadata=metadata, combined_metadata=combined,
                             out_json=str(out_json), run_jsons=[str(p) for p in run_jsons])
        return runtime


def derivative_uri(path: str | Path, output_dir: str | Path) -> str:
    """BIDS URI of a file of this derivatives dataset, e.g. ``bids::sub-01/anat/...``."""
    relative = Path(path).absolute().relative_to(Path(output_dir).absolute())
    return f"bids::{relative.as_posix()}"


def _description(run: dict, grouped: bool, n_runs: int) -> str:
    if not grouped:
        return ("Denoised on its own with Auto-N2N (synthetic pairs), not combined with the "
                "other runs of this image: " + "; ".join(run["Repeats"]["Fallback"]) + ".")
    method = run["Repeats"]["Method"]
    return (f"Denoised with Auto-N2N, its expert fine-tuned by {method} on the "
            f"{run['Repeats']['RunsCombined']} aligned repeated acquisitions of this image "
            f"({n_runs} runs in all)"
            + ("; flip test-time augmentation" if run["TestTimeAugmentation"] else "")
            + ("; fused with RI-NLM" if run["RINLMFusion"] else "") + ".")


class _OptionalBeforeAfterInputSpec(BaseInterfaceInputSpec):
    before = File(exists=True, mandatory=True, desc="image shown first")
    after = InputMultiObject(File(exists=True), desc="image shown second (none: no report)")
    before_label = traits.Str("before", usedefault=True)
    after_label = traits.Str("after", usedefault=True)
    wm_seg = File(exists=True, desc="mask whose contour is drawn on both images")


class _OptionalBeforeAfterOutputSpec(TraitedSpec):
    out_report = OutputMultiObject(File(exists=True), desc="flicker SVG (empty without after)")


class OptionalBeforeAfter(SimpleInterface):
    """nireports' ``SimpleBeforeAfterRPT`` flicker, or nothing when there is no ``after``
    image (the combined image of a group that fell back to single images)."""

    input_spec = _OptionalBeforeAfterInputSpec
    output_spec = _OptionalBeforeAfterOutputSpec

    def _run_interface(self, runtime):
        from nireports.interfaces.reporting.base import SimpleBeforeAfterRPT

        self._results["out_report"] = []
        if not isdefined(self.inputs.after) or not self.inputs.after:
            return runtime
        report = SimpleBeforeAfterRPT(
            before=self.inputs.before, after=self.inputs.after[0],
            before_label=self.inputs.before_label, after_label=self.inputs.after_label,
            dismiss_affine=False, generate_report=True)
        if isdefined(self.inputs.wm_seg):
            report.inputs.wm_seg = self.inputs.wm_seg
        result = report.run(cwd=runtime.cwd)
        self._results["out_report"] = [result.outputs.out_report]
        return runtime


class _RepeatsSummaryInputSpec(BaseInterfaceInputSpec):
    provenance_json = File(exists=True, mandatory=True, desc="RepeatsProvenance out_json")
    in_files = InputMultiObject(File(exists=True), mandatory=True, desc="raw runs")


class _RepeatsSummaryOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="HTML fragment for the nireports assembler")


class RepeatsSummary(SimpleInterface):
    """HTML fragment of a repeat group: path taken, alignments, fine-tuning, warnings."""

    input_spec = _RepeatsSummaryInputSpec
    output_spec = _RepeatsSummaryOutputSpec

    def _run_interface(self, runtime):
        from html import escape

        record = json.loads(Path(self.inputs.provenance_json).read_text())
        first = record["runs"][0]
        repeats = first["Repeats"]
        names = [Path(f).name for f in self.inputs.in_files]
        rows = []
        for name, alignment, run in zip(names, repeats["Alignments"], record["runs"]):
            correlation = alignment["Correlation"]
            rows.append(
                f"<tr><td>{escape(name)}</td><td>{alignment['RotationDegrees']:.2f}</td>"
                f"<td>{alignment['ShiftMillimetres']:.2f}</td>"
                f"<td>{'n/a' if correlation is None else f'{correlation:.3f}'}</td>"
                f"<td>{escape(run['PairSource'])}</td></tr>")
        if record["combined"]:
            training = repeats["FineTuning"]
            path = (f"<p><strong>Path:</strong> repeats &mdash; {escape(repeats['Method'])} "
                    f"fine-tuning of the {repeats['StartExpert']['NoiseLevelPercent']:g} % expert "
                    f"on {repeats['RunsCombined']} aligned runs ({escape(_training_line(training))});"
                    " the combined image is the mean of the denoised runs on the grid of the "
                    "first.</p>")
        else:
            path = ("<p><strong>Path:</strong> single-image denoising of every run "
                    "(no combined image).</p>")
        warnings = "".join(
            f'<p class="elem-desc" style="color:#a94442"><strong>Warning:</strong> '
            f"{escape(line)}; this run was not averaged with the others.</p>"
            for line in repeats["Fallback"])
        out_report = Path(runtime.cwd) / "repeats_summary.html"
        out_report.write_text(
            '<h3 class="elem-title">Repeated acquisitions</h3>\n' + path + warnings
            + "<table><tr><th>run</th><th>rotation (deg)</th><th>shift (mm)</th>"
            "<th>correlation after alignment</th><th>pairs</th></tr>" + "".join(rows)
            + "</table>\n")
        self._results["out_report"] = str(out_report)
        return runtime


def _training_line(training: dict) -> str:
    """What the fine-tuning did, in words."""
    stopped = training["stopped"].replace("_", " ")
    if "iterations" in training:  # Noise2Average
        return (f"{training['iterations']} iteration(s) run, iteration "
                f"{training['best_iteration']} kept, {training['train_seconds']:.0f} s, "
                f"stopped: {stopped}")
    estimate = training["consensus_estimate"]
    return (f"{training['steps']} steps in {training['train_seconds']:.0f} s, stopped: {stopped}; "
            f"consensus estimate of the squared error {estimate['start']:.3g} with the expert, "
            f"{estimate['best']:.3g} after")
