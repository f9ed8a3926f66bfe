"""Repeats in the BIDS-App: workflow wiring over the flags, the interfaces against the library
path, the optional sinks and the fallback's report."""

from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nb
import numpy as np
import pytest

from bids_auton2n.workflows.base import (
    denoise_workflow_names, init_single_subject_wf, repeats_workflow_name, subject_groups,
)

RUNS = ["/bids/sub-01/ses-1/anat/sub-01_ses-1_run-1_T1w.nii.gz",
        "/bids/sub-01/ses-1/anat/sub-01_ses-1_run-2_T1w.nii.gz",
        "/bids/sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"]


def _build(bids_dir, **kwargs):
    """Build only: the runs need not exist (the interfaces get them through input nodes)."""
    return init_single_subject_wf(subject_id="01", anat_files=RUNS, source_metadata={},
                                  bids_dir=str(bids_dir), output_dir="/out", **kwargs)


@pytest.mark.parametrize("repeats", ["auto", "off"])
def test_subject_workflow_groups_the_runs(repeats, tmp_path):
    workflow = _build(tmp_path, repeats=repeats, repeats_method="n2a", repeats_budget_s=42.0)
    names = {node.fullname for node in workflow._get_all_nodes()}
    grouped = repeats == "auto"
    assert ("repeats_ses_1_T1w_wf.denoise_repeats" in names) is grouped
    assert any("anat_ses_1_run_1_T1w_wf" in n for n in names) is not grouped
    assert any("anat_ses_1_T2w_wf" in n for n in names)  # a group of one: single path
    expected = {RUNS[2]: ("anat_ses_1_T2w_wf",) * 2}
    for index, run in enumerate(RUNS[:2]):
        expected[run] = (("repeats_ses_1_T1w_wf", f"repeats_ses_1_T1w_wf_run{index}") if grouped
                         else ("anat_" + run.split("sub-01_")[1].split(".")[0].replace("-", "_")
                               + "_wf",) * 2)
    assert denoise_workflow_names(RUNS, repeats=repeats) == expected
    sinks = {name.split(".")[0] for name in names if name.startswith("ds_")}
    assert {f"ds_{outputs}" for _, outputs in expected.values()} <= sinks
    if grouped:
        node = workflow.get_node("repeats_ses_1_T1w_wf.denoise_repeats")
        assert node.inputs.method == "n2a" and node.inputs.budget_s == 42.0
        inputnode = workflow.get_node("repeats_ses_1_T1w_wf.inputnode")
        assert inputnode.inputs.in_files == RUNS[:2]


def test_repeat_workflow_names_drop_the_varying_entities():
    (group,) = [g for g in subject_groups(
        ["/b/sub-01/anat/sub-01_acq-mp_echo-1_T1w.nii.gz",
         "/b/sub-01/anat/sub-01_acq-mp_echo-2_T1w.nii.gz"]) if g.is_repeat]
    assert repeats_workflow_name(group) == "repeats_acq_mp_T1w_wf"


def test_optional_sink_writes_nothing_without_a_file(tmp_path):
    from bids_auton2n.interfaces.bids import OptionalDerivativesDataSink

    source = tmp_path / "bids/sub-01/anat/sub-01_run-1_T1w.nii.gz"
    source.parent.mkdir(parents=True)
    nb.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)).to_filename(source)
    sink = OptionalDerivativesDataSink(base_directory=str(tmp_path / "out"), desc="denoised",
                                       source_file=[str(source)])
    sink.run()
    assert not list((tmp_path / "out").rglob("*.nii*"))
    sink.inputs.in_file = [str(source)]
    assert sink.run().outputs.out_file.endswith("sub-01_run-1_desc-denoised_T1w.nii.gz")


def test_transform_and_combined_derivative_names(tmp_path):
    """BIDS-Derivatives names: per-run ``from-orig_to-T1w_mode-image_xfm.txt`` (sMRIPrep's
    names for its T1w runs into their merge) and the combined image without ``run``."""
    from bids_auton2n.interfaces.bids import DerivativesDataSink

    files = []
    for run in (1, 2):
        path = tmp_path / f"bids/sub-01/ses-1/anat/sub-01_ses-1_run-{run}_T1w.nii.gz"
        path.parent.mkdir(parents=True, exist_ok=True)
        nb.Nifti1Image(np.zeros((4, 4, 4), np.float32), np.eye(4)).to_filename(path)
        files.append(str(path))
    xfm = tmp_path / "xfm.txt"
    xfm.write_text("#Insight Transform File V1.0\n")
    sink = DerivativesDataSink(base_directory=str(tmp_path / "out"), source_file=files[1],
                               in_file=str(xfm), suffix="xfm", mode="image", to="T1w",
                               **{"from": "orig"})
    written = sink.run().outputs.out_file
    assert written.endswith("sub-01/ses-1/anat/sub-01_ses-1_run-2_from-orig_to-T1w_mode-image_xfm.txt")
    combined = DerivativesDataSink(base_directory=str(tmp_path / "out"), source_file=files,
                                   in_file=files[0], desc="denoised", compress=True)
    assert combined.run().outputs.out_file.endswith(
        "sub-01/ses-1/anat/sub-01_ses-1_desc-denoised_T1w.nii.gz")


@pytest.fixture
def pair_files(tmp_path):
    from bids_auton2n.cli.demo import make_demo_dataset

    bids = make_demo_dataset(tmp_path / "bids", images=(("01", None, "1", "T1w", 4.0),
                                                        ("01", None, "2", "T1w", 4.0)))
    return [str(bids / f"sub-01/anat/sub-01_run-{r}_T1w.nii.gz") for r in (1, 2)]


def test_interfaces_compute_the_library_images(pair_files, tmp_path, test_experts_dir,
                                               monkeypatch, one_torch_thread):
    """AlignRuns + DenoiseRepeats write exactly what denoise_repeats returns."""
    import bids_auton2n.train.repeats as train_repeats
    from bids_auton2n.denoise.align import Alignment
    from bids_auton2n.denoise.experts import ExpertRegistry
    from bids_auton2n.utils.io import read_volume
    from bids_auton2n.denoise.repeats import denoise_repeats
    from bids_auton2n.interfaces.repeats import AlignRuns, DenoiseRepeats

    monkeypatch.setattr(train_repeats, "FINETUNE_CONFIG", replace(
        train_repeats.FINETUNE_CONFIG, patch_size=16, steps_per_epoch=2, max_epochs=1,
        val_patches_per_volume=2, device="cpu"))
    for folder in ("align", "denoise"):
        (tmp_path / folder).mkdir()
    aligned = AlignRuns(in_files=pair_files).run(cwd=str(tmp_path / "align")).outputs
    denoised = DenoiseRepeats(in_files=pair_files, alignments_json=aligned.out_json,
                              contrast="T1w", budget_s=1e6, tta=False, fusion=False, device="cpu",
                              experts_dir=str(test_experts_dir)).run(
        cwd=str(tmp_path / "denoise")).outputs
    images = [read_volume(f) for f in pair_files]
    records = json.loads(open(aligned.out_json).read())
    library = denoise_repeats([d for _, d in images], [i.affine for i, _ in images],
                              alignments=[Alignment.from_dict(r) for r in records],
                              budget_s=1e6, tta=False, fusion=False, device="cpu",
                              registry=ExpertRegistry(test_experts_dir))
    np.testing.assert_array_equal(nb.load(denoised.combined_file).get_fdata(dtype=np.float32),
                                  library.combined)
    for path, image in zip(denoised.out_files, library.denoised):
        np.testing.assert_array_equal(nb.load(path).get_fdata(dtype=np.float32), image)
    assert len(aligned.transforms) == 2
