"""What the written outputs hold: the output's last step, the derivative description and
the methods text (the end-to-end run checks the same on the real app)."""

from __future__ import annotations

import json

import nibabel as nb
import numpy as np

from bids_auton2n.denoise.pipeline import noise_sidecar, output_image
from bids_auton2n.utils.io import KEPT_FROM_SOURCE, denoise_file
from bids_auton2n.denoise.noise import NoiseEstimate
from bids_auton2n.reports.boilerplate import write_boilerplate
from bids_auton2n.utils.bids import write_derivative_description
from bids_auton2n.workflows.base import init_denoise_wf


def test_output_of_a_magnitude_image_has_no_negative_voxel():
    original = np.array([[[0.0, 1.0], [np.nan, 2.0]]], dtype=np.float32)
    denoised = np.array([[[-0.5, 1.2], [7.0, -0.1]]], dtype=np.float32)
    out = output_image(denoised, original, ~np.isfinite(original))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, np.array([[[0.0, 1.2], [np.nan, 0.0]]], np.float32))


def test_output_of_a_signed_image_keeps_its_negative_values():
    original = np.array([[[-1.0, 1.0], [0.0, 2.0]]], dtype=np.float32)
    denoised = np.array([[[-0.5, 1.2], [-0.2, 1.9]]], dtype=np.float32)
    out = output_image(denoised, original, np.zeros(original.shape, bool))
    np.testing.assert_array_equal(out, denoised)


def test_int16_input_is_written_as_float32_with_its_grid(tmp_path, test_experts_dir):
    from bids_auton2n.denoise.experts import ExpertRegistry

    rng = np.random.default_rng(0)
    data = np.zeros((24, 26, 22), np.int16)
    data[4:20, 5:21, 4:18] = 100
    data = np.clip(data + rng.normal(0, 4, data.shape), 0, None).astype(np.int16)
    affine = np.diag([1.1, 1.2, 1.3, 1.0])
    src = nb.Nifti1Image(data, affine)
    src.header.set_xyzt_units("mm", "sec")
    src.set_sform(affine, code=4)
    src.to_filename(tmp_path / "in_T1w.nii.gz")
    denoise_file(tmp_path / "in_T1w.nii.gz", tmp_path / "out.nii.gz", tta=False,
                 registry=ExpertRegistry(test_experts_dir), device="cpu")
    out = nb.load(tmp_path / "out.nii.gz")
    assert out.get_data_dtype() == np.float32
    assert out.header.get_xyzt_units() == ("mm", "sec")
    assert out.header.get_zooms() == src.header.get_zooms()
    np.testing.assert_allclose(out.affine, affine)
    assert int(out.header["sform_code"]) == 4
    assert out.get_fdata().min() >= 0
    assert "float32" in KEPT_FROM_SOURCE


def test_methods_text_says_what_is_kept_and_clipped(tmp_path):
    text = write_boilerplate(tmp_path, init_denoise_wf(contrast="T1w")).read_text()
    assert KEPT_FROM_SOURCE in text
    assert "negative output values are set to 0" in text
    assert "header of their source" not in text


def test_noise_sidecar_keys_are_camel_case():
    noise = NoiseEstimate(sigma=2.0, percent=2.0, reference_tissue="WM",
                          reference_intensity=100.0, raw_std=2.5, n_voxels=10)
    record = noise_sidecar(noise, "estimated")
    assert record["Sigma"] == 2.0 and record["ReferenceTissue"] == "WM"
    assert record["NumberOfVoxels"] == 10 and record["Source"] == "estimated"
    assert all(key[0].isupper() and "_" not in key for key in record)


def test_derivative_description_holds_no_machine_path(tmp_path):
    bids, out = tmp_path / "data" / "raw", tmp_path / "derivatives" / "auton2n"
    bids.mkdir(parents=True)
    (bids / "dataset_description.json").write_text(json.dumps(
        {"Name": "x", "BIDSVersion": "1.9.0", "DatasetDOI": "doi:10.1/x",
         "DatasetVersion": "2"}))
    text = write_derivative_description(bids, out).read_text()
    assert "file:" not in text and str(tmp_path) not in text
    description = json.loads(text)
    assert description["DatasetLinks"] == {"raw": "../../data/raw"}
    assert (out / description["DatasetLinks"]["raw"]).resolve() == bids.resolve()
    assert description["SourceDatasets"] == [{"URL": "bids:raw:", "DOI": "doi:10.1/x",
                                              "Version": "2"}]
