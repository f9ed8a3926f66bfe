"""End-to-end: the real app (Nipype MultiProc, pybids, torch) on the tiny generated dataset.

The main run uses the experts shipped with the package, as users get them; the failure test
uses the identity experts of the ``test_experts_dir`` fixture through ``--experts-dir``.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nb
import numba
import numpy as np
import pandas as pd
import pytest
import torch

from bids_auton2n import __version__
from bids_auton2n.cli.demo import DEMO_IMAGES
from bids_auton2n.cli.run import main
from bids_auton2n.denoise.experts import default_root
from bids_auton2n.denoise.wiener import PASS_STEPS
from bids_auton2n.reports.iqms import STRUCTURE_REMOVED_FLAG
from bids_auton2n.utils.threads import set_threads

SOURCES = (
    "sub-01/ses-1/anat/sub-01_ses-1_run-1_T1w.nii.gz",
    "sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz",
    "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz",
    "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
    "sub-02/ses-2/anat/sub-02_ses-2_T2w.nii.gz",
)
#: The two runs of sub-01's T1w are repeats of one image (``--repeats auto``, the default).
REPEATS = SOURCES[:2]
COMBINED = "sub-01/ses-1/anat/sub-01_ses-1_desc-denoised_T1w"
TRANSFORMS = tuple(s.replace("_T1w.nii.gz", "_from-orig_to-T1w_mode-image_xfm.txt") for s in REPEATS)
#: Fine-tuning of the repeats bounded by steps (the same on any machine): the plumbing, not
#: the gain, is tested here.
REPEATS_BUDGET = ["--repeats-budget", "3600", "--repeats-steps", "3"]


def _listing(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.fixture(scope="module")
def app_run(tiny_bids, tmp_path_factory):
    """Participant then group level, as a user would run them: each in its own process, its
    terminal output (stdout and stderr, workers' included) kept."""
    base = tmp_path_factory.mktemp("e2e")
    out, work = base / "out", base / "work"
    before = _listing(tiny_bids)
    common = [str(tiny_bids), str(out)]
    opts = ["-w", str(work), "--nprocs", "2", "--omp-nthreads", "1", *REPEATS_BUDGET]
    participant, group = (
        subprocess.run([sys.executable, "-m", "bids_auton2n.cli.run", *common, *args, *opts],
                       cwd=base, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for args in (["participant", "--write-noise-map"], ["group"]))
    return {"bids": tiny_bids, "out": out, "work": work, "code": participant.returncode,
            "group_code": group.returncode, "participant_output": participant.stdout,
            "group_output": group.stdout, "before": before, "opts": opts,
            "experts": default_root()}


def test_exit_codes_and_input_untouched(app_run):
    assert app_run["code"] == 0, app_run["participant_output"][-3000:]
    assert app_run["group_code"] == 0, app_run["group_output"][-3000:]
    assert _listing(app_run["bids"]) == app_run["before"]


def test_default_run_prints_no_nipype_node_chatter(app_run):
    """Without -v Nipype's worker processes stay quiet; the app's own lines remain."""
    printed = app_run["participant_output"] + app_run["group_output"]
    assert "[Node]" not in printed
    assert "nipype.workflow INFO" not in printed
    out = app_run["out"]
    assert (f"Denoised {len(SOURCES)} of {len(SOURCES)} image(s); reports in "
            f"{out}/sub-<label>.html") in app_run["participant_output"]
    assert f"Group report: {out / 'group_denoising.html'}" in app_run["group_output"]


def test_participant_level_shows_progress(app_run):
    """Images done / total, the running ones and the elapsed time, from the start."""
    lines = app_run["participant_output"].splitlines()
    progress = [(line, re.match(r"\[(\d+):(\d\d):(\d\d)\] (\d+)/5 images denoised", line))
                for line in lines]
    progress = [(line, m) for line, m in progress if m]
    assert progress, app_run["participant_output"][-3000:]
    assert progress[0][0] == "[0:00:00] 0/5 images denoised"
    assert lines[0].startswith("bids_auton2n: participant level")  # at once
    assert lines.index(progress[0][0]) <= 2  # nothing long before it
    done = [int(m[4]) for _, m in progress]
    seconds = [3600 * int(m[1]) + 60 * int(m[2]) + int(m[3]) for _, m in progress]
    assert done == sorted(done) and done[-1] == 5 and seconds == sorted(seconds)
    assert any("running: sub-01_ses-1_T2w (CNN experts" in line for line, _ in progress)


def test_derivative_names_and_headers(app_run):
    out, bids = app_run["out"], app_run["bids"]
    for source in SOURCES:
        stem, suffix = source.split(".")[0].rsplit("_", 1)
        # --write-noise-map: the residual of every image, the local noise map of those of the
        # single-image path (a repeat group's runs are denoised with one noise level each)
        for desc, expected in (("denoised", True), ("residual", True),
                               ("noise", source not in REPEATS)):
            derivative = out / f"{stem}_desc-{desc}_{suffix}.nii.gz"
            assert derivative.is_file() == expected, derivative
        src = nb.load(bids / source)
        den = nb.load(out / f"{stem}_desc-denoised_{suffix}.nii.gz")
        assert den.shape == src.shape
        np.testing.assert_allclose(den.affine, src.affine)
        assert int(den.header["sform_code"]) == int(src.header["sform_code"])
        assert src.get_data_dtype() == np.int16 and den.get_data_dtype() == np.float32
        assert den.header.get_xyzt_units() == src.header.get_xyzt_units()
        data = den.get_fdata()
        assert np.isfinite(data).all() and data.std() > 0
        assert data.min() >= 0  # magnitude in, magnitude out


def test_sidecars(app_run):
    out = app_run["out"]
    manifest = json.loads((app_run["experts"] / "manifest.json").read_text())
    hashes = {float(e["level"]): e["sha256"] for e in manifest["experts"]}
    for source in SOURCES:
        stem, suffix = source.split(".")[0].rsplit("_", 1)
        meta = json.loads((out / f"{stem}_desc-denoised_{suffix}.json").read_text())
        if source in REPEATS:  # fine-tuned on both runs: both, and their transforms
            assert meta["Sources"] == [f"bids:raw:{source}"] + [
                f"bids:raw:{other}" for other in REPEATS if other != source] + [
                f"bids::{t}" for t in TRANSFORMS]
            assert meta["PairSource"] == "repeats"
        else:
            assert meta["Sources"] == [f"bids:raw:{source}"]
            assert "Repeats" not in meta
        assert meta["SkullStripped"] is False
        noise = meta["NoiseEstimate"]
        assert all(re.fullmatch(r"(?:[A-Z][a-z0-9]*)+", key) for key in noise), noise
        assert noise["Sigma"] > 0 and noise["Percent"] > 0
        assert noise["Percent"] == pytest.approx(100 * noise["Sigma"] / noise["ReferenceIntensity"])
        assert noise["Source"] == "estimated"
        assert meta["Experts"] and all(e["SHA256"] == hashes[e["NoiseLevelPercent"]]
                                       for e in meta["Experts"])
        assert meta["TestTimeAugmentation"] is True and meta["RINLMFusion"] is True
        assert meta["CollaborativeWiener"]["PassSteps"] == list(PASS_STEPS)
        assert meta["FineTuned"] is False
        assert meta["SoftwareVersion"] == __version__
        assert meta["TimingsSeconds"]["total"] > 0
        assert re.fullmatch(r"[0-9a-f]{64}", meta["SourceSHA256"])
        # the source's own sidecar metadata is carried forward
        assert meta["RepetitionTime"] == (2.3 if suffix == "T1w" else 3.2)
    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Version"] == __version__
    text = (out / "dataset_description.json").read_text()
    assert "file:" not in text and str(app_run["bids"]) not in text  # no machine paths
    assert (out / description["DatasetLinks"]["raw"]).resolve() == app_run["bids"].resolve()
    assert description["SourceDatasets"] == [{"URL": "bids:raw:"}]


def test_app_output_matches_denoise_file(app_run, tmp_path):
    """The whole app (MultiProc, sinks) writes what the library writes for the same image
    (one that is not a repeat: those are denoised together)."""
    from bids_auton2n.utils.io import denoise_file

    source = next(s for s in SOURCES if s not in REPEATS)
    stem, suffix = source.split(".")[0].rsplit("_", 1)
    # With the app's threads per node (--omp-nthreads 1): the CNN's convolutions round
    # differently with other thread counts on some CPUs (test_determinism.py).
    before = torch.get_num_threads(), numba.get_num_threads()
    try:
        set_threads(1)
        result = denoise_file(app_run["bids"] / source, tmp_path / "library.nii.gz",
                              noise_map=tmp_path / "library_residual.nii.gz",
                              sigma_map=tmp_path / "library_sigma.nii.gz")
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
    for desc, library in (("denoised", "library.nii.gz"), ("residual", "library_residual.nii.gz"),
                          ("noise", "library_sigma.nii.gz")):
        app = nb.load(app_run["out"] / f"{stem}_desc-{desc}_{suffix}.nii.gz")
        ours = nb.load(tmp_path / library)
        assert np.asanyarray(app.dataobj).tobytes() == np.asanyarray(ours.dataobj).tobytes()
        np.testing.assert_array_equal(app.affine, ours.affine)
    meta = json.loads((app_run["out"] / f"{stem}_desc-denoised_{suffix}.json").read_text())
    for key, value in result.provenance().items():
        if key != "TimingsSeconds":
            assert meta[key] == value, key
    assert sorted(meta["TimingsSeconds"]) == sorted(result.timings)  # the sink sorts keys


def test_combined_image_of_the_repeats(app_run):
    """The two runs are aligned, transforms written, and their denoised mean is saved on the
    first run's grid, named without the run entity (as sMRIPrep names its T1w merge)."""
    from bids_auton2n.cli.demo import REPEAT_MOTION
    from bids_auton2n.denoise.align import read_transform, rotation_angle_deg

    out, bids = app_run["out"], app_run["bids"]
    combined = nb.load(out / f"{COMBINED}.nii.gz")
    first = nb.load(bids / REPEATS[0])
    assert combined.shape == first.shape and combined.get_data_dtype() == np.float32
    np.testing.assert_allclose(combined.affine, first.affine)
    runs = [nb.load(out / s.replace("_T1w.nii.gz", "_desc-denoised_T1w.nii.gz")).get_fdata()
            for s in REPEATS]
    data = combined.get_fdata()
    assert np.isfinite(data).all()
    assert not np.allclose(data, runs[0]) and not np.allclose(data, runs[1])
    meta = json.loads((out / f"{COMBINED}.json").read_text())
    assert meta["Sources"] == [f"bids:raw:{s}" for s in REPEATS] + [
        f"bids::{t}" for t in TRANSFORMS]
    assert meta["PairSource"] == "repeats"
    record = meta["Repeats"]
    assert record["RunsCombined"] == 2 and record["Fallback"] == []
    assert record["Method"].startswith("consensus")
    assert [a["Plausible"] for a in record["Alignments"]] == [True, True]
    assert record["FineTuning"]["budget_s"] == 3600.0
    assert record["FineTuning"]["max_steps"] == 3
    assert meta["RepetitionTime"] == 2.3  # the first run's metadata is carried forward
    # the transforms: identity for the first run, the demo's motion for the second
    identity, moved = (read_transform(out / t) for t in TRANSFORMS)
    np.testing.assert_allclose(identity, np.eye(4), atol=1e-6)
    assert rotation_angle_deg(moved) == pytest.approx(REPEAT_MOTION[0], abs=0.5)
    np.testing.assert_allclose(np.asarray(record["Alignments"][1]["Matrix"]), moved, atol=1e-4)
    assert (out / "sub-01/figures/sub-01_ses-1_desc-alignment_T1w.svg").is_file()


def test_noise_estimates_match_the_generated_noise(app_run):
    """The demo images carry Rician noise of a known percentage of the phantom's pure
    reference tissue; the estimate's sigma (image units) must find it. (Its percentage is
    of the reference tissue as measured in the image, partial volume included.)"""
    from bids_auton2n.denoise.phantom import REFERENCE_INTENSITY, TISSUE_INTENSITY

    out = app_run["out"]
    for source, (*_, suffix, truth) in zip(SOURCES, DEMO_IMAGES):
        stem = source.split(".")[0].rsplit("_", 1)[0]
        meta = json.loads((out / f"{stem}_desc-denoised_{suffix}.json").read_text())
        ratios = TISSUE_INTENSITY[suffix]
        reference = REFERENCE_INTENSITY * max(ratios["CSF"], ratios["WM"])
        assert meta["NoiseEstimate"]["Sigma"] == pytest.approx(
            truth / 100 * reference, abs=1.5 / 100 * reference), source


def test_participant_reports(app_run):
    out = app_run["out"]
    for subject, n_images, n_groups in (("01", 3, 1), ("02", 2, 0)):
        html = (out / f"sub-{subject}.html").read_text()
        figures = re.findall(r'(?:src|data)="\./(sub-[^"]+\.svg)"', html)
        # before/after flicker, residual and noise map per single image; flicker and residual
        # per run of a group of two repeats, and its alignment, combined and combined vs run
        assert len(figures) == 3 * (n_images - 2 * n_groups) + 2 * 2 * n_groups + 3 * n_groups
        assert all((out / f).is_file() for f in figures)
        assert html.count("Denoising summary") == n_images
        assert html.count("Quality measures") == n_images  # as on the group page
        assert html.count("Structure removed") == n_images
        assert "No errors to report" in html
        assert "Auto-N2N" in html  # methods boilerplate
        assert html.count("Alignment of the runs") == n_groups
    citation = (out / "logs" / "CITATION.md").read_text()
    assert "test-time augmentation" in citation and "RI-NLM" in citation


def test_group_table_and_report(app_run):
    out = app_run["out"]
    table = pd.read_csv(out / "group_denoising.tsv", sep="\t", dtype={"subject": str,
                                                                      "session": str})
    assert sorted(table["source"]) == sorted(SOURCES)
    assert set(table["subject"]) == {"sub-01", "sub-02"}
    assert set(table["session"]) == {"ses-1", "ses-2"}
    rows = [line.split("\t") for line in (out / "group_denoising.tsv").read_text().splitlines()]
    assert all(len(row) == len(rows[0]) and "" not in row for row in rows)  # n/a, never empty
    assert {row[rows[0].index("outlier")] for row in rows[1:]} == {"n/a"}
    assert (table["status"] == "success").all()
    paths = dict(zip(table["source"], table["pair_source"]))
    assert paths == {s: "repeats" if s in REPEATS else "synthetic-patches" for s in SOURCES}
    notes = dict(zip(table["source"], table["repeats"]))
    assert notes[REPEATS[0]].startswith("combined with 1 other run")
    for metric in ("snr", "cnr", "cjv", "fwhm"):
        assert np.isfinite(table[f"{metric}_before"]).all()
        assert np.isfinite(table[f"{metric}_after"]).all()
    assert set(table["suffix"]) == {"T1w", "T2w"}
    assert (table["runtime_s"] > 0).all()
    assert table["structure_removed"].max() < STRUCTURE_REMOVED_FLAG  # only noise went
    html = (out / "group_denoising.html").read_text()
    for figure in ("noisedist", "snrgain", "smoothness", "structure"):
        assert f"figures/group_desc-{figure}_T1w.svg" in html
        svg = (out / "figures" / f"group_desc-{figure}_T1w.svg").read_text()
        # every point links to its participant's report, opened in the whole page
        links = re.findall(r'<a xlink:href="\.\./(sub-0[12])\.html" target="_top">', svg)
        assert sorted(set(links)) == ["sub-01", "sub-02"] and 'target="_blank"' not in svg
    assert "No image failed" in html
    for subject in ("sub-01", "sub-02"):
        assert f'<a href="{subject}.html">{subject}</a>' in html
    # axis labels and one colour per contrast (matplotlib keeps the labels in comments)
    noise_svg = (out / "figures" / "group_desc-noisedist_T1w.svg").read_text()
    assert "estimated noise (% of reference tissue)" in noise_svg
    assert len(set(re.findall(r"fill: (#[0-9a-f]{6})", noise_svg)) & {"#1f77b4", "#ff7f0e"}) == 2


def test_rerun_resumes_from_work_dir(app_run):
    """A second run with the same work dir reuses finished nodes (no recomputation)."""
    work = app_run["work"]
    results = sorted(work.glob(
        "auton2n_wf/sub_*_wf/anat_*_wf/denoise_wf/cnn_denoise/result_cnn_denoise.pklz"))
    results += sorted(work.glob(
        "auton2n_wf/sub_*_wf/repeats_*_wf/denoise_repeats/result_denoise_repeats.pklz"))
    assert len(results) == len(SOURCES) - len(REPEATS) + 1  # one node per group of repeats
    stamps = [p.stat().st_mtime_ns for p in results]
    code = main([str(app_run["bids"]), str(app_run["out"]), "participant", "--write-noise-map",
                 *app_run["opts"]])
    assert code == 0
    assert [p.stat().st_mtime_ns for p in results] == stamps


def test_one_failing_image_does_not_stop_the_others(tiny_bids, test_experts_dir, tmp_path):
    bids = shutil.copytree(tiny_bids, tmp_path / "bids")
    broken = bids / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"
    img = nb.load(broken)
    nb.Nifti1Image(np.zeros(img.shape, np.int16), img.affine, img.header).to_filename(broken)
    out, work = tmp_path / "out", tmp_path / "work"
    opts = ["-w", str(work), "--nprocs", "2", "--omp-nthreads", "1", "--no-tta",
            "--experts-dir", str(test_experts_dir), "--participant-label", "02"]
    assert main([str(bids), str(out), "participant", *opts]) == 1
    assert (out / "sub-02/ses-2/anat/sub-02_ses-2_desc-denoised_T2w.nii.gz").is_file()
    assert not (out / "sub-02/ses-1/anat/sub-02_ses-1_desc-denoised_T1w.nii.gz").exists()
    status = json.loads(next((out / "logs").glob("status_*.json")).read_text())
    failed = [r for r in status if r["status"] == "failed"]
    assert [r["source"] for r in failed] == ["sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"]
    assert "all zeros" in failed[0]["error"]
    html = (out / "sub-02.html").read_text()
    assert "One or more execution steps failed" in html
    assert "sub-02_ses-1_T1w.nii.gz" in html
    assert main([str(bids), str(out), "group", *opts]) == 1
    table = pd.read_csv(out / "group_denoising.tsv", sep="\t")
    row = table[table["status"] == "failed"]
    assert len(row) == 1 and row["outlier"].iloc[0].startswith("failed")


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


_GROUP_PROBE = """<script>
window.addEventListener("load", function () {
  var figures = Array.from(document.querySelectorAll("img.svg-reportlet"));
  document.body.setAttribute("data-probe", JSON.stringify(figures.map(function (f) {
    return [f.getAttribute("src"), f.naturalWidth]; })));
});
</script>
</body>"""


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_group_report_renders_in_headless_chromium(app_run, tmp_path):
    """Open the group report in a real browser, offline: every figure loads (a figure
    that is not valid SVG shows as a broken image), and the table is there."""
    out = app_run["out"]
    probe = out / "probe_group.html"
    probe.write_text((out / "group_denoising.html").read_text().replace("</body>", _GROUP_PROBE))
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run",
             "--host-resolver-rules=MAP * ~NOTFOUND", "--allow-file-access-from-files",
             f"--user-data-dir={tmp_path / 'profile'}"]
    try:
        dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", probe.as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        probe.unlink()
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found, dom[-2000:]
    figures = dict(json.loads(found.group(1).replace("&quot;", '"')))
    assert len(figures) == 4 and all(width > 0 for width in figures.values()), figures
    assert "<table" in dom
    shot = tmp_path / "group.png"
    subprocess.run([CHROMIUM, *flags, f"--screenshot={shot}", "--window-size=1280,2000",
                    (out / "group_denoising.html").as_uri()], capture_output=True, timeout=120)
    assert shot.is_file() and shot.stat().st_size > 10_000


def test_finetune_adapts_one_expert_shared_by_the_dataset(tiny_bids, tmp_path):
    """--finetune trains once on the dataset's own images; every sidecar records it."""
    out, work = tmp_path / "out", tmp_path / "work"
    opts = ["-w", str(work), "--nprocs", "2", "--omp-nthreads", "1", "--no-tta",
            "--participant-label", "01", "--finetune", "--finetune-budget", "3600",
            "--finetune-steps", "3", *REPEATS_BUDGET]
    assert main([str(tiny_bids), str(out), "participant", *opts]) == 0
    registries = list(work.glob("auton2n_wf/finetune/finetuned_experts/manifest.json"))
    assert len(registries) == 1
    tuned = json.loads(registries[0].read_text())["experts"]
    assert len(tuned) == 1 and "finetuned_from" in tuned[0]
    assert tuned[0]["steps"] == 3 and tuned[0]["stopped"] == "max_steps"
    shipped = {e["sha256"] for e in json.loads((default_root() / "manifest.json").read_text())["experts"]}
    assert tuned[0]["sha256"] not in shipped
    sidecars = sorted(out.glob("sub-01/ses-1/anat/*_desc-denoised_*.json"))
    assert len(sidecars) == 4  # 3 images and the combined image of the 2 runs
    for sidecar in sidecars:
        meta = json.loads(sidecar.read_text())
        assert meta["FineTuned"] is True
        assert tuned[0]["sha256"] in {e["SHA256"] for e in meta["Experts"]}


def _complete(path: Path) -> bool:
    """A file under a final name is whole: NIfTI data decompresses, JSON parses."""
    name = path.name
    if name.endswith(".nii.gz"):
        np.asanyarray(nb.load(path).dataobj)
    elif name.endswith(".json"):
        json.loads(path.read_text())
    return True


def _without_timings(record):
    if isinstance(record, dict):
        return {k: _without_timings(v) for k, v in record.items()
                if not k.lower().endswith("seconds")}
    if isinstance(record, list):
        return [_without_timings(v) for v in record]
    return record


def test_killed_run_leaves_no_partial_output_and_resumes_identically(app_run, tmp_path):
    """SIGKILL of the whole run (workers included) once a first image's CNN finished:
    every file under a final name is whole; rerunning with the same work dir completes and
    writes byte for byte the images of the uninterrupted run (``app_run``, same options)."""
    import os
    import signal
    import time

    out, work = tmp_path / "out", tmp_path / "work"
    command = [sys.executable, "-m", "bids_auton2n.cli.run", str(app_run["bids"]), str(out),
               "participant", "--write-noise-map", "--participant-label", "01", "-w", str(work),
               "--nprocs", "2", "--omp-nthreads", "1", *REPEATS_BUDGET]
    run = subprocess.Popen(command, cwd=tmp_path, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 900
    while (not list(work.glob("auton2n_wf/sub_01_wf/anat_*_wf/denoise_wf/cnn_denoise/result_*.pklz"))
           and run.poll() is None and time.monotonic() < deadline):
        time.sleep(0.05)
    assert run.poll() is None, "the run ended before it could be killed"
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    finals = [p for p in out.rglob("*") if p.is_file()
              and not any(part.startswith(".") for part in p.relative_to(out).parts)]
    assert all(_complete(p) for p in finals)
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (out / ".bids_auton2n-staging").exists()
    for source in SOURCES[:3]:  # sub-01
        stem, suffix = source.split(".")[0].rsplit("_", 1)
        for desc in ("denoised", "residual") + (() if source in REPEATS else ("noise",)):
            name = f"{stem}_desc-{desc}_{suffix}.nii.gz"
            assert (out / name).read_bytes() == (app_run["out"] / name).read_bytes(), name
        sidecar = json.loads((out / f"{stem}_desc-denoised_{suffix}.json").read_text())
        reference = json.loads((app_run["out"] / f"{stem}_desc-denoised_{suffix}.json").read_text())
        # timings are the only fields that differ between runs (TimingsSeconds, and the
        # seconds of a repeat group's alignment and fine-tuning)
        assert _without_timings(sidecar) == _without_timings(reference)
