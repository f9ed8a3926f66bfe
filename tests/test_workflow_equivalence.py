"""The BIDS-App's denoiser (Nipype nodes) and the library (``denoise_file``) are the same thing.

For the default and for each denoising option of the command line, the denoising workflow of
the app (:func:`~bids_auton2n.workflows.base.init_denoise_wf`, built with the options as the
app builds it) and :func:`~bids_auton2n.utils.io.denoise_file` must write the same bytes (image,
residual and their headers) and the same sidecar fields (timings: the same stages). Images are
small and generated here; the shipped experts run, so the CNN is not a no-op. Each case runs
on its own (the cases spread over pytest-xdist's workers).
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_auton2n.denoise.phantom import add_rician_noise, synthetic_head
from bids_auton2n.utils.io import denoise_file
from bids_auton2n.workflows.base import init_denoise_wf

#: Command-line option -> the denoising settings it stands for (tests/test_workflows.py
#: checks that the command line gives the workflow these settings).
VARIANTS = {
    "default": {},
    "--no-tta": {"tta": False},
    "--no-fusion": {"fusion": False},
    "--no-guard": {"guard": False},
    "--no-wiener": {"wiener": False},
    "--no-fusion --no-guard": {"fusion": False, "guard": False},
    "--expert 7": {"expert": 7.0},
    "--noise-level 4": {"noise_level": 4.0},
    "--blend-experts": {"blend": True},
    "--blend-experts --noise-level 4": {"blend": True, "noise_level": 4.0},
}
SHAPE = (32, 36, 32)


def _write(path: Path, data: np.ndarray, *, slope: float | None = None) -> Path:
    img = nb.Nifti1Image(data, np.diag([1.2, 1.1, 1.3, 1.0]))
    img.header.set_xyzt_units("mm")
    if slope is not None:
        img.header.set_slope_inter(slope, 0.0)
    img.to_filename(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A float32 T1w with NaN/Inf voxels and an int16 T2w with a scale factor, in BIDS folders."""
    bids = tmp_path_factory.mktemp("equivalence") / "bids"
    anat = bids / "sub-01" / "anat"
    anat.mkdir(parents=True)
    t1 = add_rician_noise(synthetic_head(SHAPE, "T1w", np.random.default_rng(0)), 5.0, 100.0, 1)
    t1[0, 0, :3] = [np.nan, np.inf, -np.inf]
    t2 = add_rician_noise(synthetic_head(SHAPE, "T2w", np.random.default_rng(1)), 3.0, 100.0, 2)
    return bids, {
        "T1w": _write(anat / "sub-01_T1w.nii.gz", t1),
        "T2w": _write(anat / "sub-01_T2w.nii.gz", np.round(2 * t2).astype(np.int16), slope=0.5),
    }


CASES = [("default", "T2w"), *((variant, "T1w") for variant in VARIANTS)]


@pytest.fixture(scope="module")
def one_torch_thread_module():
    """The nodes run in this process (Linear plugin) and set one thread; restored afterwards."""
    import numba
    import torch

    before = torch.get_num_threads(), numba.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    numba.set_num_threads(before[1])


@pytest.fixture(scope="module")
def default_output(images, tmp_path_factory, one_torch_thread_module):
    """The library's default output of the T1w image (the options must change it)."""
    out = tmp_path_factory.mktemp("default") / "denoised.nii.gz"
    denoise_file(images[1]["T1w"], out)
    return np.asanyarray(nb.load(out).dataobj)


def _run_both(variant: str, contrast: str, images, work: Path):
    """One case through the app's denoising workflow and through ``denoise_file``."""
    bids, files = images
    denoise_wf = init_denoise_wf(contrast=contrast, omp_nthreads=1, **VARIANTS[variant])
    denoise_wf.base_dir = str(work / "workflow")
    denoise_wf.inputs.inputnode.in_file = str(files[contrast])
    denoise_wf.inputs.inputnode.bids_dir = str(bids)
    nodes = {node.name: node for node in denoise_wf.run(plugin="Linear").nodes()}
    fused = nodes["rinlm_fusion"].result.outputs
    library = work / "library"
    library.mkdir()
    result = denoise_file(files[contrast], library / "denoised.nii.gz",
                          noise_map=library / "noise.nii.gz", **VARIANTS[variant])
    return ((Path(fused.out_file), Path(fused.noise_image), nodes["provenance"].result.outputs.metadata),
            (library / "denoised.nii.gz", library / "noise.nii.gz", result.provenance()))


def _same_bytes(a: Path, b: Path) -> None:
    first, second = nb.load(a), nb.load(b)
    assert first.header.binaryblock == second.header.binaryblock
    assert np.asanyarray(first.dataobj).tobytes() == np.asanyarray(second.dataobj).tobytes()


@pytest.mark.parametrize("variant, contrast", CASES)
def test_workflow_matches_pipeline(variant, contrast, images, default_output, tmp_path,
                                   one_torch_thread_module):
    """Same image, residual and headers, byte for byte; same sidecar fields."""
    workflow, library = _run_both(variant, contrast, images, tmp_path)
    _same_bytes(workflow[0], library[0])
    _same_bytes(workflow[1], library[1])
    sidecar, provenance = workflow[2], library[2]
    for key, value in provenance.items():
        if key == "TimingsSeconds":  # seconds differ, the stages timed may not
            assert list(sidecar[key]) == list(value)
        else:  # as written to the sidecar (NaN == NaN there)
            assert json.dumps(sidecar[key]) == json.dumps(value), key
    # what the BIDS-App adds to the record
    assert sidecar["Sources"] == [f"bids:raw:sub-01/anat/sub-01_{contrast}.nii.gz"]
    assert {"SkullStripped", "Description", "FineTuned", "SourceSHA256"} <= set(sidecar)
    # each option changes the image (the comparison is not of one image with itself)
    image = np.asanyarray(nb.load(library[0]).dataobj)
    if contrast == "T1w" and variant != "default":
        assert not np.array_equal(image, default_output, equal_nan=True)
    if contrast == "T1w":
        assert np.isnan(image[0, 0, 0]) and image[0, 0, 1] == np.inf and image[0, 0, 2] == -np.inf
