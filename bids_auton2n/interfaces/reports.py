"""Reportlets of the per-subject report: summary fragment and figures (thin wrappers of
:mod:`bids_auton2n.reports`)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    isdefined,
    traits,
)


class _FiguresInputSpec(BaseInterfaceInputSpec):
    in_file = File(exists=True, mandatory=True, desc="noisy input image")
    denoised_file = File(exists=True, mandatory=True, desc="denoised image")
    noise_image = File(exists=True, mandatory=True, desc="residual: input minus denoised")
    mask_file = File(exists=True, mandatory=True, desc="head mask (places the cuts)")
    sigma = traits.Float(mandatory=True, desc="estimated noise std (scale of the residual)")


class _FiguresOutputSpec(TraitedSpec):
    before_after = File(exists=True, desc="noisy and denoised rows, then a flicker (SVG)")
    residual = File(exists=True, desc="residual on +/- 3 sigma with a colour bar (SVG)")


class DenoisingFigures(SimpleInterface):
    """Before/after and residual figures (:mod:`bids_auton2n.reports.figures`), drawn in
    the closest RAS+ orientation of the image."""

    input_spec = _FiguresInputSpec
    output_spec = _FiguresOutputSpec

    def _run_interface(self, runtime):
        import nibabel as nb
        import numpy as np

        from ..reports.figures import before_after_svg, residual_svg

        def load(path):
            img = nb.as_closest_canonical(nb.load(path))
            return np.asarray(img.get_fdata(dtype=np.float32)).squeeze(), img.header.get_zooms()

        noisy, zooms = load(self.inputs.in_file)
        denoised, _ = load(self.inputs.denoised_file)
        residual, _ = load(self.inputs.noise_image)
        mask = load(self.inputs.mask_file)[0] > 0
        zooms = zooms[:3]
        out = Path(runtime.cwd)
        (out / "before_after.svg").write_text(before_after_svg(noisy, denoised, mask, zooms))
        (out / "residual.svg").write_text(residual_svg(residual, mask, self.inputs.sigma, zooms))
        self._results.update(before_after=str(out / "before_after.svg"),
                             residual=str(out / "residual.svg"))
        return runtime


class _SummaryInputSpec(BaseInterfaceInputSpec):
    provenance_json = File(exists=True, mandatory=True, desc="DenoiseProvenance output")
    iqms_json = File(exists=True, desc="ComputeIQMs output (quality before and after)")


class _SummaryOutputSpec(TraitedSpec):
    out_report = File(exists=True, desc="HTML fragment for the nireports assembler")


class DenoiseSummary(SimpleInterface):
    """HTML fragment stating the noise estimate, the experts and the options that ran.

    Like fMRIPrep's ``SubjectSummary``, the fragment is an ``.html`` reportlet that the
    nireports assembler inlines in ``sub-<label>.html``.
    """

    input_spec = _SummaryInputSpec
    output_spec = _SummaryOutputSpec

    def _run_interface(self, runtime):
        from ..denoise.inference import TTA_FLIPS

        record = json.loads(Path(self.inputs.provenance_json).read_text())
        noise = record["NoiseEstimate"]
        experts = ", ".join(
            f"{e['NoiseLevelPercent']:g} % (weight {e['Weight']:.2f})" for e in record["Experts"]
        )
        items = [
            ("Source", record["Sources"][0]),
            ("Noise level", f"{noise['Percent']:.2f} % of the {noise['ReferenceTissue']} "
                            f"intensity (&sigma; = {noise['Sigma']:.4g} image units, "
                            f"{noise['Source']})"),
            ("Expert(s)", f"{experts} &mdash; selection: {record['ExpertSelection']}"
                          + (", fine-tuned on this dataset" if record["FineTuned"] else "")),
            ("Test-time augmentation", f"flips ({len(TTA_FLIPS)} passes)"
             if record["TestTimeAugmentation"] else "off"),
            ("RI-NLM fusion", "on" if record["RINLMFusion"] else "off"),
            ("Collaborative Wiener stage", "on" if record.get("CollaborativeWiener") else "off"),
            ("Device", record["Device"]),
            ("Runtime", f"{record['TimingsSeconds']['total']:.1f} s"),
        ]
        rows = "\n".join(
            f"\t\t<li><strong>{escape(key)}:</strong> {value if key != 'Source' else escape(value)}</li>"
            for key, value in items
        )
        html = (f'<h3 class="elem-title">Denoising summary</h3>\n\t<ul class="elem-desc">\n'
                f"{rows}\n\t</ul>\n")
        if isdefined(self.inputs.iqms_json):
            from ..reports.group import iqms_html

            html += iqms_html(json.loads(Path(self.inputs.iqms_json).read_text()))
        out_report = Path(runtime.cwd) / "summary.html"
        out_report.write_text(html)
        self._results["out_report"] = str(out_report)
        return runtime
