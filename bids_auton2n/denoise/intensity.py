"""Input sanitising and intensity normalisation to network units.

The CNN experts are trained on volumes divided by their reference-tissue
intensity (white matter for T1w / FLAIR, CSF for T2w / PDw, see
``docs/architecture.md``), so that the reference tissue is ~1.0 and a p % noise
level is a noise standard deviation of p / 100 in network units, whatever the
scanner's arbitrary intensity scale.
"""

from __future__ import annotations

import math

import numpy as np


def sanitize(x) -> tuple[np.ndarray, np.ndarray]:
    """Finite float32 copy of ``x`` and the mask of its non-finite voxels.

    NaN and +/-Inf voxels are set to 0 in the copy; the caller restores them
    from ``nonfinite_mask`` in the output so they come back exactly as they were.

    Parameters
    ----------
    x : array_like
        Input volume (any real dtype).

    Returns
    -------
    finite : numpy.ndarray
        float32 copy (never a view of ``x``) with non-finite voxels set to 0.
    nonfinite_mask : numpy.ndarray of bool
        True where ``x`` was NaN or infinite.
    """
    array = np.asarray(x)
    if not np.issubdtype(array.dtype, np.number) or np.iscomplexobj(array):
        raise TypeError(f"expected a real numeric array, got dtype {array.dtype}")
    finite = np.array(array, dtype=np.float32, copy=True)
    nonfinite_mask = ~np.isfinite(finite)
    finite[nonfinite_mask] = 0.0
    return finite, nonfinite_mask


class IntensityNormalizer:
    """Divide by the reference-tissue intensity (forward), multiply back (inverse).

    Negative values pass through unchanged (no clipping): magnitude (Rician)
    data has none, but resampled (sinc / spline interpolated) inputs can; the
    CNN accepts any real value, and clipping would bias the background noise
    statistics and would not be undone by :meth:`inverse`.

    Both directions compute in float64 and return float32.  The round trip
    ``inverse(forward(x))`` is exact for power-of-two scales and otherwise within
    one float32 unit in the last place (the float32 rounding of ``x / scale``
    cannot be undone bit for bit).

    Parameters
    ----------
    scale : float
        Reference-tissue intensity in image units; finite and > 0.
    """

    def __init__(self, scale: float):
        try:
            value = float(scale)
        except (TypeError, ValueError):
            raise ValueError(f"intensity scale must be a number, got {scale!r}") from None
        if not math.isfinite(value) or value <= 0.0:
            raise ValueError(
                f"intensity scale must be finite and > 0, got {value!r} "
                "(reference tissue not found or image empty?)"
            )
        self.scale = value

    def forward(self, x) -> np.ndarray:
        """Image units -> network units (reference tissue ~1.0)."""
        return (np.asarray(x, dtype=np.float64) / self.scale).astype(np.float32)

    def inverse(self, y) -> np.ndarray:
        """Network units -> image units."""
        return (np.asarray(y, dtype=np.float64) * self.scale).astype(np.float32)

    def __repr__(self) -> str:
        return f"IntensityNormalizer(scale={self.scale!r})"
