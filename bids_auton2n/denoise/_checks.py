"""Input validation shared by the kernels' wrappers: one wording for every caller."""

from __future__ import annotations

import numpy as np


def real_volume(array, caller: str, name: str = "x", *, shape=None,
                finite: bool = True) -> np.ndarray:
    """``array`` as a real 3D ndarray (unchanged dtype), or a ValueError naming ``caller``.

    ``shape``, when given, is the shape ``array`` must have (that of the image it goes with);
    ``finite`` refuses NaN and inf, which the pipeline replaces first (``intensity.sanitize``).
    """
    array = np.asarray(array)
    if array.ndim != 3:
        raise ValueError(f"{caller}: {name} must be a 3D array, got shape {array.shape}")
    if shape is not None and array.shape != tuple(shape):
        raise ValueError(f"{caller}: {name} shape {array.shape} differs from x shape {tuple(shape)}")
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{caller}: {name} must be real-valued, got dtype {array.dtype}")
    if finite and not np.isfinite(array).all():
        raise ValueError(f"{caller}: {name} contains non-finite values (NaN or inf); "
                         "sanitize() it first")
    return array
