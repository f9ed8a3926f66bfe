"""Bad inputs: each fails alone with one line naming the file; the other images are denoised.

One participant-level run over a generated dataset whose runs are each broken in one way
(truncated gzip, 2D, smaller than a patch, annexed without content, annex pointer file,
malformed sidecar) next to good images stored the awkward ways scanners store them
(int16/uint8 with scl_slope/scl_inter, oblique and non-RAS affines, anisotropic voxels,
qform and sform differing, no sidecar). The CLI-level cases (labels, filter files,
output folders, a malformed dataset_description.json) run no workflow.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numpy as np
import pytest

from bids_auton2n.cli.demo import make_demo_dataset
from bids_auton2n.cli.run import main

#: Header fields that describe the geometry of a NIfTI image: the derivative keeps them.
GEOMETRY_FIELDS = ("dim", "pixdim", "qform_code", "sform_code", "quatern_b", "quatern_c",
                   "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "srow_x", "srow_y",
                   "srow_z", "xyzt_units", "dim_info", "slice_start", "slice_end",
                   "slice_code", "slice_duration", "toffset")


def _oblique_affine(zooms, angles_deg, flip=(1, 1, 1)):
    """Rotation about the three axes times anisotropic zooms, with axis flips (non-RAS)."""
    rotation = np.eye(3)
    for axis, angle in enumerate(np.radians(angles_deg)):
        c, s = np.cos(angle), np.sin(angle)
        plane = [a for a in range(3) if a != axis]
        step = np.eye(3)
        step[np.ix_(plane, plane)] = [[c, -s], [s, c]]
        rotation = rotation @ step
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(np.asarray(zooms) * np.asarray(flip))
    affine[:3, 3] = [31.5, -12.25, 40.0]
    return affine


def _store(path, data, affine, dtype, slope, inter, *, qform_code=1, sform_code=2):
    """Write ``data`` (image units) as ``dtype`` with NIfTI scaling and distinct q/s forms."""
    header = nb.Nifti1Header()
    header.set_data_dtype(dtype)
    stored = nb.Nifti1Image(np.round((data - inter) / slope).astype(dtype), None, header)
    sform = affine.copy()
    sform[:3, 3] += [0.5, -0.25, 0.125]  # qform and sform differ: both must survive
    stored.header.set_qform(affine, code=qform_code)
    stored.header.set_sform(sform, code=sform_code)
    stored.header.set_xyzt_units("mm", "sec")
    stored.header.set_dim_info(freq=1, phase=0, slice=2)
    stored.header["slice_code"] = 3
    stored.header["slice_end"] = data.shape[2] - 1
    stored.header["slice_duration"] = 0.0625
    stored.header.set_slope_inter(slope, inter)
    stored.to_filename(str(path))


#: run -> (what is wrong with it, the text its one-line error must contain)
BROKEN = {
    3: ("truncated gzip", "image data cannot be read"),
    4: ("2D image", "is not a 3D volume"),
    5: ("5x5x5, too small to estimate the noise", "the noise cannot be estimated"),
    6: ("two slices, thinner than a patch", "thinner than the 3x3x3 patches"),
    7: ("annexed, content not fetched (broken link)", "datalad get"),
    8: ("annexed, unlocked pointer file", "datalad get"),
    9: ("malformed JSON sidecar", "not valid JSON"),
}


@pytest.fixture(scope="module")
def bad_run(tmp_path_factory, test_experts_dir):
    base = tmp_path_factory.mktemp("bad-inputs")
    bids = make_demo_dataset(base / "bids", images=[
        ("01", None, str(run), "T1w", 3.0) for run in range(1, 10)])
    anat = bids / "sub-01" / "anat"

    def image(run):
        return anat / f"sub-01_run-{run}_T1w.nii.gz"

    clean = nb.load(image(1)).get_fdata(dtype=np.float32)
    _store(image(1), clean, _oblique_affine((0.9, 1.2, 2.5), (12, -7, 21), (-1, 1, 1)),
           np.int16, 0.5, 10.0)
    _store(image(2), clean, _oblique_affine((1.1, 0.7, 1.6), (0, 0, 90), (-1, -1, 1)),
           np.uint8, 0.5, -5.0, qform_code=2, sform_code=4)
    image(1).with_suffix("").with_suffix(".json").unlink()  # missing sidecar: fine
    raw = image(3).read_bytes()
    image(3).write_bytes(raw[: len(raw) // 2])
    nb.Nifti1Image(clean[:, :, 20], np.eye(4)).to_filename(image(4))
    nb.Nifti1Image(clean[18:23, 20:25, 18:23], np.eye(4)).to_filename(image(5))
    nb.Nifti1Image(clean[:, :, 19:21], np.eye(4)).to_filename(image(6))
    image(7).unlink()
    image(7).symlink_to("../../.git/annex/objects/Gx/9F/MD5E-s123--0f.nii.gz/MD5E-s123--0f.nii.gz")
    image(8).write_text("/annex/objects/MD5E-s1234--0123456789abcdef0123456789abcdef.nii.gz\n")
    (anat / "sub-01_run-9_T1w.json").write_text('{"RepetitionTime": 2.3,')
    sources = {run: image(run) for run in range(1, 10)}
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest()
               for p in bids.rglob("*") if p.is_file() and not p.is_symlink()}
    out, work = base / "out", base / "work"
    done = subprocess.run(
        [sys.executable, "-m", "bids_auton2n.cli.run", bids, out, "participant", "-w", work,
         "--experts-dir", test_experts_dir, "--nprocs", "2", "--omp-nthreads", "1",
         "--no-tta", "--no-fusion", "--no-wiener",
         "--repeats", "off",  # unrelated images, not repeats of one
         "--pair-source", "synthetic-patches"],  # run 1's anisotropy: no NS-N2N fine-tuning
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return {"bids": bids, "out": out, "work": work, "sources": sources, "done": done,
            "digests": digests}


def test_each_bad_image_fails_alone_with_one_line(bad_run):
    done = bad_run["done"]
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    failed = [line for line in done.stderr.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == len(BROKEN), done.stderr
    for run, (what, needle) in BROKEN.items():
        name = bad_run["sources"][run].name
        lines = [line for line in failed if f"{name}:" in line]
        assert len(lines) == 1 and needle in lines[0], (what, lines)
    assert f"Denoised 2 of {2 + len(BROKEN)} image(s)" in done.stdout
    status = json.loads(next((bad_run["out"] / "logs").glob("status_*.json")).read_text())
    assert {Path(r["source"]).name: r["status"] for r in status} == {
        path.name: "success" if run in (1, 2) else "failed"
        for run, path in bad_run["sources"].items()}
    report = (bad_run["out"] / "sub-01.html").read_text()
    assert all(bad_run["sources"][run].name in report for run in BROKEN)


def test_input_dataset_untouched(bad_run):
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest()
               for p in bad_run["bids"].rglob("*") if p.is_file() and not p.is_symlink()}
    assert digests == bad_run["digests"]


@pytest.mark.parametrize("run", [1, 2])
def test_scaled_oblique_inputs_keep_geometry_and_units(bad_run, run):
    """int16/uint8 with scl_slope/scl_inter, oblique non-RAS anisotropic, qform != sform:
    every geometry field of the header is the source's, values are in scaled units."""
    source = nb.load(bad_run["sources"][run])
    derivative = nb.load(bad_run["out"] / "sub-01" / "anat" /
                         f"sub-01_run-{run}_desc-denoised_T1w.nii.gz")
    for field in GEOMETRY_FIELDS:
        assert derivative.header[field].tobytes() == source.header[field].tobytes(), field
    # identity experts, no fusion: the output is the input in image (scaled) units, to the
    # float32 rounding of the division by the reference intensity and back, where the
    # signal is well above the noise (below, the Rician bias correction lowers it)
    scaled = source.get_fdata(dtype=np.float32)
    bright = scaled > 0.5 * scaled.max()
    np.testing.assert_allclose(derivative.get_fdata(dtype=np.float32)[bright], scaled[bright],
                               rtol=1e-6)
    assert not np.allclose(np.asanyarray(source.dataobj.get_unscaled()), scaled)
    assert derivative.get_data_dtype() == np.float32
    sidecar = json.loads(Path(derivative.get_filename().replace(".nii.gz", ".json")).read_text())
    assert sidecar["Sources"] == [f"bids:raw:sub-01/anat/{bad_run['sources'][run].name}"]
    assert ("RepetitionTime" in sidecar) == (run == 2)  # run 1 has no sidecar


def test_group_reports_a_bad_status_file_and_goes_on(bad_run, tmp_path):
    out = shutil.copytree(bad_run["out"], tmp_path / "out")
    corrupt = out / "logs" / "status_19990101-000000_truncated.json"
    corrupt.write_text('[{"source": "sub-01/anat/sub-01_run-1_T1w.nii.gz", "subj')
    done = subprocess.run([sys.executable, "-m", "bids_auton2n.cli.run", bad_run["bids"], out,
                           "group", "-w", tmp_path / "work"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert done.returncode == 1, done.stdout[-3000:]  # images failed at the participant level
    warnings = [line for line in done.stdout.splitlines() if str(corrupt) in line]
    assert len(warnings) == 1 and "unreadable status file skipped" in warnings[0]
    table = (out / "group_denoising.tsv").read_text().splitlines()
    assert len(table) == 1 + 2 + len(BROKEN)


# ---- the command line: no workflow runs --------------------------------------------------

def _run(*args):
    return main([str(a) for a in args])


@pytest.mark.parametrize("label", ["../01", "0 1", "01/..", "é1", "", "sub-"])
def test_invalid_participant_label_is_usage_error(tiny_bids, tmp_path, capsys, label):
    assert _run(tiny_bids, tmp_path / "out", "participant", "--participant-label", label) == 64
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"invalid participant label {label.removeprefix('sub-')!r}" in err[0]
    assert not (tmp_path / "out").exists()


def test_invalid_session_label_is_usage_error(tiny_bids, tmp_path, capsys):
    assert _run(tiny_bids, tmp_path / "out", "participant", "--session-label", "ses-1 2") == 64
    assert "invalid session label '1 2'" in capsys.readouterr().err


@pytest.mark.parametrize("content, needle", [
    ({"acqusition": "mprage"}, "unknown BIDS entity 'acqusition'"),
    ({"t1w": {"run": {"$gt": 1}}}, "filter 'run' must be"),
    ({"session": [["1"]]}, "filter 'session' must be"),
    ([{"run": 1}], "must hold a JSON object"),
])
def test_invalid_filter_file_is_usage_error(tiny_bids, tmp_path, capsys, content, needle):
    filters = tmp_path / "filters.json"
    filters.write_text(json.dumps(content))
    assert _run(tiny_bids, tmp_path / "out", "participant", "--bids-filter-file", filters) == 64
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(filters) in err[0] and needle in err[0]


def test_filter_file_not_utf8(tiny_bids, tmp_path, capsys):
    filters = tmp_path / "filters.json"
    filters.write_bytes(b"\xff\xfe{")
    assert _run(tiny_bids, tmp_path / "out", "participant", "--bids-filter-file", filters) == 64
    assert "not valid JSON" in capsys.readouterr().err


@pytest.fixture
def bids_copy(tiny_bids, tmp_path):
    return shutil.copytree(tiny_bids, tmp_path / "bids")


@pytest.mark.parametrize("where", ["input itself", "inside", "inside via a symlink",
                                   "work dir inside"])
def test_output_in_the_input_dataset_is_refused(bids_copy, tmp_path, capsys, where):
    before = sorted(p.name for p in bids_copy.rglob("*"))
    out, work = tmp_path / "out", tmp_path / "work"
    if where == "input itself":
        out = bids_copy
    elif where == "inside":
        out = bids_copy / "sub-01" / "out"
    elif where == "inside via a symlink":
        (tmp_path / "link").symlink_to(bids_copy / "sub-01")
        out = tmp_path / "link" / "out"
    else:
        work = bids_copy / "work"
    assert _run(bids_copy, out, "participant", "-w", work) == 64
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "inside the input dataset" in err[0]
    assert sorted(p.name for p in bids_copy.rglob("*")) == before


def test_malformed_dataset_description(bids_copy, tmp_path, capsys):
    (bids_copy / "dataset_description.json").write_text('{"Name": "x",,}')
    assert _run(bids_copy, tmp_path / "out", "participant") == 16
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "dataset_description.json: not valid JSON" in err[0]


# ---- full disk ----------------------------------------------------------------------------

def test_full_disk_in_the_data_sink_leaves_no_partial_derivative(tmp_path, monkeypatch):
    """The sink writes half a file, then the disk is full: nothing under the final name,
    the previous version (if any) intact, no staging leftovers, the error names the source."""
    import niworkflows.interfaces.bids as niworkflows_bids

    from bids_auton2n.interfaces.bids import DerivativesDataSink

    source = tmp_path / "bids" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    source.parent.mkdir(parents=True)
    nb.Nifti1Image(np.ones((8, 8, 8), np.float32), np.eye(4)).to_filename(source)
    out = tmp_path / "out"
    final = out / "sub-01" / "anat" / "sub-01_desc-denoised_T1w.nii.gz"
    final.parent.mkdir(parents=True)
    final.write_bytes(b"previous version")

    def copy_until_full(src, dst, *args, **kwargs):
        with open(dst, "wb") as stream:
            stream.write(Path(src).read_bytes()[:100])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(niworkflows_bids, "_copy_any", copy_until_full)
    sink = DerivativesDataSink(base_directory=str(out), desc="denoised", compress=True,
                               check_hdr=False, source_file=str(source), in_file=str(source))
    (tmp_path / "node").mkdir()
    with pytest.raises(OSError, match="No space left on device: cannot write the derivatives "
                                      "of sub-01_T1w.nii.gz into"):
        sink.run(cwd=str(tmp_path / "node"))
    assert final.read_bytes() == b"previous version"
    assert sorted(p.name for p in out.rglob("*")) == ["anat", "sub-01",
                                                       "sub-01_desc-denoised_T1w.nii.gz"]


def _mount_tmpfs(folder: Path, size_kib: int) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs",
                           str(folder)], capture_output=True).returncode == 0


def test_full_disk_for_real_leaves_no_partial_image(tmp_path, test_experts_dir):
    """``bids_auton2n-denoise`` onto a 256 KiB tmpfs: one-line error naming the output,
    exit 73, no file under the output's name (needs root to mount; skipped otherwise)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _mount_tmpfs(disk, 256):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        rng = np.random.default_rng(0)
        noisy = tmp_path / "sub-01_T1w.nii.gz"  # noise compresses badly: ~0.5 MiB of output
        nb.Nifti1Image(rng.normal(100, 10, (48, 48, 48)).astype(np.float32),
                       np.eye(4)).to_filename(noisy)
        out = disk / "sub-01_desc-denoised_T1w.nii.gz"
        done = subprocess.run(
            [sys.executable, "-m", "bids_auton2n.cli.denoise", noisy, out, "--experts-dir",
             test_experts_dir, "--no-tta", "--no-fusion", "--noise-level", "3", "-q"],
            capture_output=True, text=True)
        assert done.returncode == 73, done.stderr[-2000:]
        err = done.stderr.strip().splitlines()
        assert len(err) == 1 and str(out) in err[0] and "No space left" in err[0]
        assert list(disk.iterdir()) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)


# ---- unreadable files, as the denoise command meets them ----------------------------------

@pytest.mark.parametrize("kind, needle", [
    ("broken link", "broken symbolic link (to "),
    ("annexed link", "datalad get"),
    ("annex pointer", "datalad get"),
    ("truncated gzip", "image data cannot be read"),
    ("thin", "thinner than the 3x3x3 patches"),
])
def test_denoise_command_names_the_unreadable_file(tmp_path, capsys, kind, needle):
    from bids_auton2n.cli.denoise import run

    path = tmp_path / "sub-01_T1w.nii.gz"
    if kind == "broken link":
        path.symlink_to(tmp_path / "gone.nii.gz")
    elif kind == "annexed link":
        path.symlink_to(".git/annex/objects/Gx/9F/MD5E-s1--0f.nii.gz/MD5E-s1--0f.nii.gz")
    elif kind == "annex pointer":
        path.write_text("/annex/objects/MD5E-s1--0f.nii.gz\n")
    elif kind == "truncated gzip":
        nb.Nifti1Image(np.random.default_rng(0).random((20, 20, 20), np.float32),
                       np.eye(4)).to_filename(path)
        path.write_bytes(path.read_bytes()[:3000])
    else:
        nb.Nifti1Image(np.ones((20, 20, 2), np.float32), np.eye(4)).to_filename(path)
    assert run([str(path), str(tmp_path / "out.nii.gz")]) in (65, 66)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(path) in err[0] and needle in err[0]
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_bad_run_of_a_repeat_group_is_refused_alone(tmp_path):
    """The runs of a group are denoised by one node: a run whose data cannot be denoised is
    refused before the workflow, so the others still form their group."""
    from bids_auton2n.cli.run import _screen_repeat_runs

    anat = tmp_path / "bids" / "sub-01" / "anat"
    anat.mkdir(parents=True)
    rng = np.random.default_rng(0)
    runs = [str(anat / f"sub-01_run-{run}_T1w.nii.gz") for run in (1, 2, 3)]
    for run in runs[:2]:
        nb.Nifti1Image(rng.random((12, 12, 12), dtype=np.float32), np.eye(4)).to_filename(run)
    nb.Nifti1Image(rng.random((12, 12), dtype=np.float32), np.eye(4)).to_filename(runs[2])
    subjects = {"01": runs}
    refused = _screen_repeat_runs(subjects, {}, repeats="auto", across_sessions=False)
    assert list(refused) == [runs[2]]
    assert refused[runs[2]].startswith("InputImageError: ") and "not a 3D volume" in refused[runs[2]]
    assert _screen_repeat_runs(subjects, {}, repeats="off", across_sessions=False) == {}
