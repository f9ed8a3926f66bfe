"""Image files in and out: the file-level API around :mod:`bids_auton2n.denoise` (arrays only).

:func:`load_volume` refuses what cannot be denoised with a one-line :class:`InputImageError`;
:func:`save_like` writes an array with the header of its source; :func:`denoise_file` and
:func:`estimate_file_noise` are the file versions of :func:`~bids_auton2n.denoise.pipeline.denoise_array`
and :func:`~bids_auton2n.denoise.pipeline.estimate_array_noise` the single-image command uses.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from ..denoise.intensity import sanitize
from ..denoise.noise import NoiseEstimate, head_mask
from ..denoise.pipeline import DenoiseResult, denoise_array, estimate_array_noise
from .atomic import atomic_path
from .bids import contrast_from_filename
from .inputs import unreadable_reason

#: Fewest voxels along any axis of an image: the edge of the patches (3x3x3) of the pairs.
MIN_EDGE = 3


class InputImageError(ValueError):
    """An input image that cannot be denoised; the message names the file."""


def load_volume(path: str | Path) -> nib.Nifti1Image:
    """Load a 3D NIfTI image, refusing what cannot be denoised.

    A 4D image with a single volume is accepted as 3D.

    Parameters
    ----------
    path : str or Path
        NIfTI-1 or NIfTI-2 file.

    Returns
    -------
    nibabel.Nifti1Image
        The image (its data not read into memory beyond the checks).

    Raises
    ------
    InputImageError
        The message names the file: a missing or unreadable file (a broken link, a DataLad
        file whose content was not fetched are said so), a non-NIfTI file, a 2D or
        multi-volume 4D image, an image thinner than a patch (:data:`MIN_EDGE`), an image
        with no finite or no non-zero voxel.
    """
    path = Path(path)
    problem = unreadable_reason(path)
    if problem:
        raise InputImageError(problem)
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise InputImageError(f"{path}: not a readable NIfTI image ({exc})") from None
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputImageError(f"{path}: not a NIfTI image ({type(img).__name__})")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        img = img.slicer[..., 0]
    elif len(shape) == 4:
        raise InputImageError(
            f"{path}: 4D image with {shape[3]} volumes; select one first, e.g. "
            f"`python -c \"import nibabel as nb; nb.load('{path.name}').slicer[..., 0]"
            f".to_filename('vol0.nii.gz')\"`"
        )
    if len(img.shape) != 3 or min(img.shape) < 2:
        raise InputImageError(f"{path}: image of shape {shape} is not a 3D volume")
    if min(img.shape) < MIN_EDGE:
        raise InputImageError(
            f"{path}: image of shape {shape} is thinner than the {MIN_EDGE}x{MIN_EDGE}x{MIN_EDGE} "
            "patches the denoiser compares")
    try:
        data = np.asanyarray(img.dataobj)
    except Exception as exc:
        raise InputImageError(f"{path}: image data cannot be read ({exc})") from None
    finite = np.isfinite(data)
    if not finite.any():
        raise InputImageError(f"{path}: image has no finite voxel (all NaN/Inf)")
    if not np.any(data[finite]):
        raise InputImageError(f"{path}: image is all zeros")
    return img


#: What a written image keeps of its source (the methods text and ``--help`` quote it).
KEPT_FROM_SOURCE = ("voxel grid, affine (qform and sform with their codes), voxel sizes and "
                    "units of the source; data are stored as float32 (an integer source's "
                    "scaling applied), whatever the source's data type")


def save_like(data: np.ndarray, reference: nib.Nifti1Image, out_file: str | Path) -> None:
    """Write ``data`` as float32 with the reference's header (see :data:`KEPT_FROM_SOURCE`),
    atomically.

    Every field that describes the geometry (dim, pixdim with qfac, qform/sform codes, the
    quaternion, srow_*, units, slice timing fields) is kept bit for bit: the image is built
    without an affine, so nibabel does not recompute the quaternion from one. The file is
    written under a temporary name and renamed (:func:`~bids_auton2n.utils.atomic.atomic_path`),
    so a killed run or a full disk never leaves a partial image under ``out_file``.

    Parameters
    ----------
    data : ndarray
        Image of the reference's shape, in image units.
    reference : nibabel.Nifti1Image or nibabel.Nifti2Image
        The image whose header the output keeps (scaling set to 1, 0); a NIfTI-2 source
        gives a NIfTI-2 file.
    out_file : str or Path
        File to write.
    """
    header = reference.header.copy()
    header.set_data_dtype(np.float32)
    image_class = type(reference) if isinstance(reference, nib.Nifti2Image) else nib.Nifti1Image
    out = image_class(data.astype(np.float32, copy=False), None, header)
    out.header.set_slope_inter(1.0, 0.0)
    with atomic_path(out_file) as tmp:
        out.to_filename(str(tmp))


def read_volume(path: str | Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """:func:`load_volume` and its data in image units (NIfTI scaling applied), float32.

    Parameters
    ----------
    path : str or Path
        NIfTI file.
    """
    img = load_volume(path)
    return img, np.asarray(img.get_fdata(dtype=np.float32))


def read_inputs(in_file: str | Path, mask_file: str | Path | None = None
                ) -> tuple[nib.Nifti1Image, np.ndarray, np.ndarray | None]:
    """The image (:func:`read_volume`) and its mask file, if any, as a boolean array.

    Parameters
    ----------
    in_file : str or Path
        The image.
    mask_file : str or Path, optional
        A mask of the same shape (voxels > 0 are in it).
    """
    img, data = read_volume(in_file)
    mask = None
    if mask_file is not None:
        mask_img = load_volume(mask_file)
        if mask_img.shape != img.shape:
            raise InputImageError(
                f"{mask_file}: mask shape {mask_img.shape} differs from image shape {img.shape}")
        mask = np.asanyarray(mask_img.dataobj) > 0
    return img, data, mask


def estimate_file_noise(in_file: str | Path, *, contrast: str | None = None,
                        mask_file: str | Path | None = None) -> NoiseEstimate:
    """Noise estimate of a NIfTI file (see :func:`estimate_array_noise`).

    Parameters
    ----------
    in_file : str or Path
        The image.
    contrast : {"T1w", "T2w", "FLAIR", "PDw"}, optional
        Default: the file's BIDS suffix, else T1w.
    mask_file : str or Path, optional
        Head mask (default: estimated).

    Returns
    -------
    NoiseEstimate
    """
    _, data, mask = read_inputs(in_file, mask_file)
    finite, _ = sanitize(data)
    if mask is None:
        mask = head_mask(finite)
    return estimate_array_noise(finite, contrast=contrast or contrast_from_filename(in_file),
                                mask=mask)


def denoise_file(
    in_file: str | Path,
    out_file: str | Path,
    *,
    contrast: str | None = None,
    mask_file: str | Path | None = None,
    noise_map: str | Path | None = None,
    **kwargs,
) -> DenoiseResult:
    """Denoise a NIfTI file and write the result (and optionally input − output).

    Parameters
    ----------
    in_file : str or Path
        The noisy image (checked by :func:`load_volume`).
    out_file : str or Path
        Denoised image to write (float32, the input's header and affine).
    contrast : {"T1w", "T2w", "FLAIR", "PDw"}, optional
        Default: the file's BIDS suffix, else T1w.
    mask_file : str or Path, optional
        Head mask (default: estimated).
    noise_map : str or Path, optional
        Also write the residual, input − output (0 at non-finite voxels).
    **kwargs
        The options of :func:`~bids_auton2n.denoise.pipeline.denoise_array`.

    Returns
    -------
    DenoiseResult
    """
    img, data, mask = read_inputs(in_file, mask_file)
    result = denoise_array(data, contrast=contrast or contrast_from_filename(in_file),
                           mask=mask, **kwargs)
    save_like(result.denoised, img, out_file)
    if noise_map is not None:
        with np.errstate(invalid="ignore"):  # inf - inf at restored voxels: 0 in the residual
            save_like(np.nan_to_num(data - result.denoised), img, noise_map)
    return result
