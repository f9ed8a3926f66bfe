"""Reportlets of the per-subject report (summary fragments; figures come from niworkflows)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
)


def _noise_model_text(record: dict) -> str:
    model = record.get("NoiseModel", {"Model": "global"})
    text = ("adaptive: each region denoised by the experts of its local noise level; RI-NLM, "
            "the guard and the Rician correction used the local sigma"
            if model["Model"] == "adaptive" else "global: one noise level for the image")
    noise_map = model.get("NoiseMap")
    if noise_map:
        pct = noise_map["PercentPercentiles"]
        text += (f" &mdash; local noise P10/P50/P90 {pct['P10']:.2f} / {pct['P50']:.2f} / "
                 f"{pct['P90']:.2f} %, spread {noise_map['Spread']:.2f}")
    return text + f" ({model.get('Choice', 'auto')} choice)"


def _pair_source_text(record: dict) -> str:
    source = record.get("PairSource", "synthetic-patches")
    if source != "neighbouring-slices":
        return f"{source} (the experts as shipped or fine-tuned on the dataset)"
    tuning = record.get("SlicePairFineTuning", {})
    return (f"neighbouring-slices: the expert was fine-tuned on this image's neighbouring "
            f"slices (NS-N2N, slice axis {tuning.get('SliceAxis')}, {tuning.get('Steps')} steps "
            f"in {tuning.get('Seconds', 0):.0f} s, {100 * (tuning.get('MatchedFraction') or 0):.0f} % "
            "of the pixels matched) and applied slice by slice")


class _SummaryInputSpec(BaseInterfaceInputSpec):
    provenance_json = File(exists=True, mandatory=True, desc="DenoiseProvenance output")


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
        record = json.loads(Path(self.inputs.provenance_json).read_text())
        noise = record["NoiseEstimate"]
        experts = ", ".join(
            f"{e['NoiseLevelPercent']:g} % (weight {e['Weight']:.2f})" for e in record["Experts"]
        )
        items = [
            ("Source", record["Sources"][0]),
            ("Noise level", f"{noise['percent']:.2f} % of the {noise['reference_tissue']} "
                            f"intensity (&sigma; = {noise['sigma']:.4g} image units, "
                            f"{noise['Source']})"),
            ("Expert(s)", f"{experts} &mdash; selection: {record['ExpertSelection']}"
                          + (", fine-tuned on this dataset" if record["FineTuned"] else "")),
            ("Noise model", _noise_model_text(record)),
            ("Training pairs", _pair_source_text(record)),
            ("Test-time augmentation", "flips (4 passes)" if record["TestTimeAugmentation"]
             else "off"),
            ("RI-NLM fusion", "on" if record["RINLMFusion"] else "off"),
            ("Device", record["Device"]),
            ("Runtime", f"{record['TimingsSeconds']['total']:.1f} s"),
        ]
        rows = "\n".join(
            f"\t\t<li><strong>{escape(key)}:</strong> {value if key != 'Source' else escape(value)}</li>"
            for key, value in items
        )
        out_report = Path(runtime.cwd) / "summary.html"
        out_report.write_text(f'<h3 class="elem-title">Denoising summary</h3>\n\t<ul class="elem-desc">\n{rows}\n\t</ul>\n')
        self._results["out_report"] = str(out_report)
        return runtime
