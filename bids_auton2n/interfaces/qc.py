"""Quality metrics of one denoised image for the group level (wraps :mod:`~bids_auton2n.reports.iqms`)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
from nipype.interfaces.base import (
    BaseInterfaceInputSpec,
    File,
    SimpleInterface,
    TraitedSpec,
    traits,
)


class _ComputeIQMsInputSpec(BaseInterfaceInputSpec):
    source_file = File(exists=True, mandatory=True, desc="raw image")
    denoised_file = File(exists=True, mandatory=True, desc="desc-denoised derivative")
    contrast = traits.Str(mandatory=True, desc="BIDS suffix")


class _ComputeIQMsOutputSpec(TraitedSpec):
    out_json = File(exists=True, desc="IQMs before and after")


class ComputeIQMs(SimpleInterface):
    """SNR, CNR, CJV and FWHM before and after denoising, and the structure removed
    (:func:`~.iqms.compare_iqms`)."""

    input_spec = _ComputeIQMsInputSpec
    output_spec = _ComputeIQMsOutputSpec

    def _run_interface(self, runtime):
        from ..reports.iqms import compare_iqms

        source = nb.load(self.inputs.source_file)
        denoised = nb.load(self.inputs.denoised_file)
        iqms = compare_iqms(
            np.asanyarray(source.dataobj).squeeze(),
            np.asanyarray(denoised.dataobj),
            contrast=self.inputs.contrast,
            zooms=denoised.header.get_zooms()[:3],
        )
        out_json = Path(runtime.cwd) / "iqms.json"
        out_json.write_text(json.dumps(iqms, indent=2))
        self._results["out_json"] = str(out_json)
        return runtime
