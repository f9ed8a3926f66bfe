"""Rigid alignment of repeated acquisitions of one image (ANTs through antspyx).

Every run of a repeat group is brought to the grid of the first run (the *reference*): ANTs
estimates the rigid transform (``ants.registration(type_of_transform="Rigid")``: Mattes
mutual information, four-level pyramid), :func:`resample_to_reference` applies it, and
:func:`alignment_check` decides whether the result can be averaged at all. An alignment is
implausible, and the group falls back to single-image denoising, when the aligned run does
not resemble the reference (:data:`MIN_CORRELATION`), when the head moved more than a repeat
scan plausibly does (:data:`MAX_ROTATION_DEG`, :data:`MAX_SHIFT_MM`), or when the moving
run covers too little of the reference's head (:data:`MIN_COVERAGE`).

Why ANTs and not DIPY's ``affine_registration``: in one development run on the ICBM152
benchmark phantom at 9 % Rician noise moved by a few degrees and millimetres both found the
motion to 0.02 mm, but ANTs took 41-45 s where DIPY took 294-656 s on the same machine, in
the same run (that run's table was not kept: ``bids_auton2n-bench repeats-align`` reruns it;
``docs/repeats.md``).

Conventions: volumes are in their own voxel order; a transform is the 4x4 matrix ``M`` in
world (RAS, mm) coordinates that maps a point of the reference to the same anatomy in the
moving run (``x_moving = M @ x_reference``), the convention of ITK/ANTs "fixed to moving"
transforms and of nitransforms' :class:`~nitransforms.linear.Affine`; it is written as an
ITK text transform (:func:`write_transform`), which ``antsApplyTransforms -i run -r
reference -t file`` applies.

References
----------
.. [1] Avants B.B. et al. A reproducible evaluation of ANTs similarity metric performance in
   brain image registration. NeuroImage 54(3):2033-2044, 2011.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ._checks import real_volume

LOGGER = logging.getLogger("bids_auton2n.denoise")

#: Smallest Pearson correlation of the smoothed reference and aligned run (inside the
#: reference's head) for the runs to be averaged.  Measured after ANTs' rigid alignment on
#: the real scans of ``../shared/data`` (2x2 in-plane averages of UIH): the UIH scan-rescan
#: pair 0.66 (its second session is blurrier), the UIH scan against other people's scans
#: 0.56 (Philips ADNI), 0.37 (studyforrest), 0.14 (XA30, strong bias field).
MIN_CORRELATION = 0.6
#: Largest rotation (degrees) and shift of the reference head's centre (mm) of a repeat.
MAX_ROTATION_DEG = 15.0
MAX_SHIFT_MM = 25.0
#: Smallest fraction of the reference's head that the moving run's field of view covers.
MIN_COVERAGE = 0.8
#: Gaussian smoothing (mm, standard deviation) before the correlation: it compares anatomy,
#: not the two noise realizations.
CHECK_SMOOTHING_MM = 2.0
#: Registration works on a grid of about this voxel size (mm): finer images are block-averaged
#: first (the transform is in world coordinates, so it applies to the full-resolution image).
REGISTRATION_VOXEL_MM = 1.0
#: Seed of ANTs' random sampling of the metric; with one thread the registration is then
#: reproducible to the bit (with more it is not).
ANTS_SEED = 1
#: What :func:`register_rigid` runs, for provenance records.
METHOD = "ANTs rigid registration (antspyx ants.registration, type_of_transform='Rigid')"


@dataclass
class Alignment:
    """One run's rigid alignment to the reference and its plausibility check.

    Attributes
    ----------
    matrix : ndarray (4, 4)
        World (RAS mm) map from the reference to the moving run (identity for the reference).
    rotation_deg, shift_mm : float
        Rotation angle of ``matrix`` and displacement of the reference head's centre.
    max_displacement_mm : float
        Largest displacement of a reference head voxel.
    correlation : float
        Pearson correlation of the smoothed reference and aligned run inside the head.
    correlation_header : float
        The same with the headers alone (no registration), for comparison.
    coverage : float
        Fraction of the reference's head inside the moving run's field of view.
    plausible : bool
    reason : str
        Why the alignment is implausible ("" when plausible).
    seconds : float
    start : str
        Where the registration started (a key of :data:`STARTS`; "" for the reference).
    """

    matrix: np.ndarray
    rotation_deg: float = 0.0
    shift_mm: float = 0.0
    max_displacement_mm: float = 0.0
    correlation: float = 1.0
    correlation_header: float = 1.0
    coverage: float = 1.0
    plausible: bool = True
    reason: str = ""
    seconds: float = 0.0
    method: str = field(default=METHOD)
    start: str = ""

    def to_dict(self) -> dict:
        """JSON-able record for sidecars and reports."""
        return {
            "Method": self.method,
            "Matrix": np.asarray(self.matrix, dtype=float).tolist(),
            "RotationDegrees": round(float(self.rotation_deg), 3),
            "ShiftMillimetres": round(float(self.shift_mm), 3),
            "MaxDisplacementMillimetres": round(float(self.max_displacement_mm), 3),
            "Correlation": _rounded(self.correlation),
            "CorrelationHeaderOnly": _rounded(self.correlation_header),
            "Coverage": round(float(self.coverage), 4),
            "Plausible": bool(self.plausible),
            "Reason": self.reason,
            "Seconds": round(float(self.seconds), 2),
            "Start": self.start,
        }

    @classmethod
    def from_dict(cls, record: dict) -> "Alignment":
        """Inverse of :meth:`to_dict` (the matrix exactly; the figures as rounded there)."""
        return cls(
            matrix=np.asarray(record["Matrix"], dtype=float),
            rotation_deg=record["RotationDegrees"], shift_mm=record["ShiftMillimetres"],
            max_displacement_mm=record["MaxDisplacementMillimetres"],
            correlation=_nan_for_none(record["Correlation"]),
            correlation_header=_nan_for_none(record["CorrelationHeaderOnly"]),
            coverage=record["Coverage"], plausible=record["Plausible"], reason=record["Reason"],
            seconds=record["Seconds"], method=record["Method"], start=record["Start"],
        )

    @classmethod
    def identity(cls) -> "Alignment":
        """The reference's own (trivial) alignment."""
        return cls(matrix=np.eye(4))


def _rounded(value: float, digits: int = 4) -> float | None:
    """JSON has no NaN: an undefined figure is written as null."""
    return round(float(value), digits) if np.isfinite(value) else None


def _nan_for_none(value) -> float:
    return float("nan") if value is None else float(value)


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def working_grid(data: np.ndarray, affine: np.ndarray,
                 voxel_mm: float = REGISTRATION_VOXEL_MM) -> tuple[np.ndarray, np.ndarray]:
    """Block-average axes finer than ``voxel_mm`` by an integer factor (same world space).

    Returns the averaged volume and its affine (voxel centres at the blocks' centres).
    """
    factors = np.maximum(np.round(voxel_mm / _voxel_sizes(affine)).astype(int), 1)
    if (factors == 1).all():
        return np.asarray(data, dtype=np.float32), np.asarray(affine, dtype=float)
    shape = np.asarray(data.shape) // factors
    trimmed = np.asarray(data, dtype=np.float32)[tuple(slice(0, s * f) for s, f in zip(shape, factors))]
    blocks = trimmed.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    averaged = blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32)
    new_affine = np.array(affine, dtype=float)
    new_affine[:3, 3] = new_affine[:3, :3] @ ((factors - 1) / 2.0) + new_affine[:3, 3]
    new_affine[:3, :3] = new_affine[:3, :3] * factors
    return averaged, new_affine


#: Where ANTs starts from: the images' headers (the identity world map; repeats of one
#: session are close to it), or ANTs' default, their centres of mass superimposed.
STARTS = {"headers": "Identity", "centres of mass": None}


def register_rigid(reference: np.ndarray, reference_affine: np.ndarray, moving: np.ndarray,
                   moving_affine: np.ndarray, *, start: str = "headers") -> np.ndarray:
    """ANTs rigid registration of ``moving`` to ``reference``; the world map (see module doc).

    Runs on :func:`working_grid` copies, single-threaded with a fixed seed (reproducible),
    from ``start`` (a key of :data:`STARTS`).
    """
    import ants
    import nitransforms as nt

    os.environ["ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"] = "1"
    fixed_data, fixed_affine = working_grid(reference, reference_affine)
    moving_data, moving_affine = working_grid(moving, moving_affine)
    fixed, moved = (_ants_image(d, a) for d, a in ((fixed_data, fixed_affine),
                                                    (moving_data, moving_affine)))
    previous_seed = ants.config._random_seed
    ants.config._random_seed = ANTS_SEED  # antspyx passes it as --random-seed
    try:
        result = ants.registration(fixed, moved, type_of_transform="Rigid",
                                   initial_transform=STARTS[start])
    finally:
        ants.config._random_seed = previous_seed
    transform_file = result["fwdtransforms"][0]
    try:
        return np.asarray(nt.linear.load(transform_file, fmt="itk").matrix, dtype=float)
    finally:
        for path in result["fwdtransforms"] + result["invtransforms"]:
            Path(path).unlink(missing_ok=True)


def _ants_image(data: np.ndarray, affine: np.ndarray):
    import ants
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(data, np.float32), affine)
    image.header.set_xyzt_units("mm", "sec")  # else antspyx prints that it assumes them
    return ants.from_nibabel_nifti(image)


def voxel_map(matrix: np.ndarray, reference_affine: np.ndarray,
              moving_affine: np.ndarray) -> np.ndarray:
    """Reference voxel -> moving voxel (4x4) for ``matrix`` (a world map, see module doc)."""
    return np.linalg.inv(moving_affine) @ np.asarray(matrix, dtype=float) @ reference_affine


def resample_to_reference(moving: np.ndarray, moving_affine: np.ndarray, matrix: np.ndarray,
                          reference_shape, reference_affine: np.ndarray, *,
                          order: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """``moving`` on the reference grid, and where its field of view covers that grid.

    Cubic B-spline interpolation (``scipy.ndimage.affine_transform``, ``order=3``) keeps
    the images' detail; voxels outside the moving field of view are 0 and ``False`` in
    the coverage mask.
    """
    moving = real_volume(moving, "resample_to_reference").astype(np.float32, copy=False)
    mapping = voxel_map(matrix, reference_affine, moving_affine)
    resampled = ndi.affine_transform(moving, mapping[:3, :3], mapping[:3, 3],
                                     output_shape=tuple(reference_shape), order=order,
                                     mode="constant", cval=0.0).astype(np.float32)
    # Coverage: reference voxels whose position lies inside the moving grid.
    coverage = ndi.affine_transform(np.ones(moving.shape, np.float32), mapping[:3, :3],
                                    mapping[:3, 3], output_shape=tuple(reference_shape),
                                    order=0, mode="constant", cval=0.0) > 0.5
    return resampled, coverage


def rotation_angle_deg(matrix: np.ndarray) -> float:
    """Angle (degrees) of the rotation part of a rigid ``matrix``."""
    cosine = (np.trace(np.asarray(matrix)[:3, :3]) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0))))


def _smoothed_correlation(a: np.ndarray, b: np.ndarray, where: np.ndarray,
                          affine: np.ndarray) -> float:
    if where.sum() < 2:
        return float("nan")
    sigma = CHECK_SMOOTHING_MM / _voxel_sizes(affine)
    sa = ndi.gaussian_filter(a, sigma)[where]
    sb = ndi.gaussian_filter(b, sigma)[where]
    if sa.std() == 0 or sb.std() == 0:
        return 0.0
    return float(np.corrcoef(sa, sb)[0, 1])


def alignment_check(reference: np.ndarray, reference_affine: np.ndarray, moving: np.ndarray,
                    moving_affine: np.ndarray, matrix: np.ndarray, *,
                    head: np.ndarray) -> Alignment:
    """Measure an alignment and decide whether its runs can be averaged.

    Parameters
    ----------
    reference, moving : ndarray
        The two runs (own grids, image units).
    reference_affine, moving_affine : ndarray (4, 4)
    matrix : ndarray (4, 4)
        World map from the reference to the moving run.
    head : ndarray of bool
        Head mask of the reference (where the check looks).

    Returns
    -------
    Alignment
        ``plausible`` is False, with a ``reason``, when the correlation is below
        :data:`MIN_CORRELATION`, the rotation above :data:`MAX_ROTATION_DEG`, the shift of
        the head's centre above :data:`MAX_SHIFT_MM` or the coverage below
        :data:`MIN_COVERAGE`.
    """
    # The check runs on the working grid too: it is about anatomy, and it keeps the cost low.
    ref, ref_affine = working_grid(reference, reference_affine)
    mov, mov_affine = working_grid(moving, moving_affine)
    head = working_grid(head.astype(np.float32), reference_affine)[0] > 0.5
    aligned, covered = resample_to_reference(mov, mov_affine, matrix, ref.shape, ref_affine,
                                             order=1)
    header, header_covered = resample_to_reference(mov, mov_affine, np.eye(4), ref.shape,
                                                   ref_affine, order=1)
    coverage = float((head & covered).sum() / max(head.sum(), 1))
    points = np.argwhere(head)
    world = points @ ref_affine[:3, :3].T + ref_affine[:3, 3]
    displacement = world @ (np.asarray(matrix)[:3, :3] - np.eye(3)).T + np.asarray(matrix)[:3, 3]
    lengths = np.sqrt((displacement ** 2).sum(axis=1)) if len(points) else np.zeros(1)
    centre = world.mean(axis=0) if len(points) else np.zeros(3)
    shift = float(np.linalg.norm((np.asarray(matrix)[:3, :3] - np.eye(3)) @ centre
                                 + np.asarray(matrix)[:3, 3]))
    result = Alignment(
        matrix=np.asarray(matrix, dtype=float),
        rotation_deg=rotation_angle_deg(matrix),
        shift_mm=shift,
        max_displacement_mm=float(lengths.max()),
        correlation=_smoothed_correlation(ref, aligned, head & covered, ref_affine),
        correlation_header=_smoothed_correlation(ref, header, head & header_covered, ref_affine),
        coverage=coverage,
    )
    reasons = []
    if not result.correlation >= MIN_CORRELATION:
        reasons.append(f"correlation after alignment {result.correlation:.2f} < {MIN_CORRELATION:g}")
    if result.rotation_deg > MAX_ROTATION_DEG:
        reasons.append(f"rotation {result.rotation_deg:.1f} deg > {MAX_ROTATION_DEG:g}")
    if result.shift_mm > MAX_SHIFT_MM:
        reasons.append(f"head shift {result.shift_mm:.1f} mm > {MAX_SHIFT_MM:g}")
    if coverage < MIN_COVERAGE:
        reasons.append(f"only {100 * coverage:.0f} % of the head in the field of view "
                       f"(< {100 * MIN_COVERAGE:.0f} %)")
    result.plausible = not reasons
    result.reason = "; ".join(reasons)
    return result


def align_run(reference: np.ndarray, reference_affine: np.ndarray, moving: np.ndarray,
              moving_affine: np.ndarray, *, head: np.ndarray) -> Alignment:
    """Register ``moving`` to ``reference`` (:func:`register_rigid`) and check it.

    The registration starts from the headers; when that alignment is implausible it is
    repeated from the centres of mass (:data:`STARTS`), and the better correlated of the two
    is returned. A registration that raises is reported as an implausible alignment (the
    headers' identity), never as an error: the group then takes the single-image path.
    """
    start_time = time.perf_counter()
    best = None
    for start in STARTS:
        try:
            matrix = register_rigid(reference, reference_affine, moving, moving_affine,
                                    start=start)
        except Exception as exc:  # ANTs raises RuntimeError and others on degenerate input
            LOGGER.warning("rigid registration from the %s failed: %s", start, exc)
            alignment = Alignment(matrix=np.eye(4), plausible=False, correlation=float("nan"),
                                  reason=f"registration failed ({type(exc).__name__}: {exc})")
        else:
            alignment = alignment_check(reference, reference_affine, moving, moving_affine,
                                        matrix, head=head)
        alignment.start = start
        if best is None or (np.nan_to_num(alignment.correlation, nan=-1.0)
                            > np.nan_to_num(best.correlation, nan=-1.0)):
            best = alignment
        if best.plausible:
            break
    best.seconds = time.perf_counter() - start_time
    return best


def edge_mask(volume: np.ndarray, affine: np.ndarray, *, head: np.ndarray | None = None,
              smoothing_mm: float = 1.0, percentile: float = 90.0) -> np.ndarray:
    """Strongest edges of ``volume``: gradient magnitude (Gaussian, ``smoothing_mm``) above
    its ``percentile`` inside ``head`` (the whole volume without one). For the report's
    alignment check: the edges of one run drawn over the other."""
    magnitude = ndi.gaussian_gradient_magnitude(
        np.asarray(volume, np.float32), smoothing_mm / _voxel_sizes(affine))
    where = np.ones(magnitude.shape, bool) if head is None else np.asarray(head, bool)
    if not where.any():
        return np.zeros(magnitude.shape, bool)
    return (magnitude > np.percentile(magnitude[where], percentile)) & where


def write_transform(matrix: np.ndarray, path: str | Path) -> Path:
    """Write a world map (see module doc) as an ITK text transform (``.txt``)."""
    import nitransforms as nt

    path = Path(path)
    nt.linear.Affine(np.asarray(matrix, dtype=float)).to_filename(str(path), fmt="itk")
    return path


def read_transform(path: str | Path) -> np.ndarray:
    """The world map of an ITK transform file written by :func:`write_transform` (or ANTs)."""
    import nitransforms as nt

    return np.asarray(nt.linear.load(str(path), fmt="itk").matrix, dtype=float)
