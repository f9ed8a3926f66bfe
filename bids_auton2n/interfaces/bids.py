"""BIDS-Derivatives data sink of the app (niworkflows' sink writing at the output root)."""

from pathlib import Path

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
    """Write into the output directory itself (``out_path_base=''``), as fMRIPrep does.

    niworkflows deletes the old file and then writes the new one under its final name;
    here it writes into a staging folder of the output directory and every file is renamed
    into place once complete (:mod:`~bids_auton2n.utils.atomic`): a killed run or a full
    disk leaves no partial derivative under a final name, and readers (the group level,
    other array tasks) see the previous version until the new one is whole.
    """

    out_path_base = ""
    _file_patterns = _PATTERNS

    def _run_interface(self, runtime):
        from ..utils.atomic import move_into_place, staging_dir

        final_root = Path(self.inputs.base_directory if isdefined(self.inputs.base_directory)
                          else runtime.cwd).absolute()
        # niworkflows sets out_meta only when it writes a sidecar: none left from a last run
        self._results.pop("out_meta", None)
        with staging_dir(final_root) as staging:
            self.inputs.base_directory = str(staging)
            try:
                runtime = super()._run_interface(runtime)
            except OSError as exc:  # e.g. a full disk: say what was being written, where
                sources = ", ".join(Path(f).name for f in self.inputs.source_file)
                raise OSError(exc.errno, f"{exc.strerror}: cannot write the derivatives of "
                              f"{sources} into {final_root}") from None
            finally:
                self.inputs.base_directory = str(final_root)
            # the sidecar first: once an image is in place, so is its metadata
            if "out_meta" in self._results:
                self._results["out_meta"] = str(move_into_place(
                    self._results["out_meta"],
                    final_root / Path(self._results["out_meta"]).relative_to(staging)))
            self._results["out_file"] = [
                str(move_into_place(path, final_root / Path(path).relative_to(staging)))
                for path in self._results["out_file"]
            ]
        return runtime


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
