"""Progress lines of the participant level (the end-to-end run checks them on the real app)."""

from __future__ import annotations

import io
from types import SimpleNamespace

from bids_auton2n.cli.progress import ParticipantProgress

SOURCES = {"01": ["/d/sub-01/anat/sub-01_run-1_T1w.nii.gz", "/d/sub-01/anat/sub-01_T2w.nii.gz"],
           "02": ["/d/sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz"]}


def _node(path: str):
    *hierarchy, name = path.split(".")
    return SimpleNamespace(name=name, fullname=path)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_counts_images_and_names_what_runs():
    stream, clock = io.StringIO(), Clock()
    progress = ParticipantProgress(SOURCES, stream=stream, clock=clock, heartbeat_s=None)
    image = "auton2n_wf.sub_01_wf.anat_run_1_T1w_wf"
    with progress:
        clock.now += 5
        progress(_node(f"{image}.estimate_noise"), "start")
        progress(_node(f"{image}.estimate_noise"), "end")
        progress(_node(f"{image}.select_experts"), "start")  # short stage: not announced
        progress(_node("auton2n_wf.sub_02_wf.anat_ses_1_T1w_wf.estimate_noise"), "start")
        clock.now += 70
        progress(_node(f"{image}.select_experts"), "end")
        progress(_node(f"{image}.cnn_denoise"), "start")
        progress(_node(f"{image}.cnn_denoise"), "end")
        progress(_node("auton2n_wf.sub_01_wf.ds_anat_run_1_T1w_wf.ds_denoised"), "end")
        progress(_node("auton2n_wf.sub_02_wf.anat_ses_1_T1w_wf.estimate_noise"), "exception")
    lines = stream.getvalue().splitlines()
    assert lines == [
        "[0:00:00] 0/3 images denoised",
        "[0:00:05] 0/3 images denoised; running: sub-01_run-1_T1w (noise estimate)",
        "[0:00:05] 0/3 images denoised; running: sub-01_run-1_T1w (select experts), "
        "sub-02_ses-1_T1w (noise estimate)",
        "[0:01:15] 0/3 images denoised; running: sub-01_run-1_T1w (CNN experts), "
        "sub-02_ses-1_T1w (noise estimate)",
        "[0:01:15] 1/3 images denoised; running: sub-02_ses-1_T1w (noise estimate)",
        "[0:01:15] 1/3 images denoised, 1 failed",
    ]


def test_heartbeat_repeats_the_line_while_nothing_changes():
    stream, clock = io.StringIO(), Clock()
    progress = ParticipantProgress(SOURCES, stream=stream, clock=clock, heartbeat_s=30)
    with progress:
        clock.now += 31
        for _ in range(300):  # the heartbeat thread checks once a second
            if len(stream.getvalue().splitlines()) > 1:
                break
            progress._stop.wait(0.1)
    assert stream.getvalue().splitlines()[:2] == ["[0:00:00] 0/3 images denoised",
                                                   "[0:00:31] 0/3 images denoised"]
    assert not progress._thread.is_alive()


def test_fine_tuning_is_shown():
    stream = io.StringIO()
    progress = ParticipantProgress(SOURCES, stream=stream, clock=Clock(), heartbeat_s=None)
    progress(_node("auton2n_wf.finetune"), "start")
    assert "running: fine-tuning the expert on this dataset" in stream.getvalue()


def test_pickles_as_nothing_with_its_thread_running():
    """Nipype stores the plugin arguments (this callback among them) on every MapNode and
    pickles the node; a running callback holds a lock and a thread."""
    import pickle

    with ParticipantProgress({"01": ["sub-01_T1w.nii.gz"]}, stream=io.StringIO(),
                             heartbeat_s=60.0) as progress:
        assert pickle.loads(pickle.dumps({"status_callback": progress})) == {
            "status_callback": None}


def test_repeat_group_runs_count_when_their_own_sinks_finish():
    """A repeat group's stages run in its workflow and show under its first run; each run
    is done when the sink named after it (``..._run<k>``) has written its derivative."""
    from bids_auton2n.workflows.base import denoise_workflow_names

    runs = ["/d/sub-01/anat/sub-01_run-1_T1w.nii.gz", "/d/sub-01/anat/sub-01_run-2_T1w.nii.gz"]
    sources = {"01": [*runs, "/d/sub-01/anat/sub-01_T2w.nii.gz"]}
    names = denoise_workflow_names(sources["01"])
    assert names[runs[0]][0] == names[runs[1]][0] == "repeats_T1w_wf"
    stream, clock = io.StringIO(), Clock()
    progress = ParticipantProgress(sources, workflow_names=names, stream=stream, clock=clock,
                                   heartbeat_s=None)
    with progress:
        progress(_node("auton2n_wf.sub_01_wf.repeats_T1w_wf.denoise_repeats"), "start")
        progress(_node("auton2n_wf.sub_01_wf.repeats_T1w_wf.denoise_repeats"), "end")
        for index in (1, 0):
            progress(_node(f"auton2n_wf.sub_01_wf.ds_{names[runs[index]][1]}.ds_denoised"), "end")
    assert stream.getvalue().splitlines() == [
        "[0:00:00] 0/3 images denoised",
        "[0:00:00] 0/3 images denoised; running: sub-01_run-1_T1w (fine-tuning on the runs "
        "and denoising)",
        "[0:00:00] 1/3 images denoised",
        "[0:00:00] 2/3 images denoised",
    ]
