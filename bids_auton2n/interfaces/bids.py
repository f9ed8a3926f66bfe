"""BIDS-Derivatives data sink of the app (niworkflows' sink writing at the output root)."""

from niworkflows.interfaces.bids import DerivativesDataSink as _DerivativesDataSink

from ..denoise import CONTRASTS

#: niworkflows' anatomical and figure path patterns, with ``PDw`` added (niworkflows
#: lists the deprecated ``PD`` only).
_PATTERNS = tuple(
    pattern.replace("{suffix<T1w|T2w|", "{suffix<" + "|".join(CONTRASTS) + "|")
    for pattern in _DerivativesDataSink._file_patterns
)


class DerivativesDataSink(_DerivativesDataSink):
    """Write into the output directory itself (``out_path_base=''``), as fMRIPrep does."""

    out_path_base = ""
    _file_patterns = _PATTERNS
