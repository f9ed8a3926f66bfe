"""BIDS-Derivatives data sink of the app (niworkflows' sink writing at the output root)."""

from nipype.interfaces.base import File, InputMultiObject, isdefined
from niworkflows.interfaces.bids import DerivativesDataSink as _DerivativesDataSink

from ..denoise import CONTRASTS

#: niworkflows' anatomical and figure path patterns, with ``PDw`` added (niworkflows
#: lists the deprecated ``PD`` only) and the ``echo`` entity of multi-echo anatomical
#: images (so that the echoes of one image get distinct derivatives).
_PATTERNS = tuple(
    pattern.replace("{suffix<T1w|T2w|", "{suffix<" + "|".join(CONTRASTS) + "|")
    .replace("[_run-{run}][_space-", "[_run-{run}][_echo-{echo}][_space-")
    .replace("[_run-{run}][_hemi-{hemi<L|R>}]_from-", "[_run-{run}][_echo-{echo}][_hemi-{hemi<L|R>}]_from-")
    if "{datatype<anat>|anat}" in pattern or "{datatype<figures>}" in pattern else pattern
    for pattern in _DerivativesDataSink._file_patterns
)


class DerivativesDataSink(_DerivativesDataSink):
    """Write into the output directory itself (``out_path_base=''``), as fMRIPrep does."""

    out_path_base = ""
    _file_patterns = _PATTERNS


class _OptionalSinkInputSpec(DerivativesDataSink.input_spec):
    in_file = InputMultiObject(File(exists=True),
                               desc="the object to be saved (nothing is written without one)")


class OptionalDerivativesDataSink(DerivativesDataSink):
    """:class:`DerivativesDataSink` that writes nothing when it is given no file.

    For derivatives that exist only on some runs, such as the combined image of repeated
    acquisitions, which a group that falls back to single images does not have.
    """

    input_spec = _OptionalSinkInputSpec

    def _run_interface(self, runtime):
        if not isdefined(self.inputs.in_file) or not self.inputs.in_file:
            self._results.update(out_file=[], out_meta=[], compression=[], fixed_hdr=[])
            return runtime
        return super()._run_interface(runtime)
