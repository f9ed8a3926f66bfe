"""Progress of the participant level on the terminal, from Nipype's status callback.

One line whenever an image moves to another stage, finishes or fails, and every
``heartbeat_s`` seconds while nothing changes (a CNN stage can run for minutes)::

    [0:01:12] 2/5 images denoised, 0 failed; running: sub-01_ses-1_T2w (CNN experts)

Nipype calls :meth:`ParticipantProgress.__call__` in the main process with each node and
``"start"``, ``"end"`` or ``"exception"`` (``status_callback`` of its distributed plugins,
MultiProc's included, and of Linear). The nodes' own log lines stay off, as before
(``cli.run._worker_logging``).
"""

from __future__ import annotations

import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

#: Stages whose start is announced, by node name (``workflows.base.init_anat_denoise_wf``);
#: other nodes are short and shown by their name while they run.
STAGES = {
    "estimate_noise": "noise estimate",
    "cnn_denoise": "CNN experts",
    "rinlm_fusion": "RI-NLM fusion and guard",
    "figures": "report figures",
    # a repeat group's (``workflows.repeats.init_repeats_wf``)
    "align_runs": "aligning the runs",
    "denoise_repeats": "fine-tuning on the runs and denoising",
}
#: The node whose end means the image's derivative is written (``workflows.outputs``).
DONE_NODE = "ds_denoised"
#: Prefixes of the sink workflows of one image around its ``anat_*_wf`` name.
_SINK_PREFIXES = ("ds_reportlets_", "ds_")


def image_label(source: str) -> str:
    """``sub-01_ses-1_T1w`` for ``.../sub-01_ses-1_T1w.nii.gz``."""
    return Path(source).name.split(".")[0]


class ParticipantProgress:
    """Counts denoised images and names the running ones (a Nipype ``status_callback``).

    Parameters
    ----------
    sources : dict
        Image files by participant label (as :func:`~bids_auton2n.utils.bids.collect_anatomicals`
        returns them).
    workflow_names : dict, optional
        Per image, the workflow that denoises it and the name its sinks are named after, where
        they are not its own (:func:`~bids_auton2n.workflows.base.denoise_workflow_names`):
        a repeat group's stages are shown under its first run, each run is done when its own
        sink is.
    stream : file, optional
        Where lines go (default: standard error, beside the app's other messages).
    clock : callable
        Seconds, monotonic (injected by tests).
    heartbeat_s : float or None
        Repeat the line after this many quiet seconds; ``None``: only on events.
    """

    def __init__(self, sources: dict[str, list[str]], *, workflow_names: dict | None = None,
                 stream=None, clock=time.monotonic, heartbeat_s: float | None = 30.0):
        from ..workflows.base import image_workflow_name

        # (subject workflow, workflow or sink name) -> image; a group's stages -> its first run
        self._labels: dict[tuple[str, str], str] = {}
        for subject, files in sources.items():
            for f in files:
                own = (image_workflow_name(f),) * 2
                for name in (workflow_names or {}).get(f, own):
                    self._labels.setdefault((f"sub_{subject}_wf", name), image_label(f))
        self._n_images = sum(len(files) for files in sources.values())
        self._stream = stream
        self._clock = clock
        self._started = clock()
        self._last_line = self._started
        self._running: dict[str, dict[str, str]] = {}  # image -> {node: stage} running now
        self._done: set[str] = set()
        self._failed: set[str] = set()
        self._finetuning = False
        self._lock = threading.Lock()
        self._heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread = None

    def __reduce__(self):
        # Nipype keeps the plugin arguments on every MapNode (``use_plugin``) and pickles
        # the node into its work folder; nothing reads the callback back from there, and
        # its lock and thread cannot be pickled, so it pickles as None.
        return (type(None), ())

    @property
    def total(self) -> int:
        return self._n_images

    def _image(self, node) -> str | None:
        parts = node.fullname.split(".")
        for index, part in enumerate(parts[:-1]):
            if part.startswith("sub_") and part.endswith("_wf") and index + 1 < len(parts):
                name = parts[index + 1]
                for prefix in _SINK_PREFIXES:
                    name = name.removeprefix(prefix)
                return self._labels.get((part, name))
        return None

    def __call__(self, node, status: str) -> None:
        with self._lock:
            if node.name == "finetune":
                self._finetuning = status == "start"
                self._write()
                return
            image = self._image(node)
            if image is None or image in self._done or image in self._failed:
                return
            running = self._running.setdefault(image, {})
            if status == "start":
                running[node.fullname] = STAGES.get(node.name, node.name.replace("_", " "))
                if node.name not in STAGES:
                    return
            else:
                running.pop(node.fullname, None)
                if status == "exception":
                    self._failed.add(image)
                elif node.name == DONE_NODE:
                    self._done.add(image)
                else:
                    return
            self._write()

    def line(self) -> str:
        """The current state in one line."""
        elapsed = timedelta(seconds=round(self._clock() - self._started))
        text = f"[{elapsed}] {len(self._done)}/{self.total} images denoised"
        if self._failed:
            text += f", {len(self._failed)} failed"
        running = [f"{image} ({', '.join(sorted(set(stages.values())))})"
                   for image, stages in sorted(self._running.items())
                   if stages and image not in self._done and image not in self._failed]
        if self._finetuning:
            running.insert(0, "fine-tuning the expert on this dataset")
        return text + ("; running: " + ", ".join(running) if running else "")

    def _write(self) -> None:
        self._last_line = self._clock()
        print(self.line(), file=self._stream or sys.stderr, flush=True)

    def __enter__(self):
        with self._lock:
            self._write()
        if self._heartbeat_s:
            self._thread = threading.Thread(target=self._beat, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return False

    def _beat(self) -> None:
        while not self._stop.wait(1.0):
            with self._lock:
                if self._clock() - self._last_line >= self._heartbeat_s:
                    self._write()
