"""Nipype workflow of a group of repeated acquisitions of one image (``--repeats auto``).

``init_repeats_wf``: align every run to the first → write the transforms → fine-tune on the
aligned runs and denoise them (consensus Noise2Noise or Noise2Average) → sidecars and
reportlets. The denoised runs, the combined image and the reportlets are written by the
sinks that :func:`~bids_auton2n.workflows.base.init_single_subject_wf` connects.
"""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.qc import ComputeIQMs
from ..interfaces.reports import DenoiseSummary
from ..interfaces.repeats import (
    AlignRuns,
    DenoiseRepeats,
    OptionalBeforeAfter,
    RepeatsProvenance,
    RepeatsSummary,
)
from .outputs import init_ds_transforms_wf


def init_repeats_wf(
    *,
    anat_files: list[str],
    contrast: str,
    output_dir: str,
    bids_dir: str,
    method: str = "consensus",
    budget_s: float = 600.0,
    max_steps: int | None = None,
    tta: bool = True,
    fusion: bool = True,
    guard: bool = True,
    wiener: bool = True,
    noise_level: float | None = None,
    expert: float | None = None,
    device: str = "auto",
    finetune: bool = False,
    omp_nthreads: int = 1,
    name: str = "repeats_wf",
):
    """Denoise the runs of one image together (library path: ``denoise_repeats``).

    Parameters
    ----------
    anat_files : list of str
        The runs, the reference (whose grid the combined image lies on) first.
    contrast : {"T1w", "T2w", "FLAIR", "PDw"}
    output_dir, bids_dir : str
        Derivatives root (the transforms are written there) and raw dataset root.
    method : {"consensus", "n2a"}
        Fine-tuning on the aligned runs.
    budget_s : float
        Fine-tuning time budget (seconds).
    max_steps : int, optional
        Most Adam steps of the fine-tuning.
    tta, fusion, guard, wiener, noise_level, expert, device, finetune, omp_nthreads
        See :func:`~bids_auton2n.workflows.base.init_denoise_wf`.
    name : str

    Inputs
    ------
    in_files
        The runs (``anat_files``; given through the input node so that the workflow can be
        built before the files exist, as the single-image workflow's ``in_file``).
    experts_dir
        Expert registry (left undefined: shipped experts; with ``--finetune`` the
        dataset's fine-tuned registry).
    source_metadata
        List of the runs' sidecar metadata.

    Outputs
    -------
    out_files, noise_images, metadata
        Per run: denoised image (own space), residual, sidecar content.
    combined_file, combined_metadata
        The combined image on the first run's grid (empty list after a fallback) and its
        sidecar content.
    out_reports, residual_reports, summary_reports
        Per run: before/after flicker, residual mosaic, summary fragment.
    alignment_report
        Flicker of the first run and the aligned second, edges of the latter drawn on both.
    combined_report, combined_vs_run_report
        Flickers noisy first run → combined, denoised first run → combined (empty lists
        after a fallback).
    repeats_summary
        HTML fragment: path taken, alignment figures, fine-tuning, warnings.
    """
    from nireports.interfaces.mosaic import PlotMosaic
    from nireports.interfaces.reporting.base import SimpleBeforeAfterRPT

    if len(anat_files) < 2:
        raise ValueError(f"a repeat group has two or more runs, got {anat_files}")
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_files", "experts_dir",
                                                            "source_metadata"]),
                        name="inputnode")
    inputnode.inputs.in_files = list(anat_files)
    outputnode = pe.Node(niu.IdentityInterface(fields=[
        "out_files", "noise_images", "metadata", "combined_file", "combined_metadata",
        "out_reports", "residual_reports", "summary_reports", "alignment_report",
        "combined_report", "combined_vs_run_report", "repeats_summary",
    ]), name="outputnode")

    align = pe.Node(AlignRuns(), name="align_runs")
    first_run = pe.Node(niu.Select(index=0), name="first_run")
    ds_transforms_wf = init_ds_transforms_wf(output_dir=output_dir, anat_files=anat_files,
                                             contrast=contrast)
    denoise = pe.Node(
        DenoiseRepeats(contrast=contrast, method=method, budget_s=budget_s,
                       tta=tta, fusion=fusion, guard=guard, wiener=wiener, device=device,
                       omp_nthreads=omp_nthreads),
        name="denoise_repeats", n_procs=omp_nthreads)
    if max_steps is not None:
        denoise.inputs.max_steps = max_steps
    if noise_level is not None:
        denoise.inputs.noise_level = noise_level
    if expert is not None:
        denoise.inputs.expert = expert
    provenance = pe.Node(RepeatsProvenance(bids_dir=bids_dir,
                                           output_dir=output_dir, finetuned=finetune),
                         name="repeats_provenance")
    alignment_report = pe.Node(
        OptionalBeforeAfter(before_label="run 1",
                            after_label="run 2 aligned"),
        name="alignment_report")
    combined_report = pe.Node(
        OptionalBeforeAfter(before_label="run 1 noisy",
                            after_label="combined"),
        name="combined_report")
    combined_vs_run = pe.Node(
        OptionalBeforeAfter(before_label="run 1 denoised alone", after_label="combined"),
        name="combined_vs_run_report")
    summary = pe.Node(RepeatsSummary(), name="repeats_summary")
    run_report = pe.MapNode(
        SimpleBeforeAfterRPT(before_label="noisy", after_label="denoised",
                             dismiss_affine=False, generate_report=True),
        iterfield=["before", "after"], name="before_after")
    residual = pe.MapNode(
        PlotMosaic(view=["axial", "sagittal"], title="Residual (input - denoised)",
                   cmap="Greys_r", out_file="residual.svg"),
        iterfield=["in_file"], name="residual_mosaic")
    iqms = pe.MapNode(ComputeIQMs(contrast=contrast), iterfield=["source_file", "denoised_file"],
                      name="iqms")
    run_summary = pe.MapNode(DenoiseSummary(), iterfield=["provenance_json", "iqms_json"],
                             name="summary")
    first_denoised = pe.Node(niu.Select(index=0), name="first_denoised")

    workflow.connect([
        (inputnode, align, [("in_files", "in_files")]),
        (inputnode, denoise, [("in_files", "in_files"), ("experts_dir", "experts_dir")]),
        (inputnode, provenance, [("in_files", "in_files")]),
        (inputnode, summary, [("in_files", "in_files")]),
        (inputnode, run_report, [("in_files", "before")]),
        (inputnode, first_run, [("in_files", "inlist")]),
        (first_run, alignment_report, [("out", "before")]),
        (first_run, combined_report, [("out", "before")]),
        (inputnode, provenance, [("source_metadata", "source_metadata")]),
        (align, denoise, [("out_json", "alignments_json")]),
        (align, ds_transforms_wf, [("transforms", "inputnode.transforms")]),
        (ds_transforms_wf, provenance, [("outputnode.transforms", "transforms")]),
        (denoise, provenance, [("out_json", "repeats_json")]),
        (align, alignment_report, [("aligned_file", "after"), ("edges_file", "wm_seg")]),
        (denoise, combined_report, [("combined_file", "after")]),
        (denoise, first_denoised, [("out_files", "inlist")]),
        (first_denoised, combined_vs_run, [("out", "before")]),
        (denoise, combined_vs_run, [("combined_file", "after")]),
        (provenance, summary, [("out_json", "provenance_json")]),
        (denoise, run_report, [("out_files", "after")]),
        (denoise, residual, [("noise_images", "in_file")]),
        (provenance, run_summary, [("run_jsons", "provenance_json")]),
        (inputnode, iqms, [("in_files", "source_file")]),
        (denoise, iqms, [("out_files", "denoised_file")]),
        (iqms, run_summary, [("out_json", "iqms_json")]),
        (denoise, outputnode, [("out_files", "out_files"), ("noise_images", "noise_images"),
                               ("combined_file", "combined_file")]),
        (provenance, outputnode, [("metadata", "metadata"),
                                  ("combined_metadata", "combined_metadata")]),
        (run_report, outputnode, [("out_report", "out_reports")]),
        (residual, outputnode, [("out_file", "residual_reports")]),
        (run_summary, outputnode, [("out_report", "summary_reports")]),
        (alignment_report, outputnode, [("out_report", "alignment_report")]),
        (combined_report, outputnode, [("out_report", "combined_report")]),
        (combined_vs_run, outputnode, [("out_report", "combined_vs_run_report")]),
        (summary, outputnode, [("out_report", "repeats_summary")]),
    ])  # fmt:skip
    return workflow

