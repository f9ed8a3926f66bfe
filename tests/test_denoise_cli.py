"""The single-image command: bad input gives a one-line error naming the file; good input
keeps the header, writes the sidecar and leaves the input untouched."""

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest

from bids_auton2n.cli.denoise import run


def _phantom(shape=(36, 40, 34), percent=4.0, seed=0):
    """Nested ellipsoids: background 0, 'CSF' 0.3, 'GM' 0.65, 'WM' 1.0, Rician noise."""
    grid = np.indices(shape, dtype=np.float32)
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    radius = np.sqrt(sum(((g - c) / (s * 0.42)) ** 2 for g, c, s in zip(grid, centre, shape)))
    clean = np.select([radius < 0.55, radius < 0.8, radius < 1.0], [1.0, 0.65, 0.3], 0.0)
    rng = np.random.default_rng(seed)
    sigma = percent / 100.0
    noisy = np.hypot(clean + rng.normal(0, sigma, shape), rng.normal(0, sigma, shape))
    return (100 * noisy).astype(np.float32)


def _save(path, data, zooms=(1.0, 1.1, 1.2)):
    affine = np.diag([*zooms, 1.0])
    affine[:3, 3] = [-20, -22, -18]
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=4)
    img.to_filename(str(path))
    return path


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("kind, code, needle", [
    ("missing", 66, "no such file"),
    ("text", 65, "not a readable NIfTI"),
    ("2d", 65, "not a 3D volume"),
    ("4d", 65, "select one"),
    ("zeros", 65, "all zeros"),
    ("nan", 65, "no finite voxel"),
])
def test_bad_input_one_line_error(tmp_path, capsys, kind, code, needle):
    path = tmp_path / f"sub-01_{kind}_T1w.nii.gz"
    if kind == "text":
        path.write_text("not an image")
    elif kind == "2d":
        _save(path, np.ones((20, 20), np.float32))
    elif kind == "4d":
        _save(path, np.ones((10, 10, 10, 3), np.float32))
    elif kind == "zeros":
        _save(path, np.zeros((10, 10, 10), np.float32))
    elif kind == "nan":
        _save(path, np.full((10, 10, 10), np.nan, np.float32))
    before = _digest(path) if path.exists() else None
    assert run([str(path), str(tmp_path / "out.nii.gz")]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and path.name in err[0] and needle in err[0]
    assert not (tmp_path / "out.nii.gz").exists()
    if before is not None:
        assert _digest(path) == before


def test_usage_error_exit_code(tmp_path):
    with pytest.raises(SystemExit) as exc:
        run([str(tmp_path / "in.nii.gz")])
    assert exc.value.code == 64


def test_estimate_only_reports_both_units(tmp_path, capsys):
    path = _save(tmp_path / "img_T1w.nii.gz", _phantom(percent=5.0))
    assert run([str(path), "--estimate-only", "-q"]) == 0
    record = json.loads(capsys.readouterr().out)
    noise = record["NoiseEstimate"]
    assert record["Contrast"] == "T1w"
    assert noise["Percent"] == pytest.approx(100 * noise["Sigma"] / noise["ReferenceIntensity"])
    assert 2.0 < noise["Percent"] < 8.0


def test_denoise_keeps_header_and_input(tmp_path):
    path = _save(tmp_path / "img_T1w.nii.gz", _phantom(percent=5.0))
    before = _digest(path)
    out, sidecar, noise_map = (tmp_path / n for n in ("den.nii.gz", "den.json", "noise.nii.gz"))
    assert run([str(path), str(out), "--sidecar", str(sidecar), "--noise-map", str(noise_map),
                "--no-tta", "-q", "--device", "cpu"]) == 0
    assert _digest(path) == before
    src, den = nib.load(str(path)), nib.load(str(out))
    np.testing.assert_allclose(den.affine, src.affine)
    assert den.header.get_zooms() == src.header.get_zooms()
    assert int(den.header["qform_code"]) == 1 and int(den.header["sform_code"]) == 4
    noisy, clean_est = src.get_fdata(), den.get_fdata()
    np.testing.assert_allclose(nib.load(str(noise_map)).get_fdata(), noisy - clean_est, atol=1e-3)
    record = json.loads(sidecar.read_text())
    assert record["TestTimeAugmentation"] is False and record["RINLMFusion"] is True
    assert record["Experts"] and len(record["Experts"][0]["SHA256"]) == 64
    assert {"Sigma", "Percent"} <= set(record["NoiseEstimate"])
    assert record["TimingsSeconds"]["total"] > 0


def test_unwritable_output_is_a_clear_error(tmp_path, capsys):
    path = _save(tmp_path / "img_T1w.nii.gz", _phantom())
    out = tmp_path / "missing" / "out.nii.gz"
    assert run([str(path), str(out), "-q"]) == 73
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "out.nii.gz" in err[0] and "does not exist" in err[0]
    assert not out.exists()
