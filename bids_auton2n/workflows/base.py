"""Nipype workflows of the participant level.

``init_auton2n_wf`` (reads :mod:`bids_auton2n.config`) → one ``init_single_subject_wf`` per
participant → one ``init_anat_denoise_wf`` per anatomical image:

    estimate noise → select expert(s) → CNN experts (+ flip TTA) → RI-NLM fusion
    → provenance → derivatives + reportlets

With ``--finetune`` one fine-tuning node shared by the dataset adapts the expert nearest to
the images' median noise (it estimates the noise itself) and its registry serves every CNN node.
"""

from __future__ import annotations

import re
from copy import deepcopy
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.denoise import (
    CNNDenoise,
    DenoiseProvenance,
    EstimateNoise,
    FineTune,
    FuseRINLM,
    SelectExperts,
)
from ..interfaces.qc import ComputeIQMs
from ..interfaces.reports import DenoiseSummary, DenoisingFigures
from .outputs import init_ds_denoised_wf, init_ds_reportlets_wf


def init_auton2n_wf(*, layout=None, subjects=None):
    """Top-level workflow for all selected participants, built from :mod:`~bids_auton2n.config`.

    Parameters
    ----------
    layout : bids.BIDSLayout, optional
        Index of the input dataset (built from the config when omitted).
    subjects : dict, optional
        Images by participant label, as :func:`~bids_auton2n.utils.bids.collect_anatomicals`
        returns (collected from the config when omitted).

    Returns
    -------
    nipype.pipeline.engine.Workflow
        ``auton2n_wf``, with ``base_dir`` set to the work directory.
    """
    from .. import config
    from ..utils.bids import collect_anatomicals, make_layout

    execution, settings = config.execution, config.workflow
    layout = layout or make_layout(execution.bids_dir)
    subjects = subjects or collect_anatomicals(
        layout,
        participant_label=execution.participant_label,
        session_label=execution.session_label,
        suffixes=execution.suffixes,
        bids_filters=execution.bids_filters,
    )
    workflow = pe.Workflow(name="auton2n_wf")
    workflow.base_dir = str(execution.work_dir)

    finetune_node = None
    if settings.finetune:
        finetune_node = pe.Node(
            FineTune(time_budget_s=settings.finetune_budget_s, device=settings.device,
                     omp_nthreads=config.nipype.omp_nthreads),
            name="finetune",
            n_procs=config.nipype.omp_nthreads,
        )
        if execution.experts_dir:
            finetune_node.inputs.experts_dir = str(execution.experts_dir)
        if settings.finetune_steps is not None:
            finetune_node.inputs.max_steps = settings.finetune_steps
        all_files = [f for files in subjects.values() for f in files]
        finetune_node.inputs.in_files = all_files

    for subject_id, anat_files in subjects.items():
        subject_wf = init_single_subject_wf(
            subject_id=subject_id,
            anat_files=anat_files,
            source_metadata={f: _sidecar(layout, f) for f in anat_files},
            bids_dir=str(execution.bids_dir),
            output_dir=str(execution.output_dir),
            crashdump_dir=str(
                Path(execution.output_dir) / f"sub-{subject_id}" / "log" / execution.run_uuid
            ),
            experts_dir=str(execution.experts_dir) if execution.experts_dir else None,
            tta=settings.tta,
            fusion=settings.fusion,
            guard=settings.guard,
            noise_level=settings.noise_level,
            expert=settings.expert,
            blend=settings.blend,
            device=settings.device,
            finetune=settings.finetune,
            write_noise_map=settings.write_noise_map,
            omp_nthreads=config.nipype.omp_nthreads,
            mem_gb=config.nipype.image_mem_gb(),
        )
        if finetune_node is not None:
            workflow.connect([
                (finetune_node, subject_wf, [
                    ("experts_dir", f"{image_workflow_name(f)}.inputnode.experts_dir")])
                for f in anat_files
            ])
        else:
            workflow.add_nodes([subject_wf])  # connect() adds it in the branch above
    return workflow


def _sidecar(layout, path: str) -> dict:
    """Metadata of ``path`` after BIDS inheritance (JSON-able values only)."""
    return {k: v for k, v in layout.get_metadata(path).items()
            if isinstance(v, (str, int, float, bool, list, dict, type(None)))}


def image_workflow_name(path: str) -> str:
    """Nipype-safe, unique-per-subject name of the workflow of one image."""
    stem = Path(path).name.split(".")[0]
    stem = re.sub(r"^sub-[a-zA-Z0-9]+_", "", stem)
    return "anat_" + re.sub(r"[^a-zA-Z0-9]", "_", stem) + "_wf"


def init_single_subject_wf(
    *,
    subject_id: str,
    anat_files: list[str],
    source_metadata: dict[str, dict],
    bids_dir: str,
    output_dir: str,
    crashdump_dir: str | None = None,
    experts_dir: str | None = None,
    tta: bool = True,
    fusion: bool = True,
    guard: bool = True,
    noise_level: float | None = None,
    expert: float | None = None,
    blend: bool = False,
    device: str = "auto",
    finetune: bool = False,
    write_noise_map: bool = False,
    omp_nthreads: int = 1,
    mem_gb: float | None = None,
    name: str | None = None,
):
    """Denoise every anatomical image of one participant.

    Parameters
    ----------
    subject_id : str
        Participant label without ``sub-``.
    anat_files : list of str
        Raw images to denoise (any session/acq/rec/run, T1w/T2w/FLAIR/PDw).
    source_metadata : dict
        Sidecar metadata of each image (carried into the derivative sidecar).
    bids_dir, output_dir : str
        Raw dataset root and derivatives root.
    crashdump_dir : str, optional
        Where Nipype writes crash files of this participant (read by the report).
    experts_dir : str, optional
        Expert registry; ``None`` uses the shipped experts.
    tta, fusion, guard, noise_level, expert, blend, device, finetune, write_noise_map, omp_nthreads, mem_gb
        See :func:`init_anat_denoise_wf`.
    name : str, optional
        Defaults to ``sub_<label>_wf``.

    Inputs
    ------
    None: the inputs are fixed at build time (one sub-workflow per image).

    Outputs
    -------
    None: derivatives and reportlets are written by the sinks.
    """
    workflow = pe.Workflow(name=name or f"sub_{subject_id}_wf")
    for anat_file in anat_files:
        suffix = Path(anat_file).name.split(".")[0].rsplit("_", 1)[-1]
        anat_wf = init_anat_denoise_wf(
            contrast=suffix,
            tta=tta,
            fusion=fusion,
            guard=guard,
            noise_level=noise_level,
            expert=expert,
            blend=blend,
            device=device,
            finetune=finetune,
            omp_nthreads=omp_nthreads,
            mem_gb=mem_gb,
            name=image_workflow_name(anat_file),
        )
        anat_wf.inputs.inputnode.in_file = anat_file
        if experts_dir and not finetune:
            anat_wf.inputs.inputnode.experts_dir = experts_dir
        provenance = anat_wf.get_node("provenance")
        provenance.inputs.bids_dir = bids_dir
        provenance.inputs.source_metadata = source_metadata.get(anat_file, {})

        ds_denoised_wf = init_ds_denoised_wf(
            output_dir=output_dir, write_noise_map=write_noise_map,
            name=f"ds_{anat_wf.name}",
        )
        ds_denoised_wf.inputs.inputnode.source_file = anat_file
        ds_reportlets_wf = init_ds_reportlets_wf(
            output_dir=output_dir, name=f"ds_reportlets_{anat_wf.name}",
        )
        ds_reportlets_wf.inputs.inputnode.source_file = anat_file
        workflow.connect([
            (anat_wf, ds_denoised_wf, [
                ("outputnode.out_file", "inputnode.out_file"),
                ("outputnode.noise_image", "inputnode.noise_image"),
                ("outputnode.metadata", "inputnode.metadata"),
            ]),
            (anat_wf, ds_reportlets_wf, [
                ("outputnode.out_report", "inputnode.before_after"),
                ("outputnode.residual_report", "inputnode.residual"),
                ("outputnode.summary_report", "inputnode.summary"),
            ]),
        ])  # fmt:skip
    if crashdump_dir:
        # Nipype reads the crash folder from each node's own config (as in fMRIPrep)
        workflow.config["execution"]["crashdump_dir"] = crashdump_dir
        for node in workflow._get_all_nodes():
            node.config = deepcopy(workflow.config)
    return workflow


def init_anat_denoise_wf(
    *,
    contrast: str,
    tta: bool = True,
    fusion: bool = True,
    guard: bool = True,
    noise_level: float | None = None,
    expert: float | None = None,
    blend: bool = False,
    device: str = "auto",
    finetune: bool = False,
    omp_nthreads: int = 1,
    mem_gb: float | None = None,
    name: str = "anat_denoise_wf",
):
    """Denoise one anatomical image (the app's denoiser, QSIPrep-style output contract).

    Parameters
    ----------
    contrast : {"T1w", "T2w", "FLAIR", "PDw"}
        Selects the reference tissue of the noise percentage.
    tta : bool
        Flip test-time augmentation of the CNN experts.
    fusion : bool
        Average the CNN output with RI-NLM guided by it.
    guard : bool
        Give back what was removed beyond what the noise explains (do-no-harm guard).
    noise_level : float, optional
        Noise level (percent) to use instead of the estimate.
    expert : float, optional
        Expert level (percent) to use instead of the selection.
    blend : bool
        Blend the two experts bracketing the noise level.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    finetune : bool
        ``inputnode.experts_dir`` comes from a fine-tuning node (recorded in the sidecar).
    omp_nthreads : int
        Threads per node (torch and numba).
    mem_gb : float, optional
        Memory budget of this image's nodes (GB): the heavy stages work in slabs and tiles
        that fit it (:mod:`bids_auton2n.denoise.memory`), and the scheduler reserves it.
    name : str
        Workflow name.

    Inputs
    ------
    in_file
        Raw anatomical image.
    experts_dir
        Expert registry directory (left undefined: shipped experts).

    Outputs
    -------
    out_file
        Denoised image (float32, voxel grid and affine of the input; see
        :data:`~bids_auton2n.denoise.pipeline.KEPT_FROM_SOURCE`).
    noise_image
        Input minus denoised.
    out_report
        Before/after SVG: noisy and denoised rows over the same cuts, then a flicker.
    residual_report
        SVG of the residual on +/- 3 sigma, with a colour bar.
    summary_report
        HTML fragment: noise estimate, experts, options, quality measures before and
        after (those of the group table) and the structure removed, flagged when high.
    out_json
        Provenance record (also as ``metadata`` dict for the sidecar).
    noise_percent
        Noise level in percent (feeds the optional fine-tuning node).
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["in_file", "experts_dir"]),
                        name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=[
            "out_file", "noise_image", "out_report", "residual_report", "summary_report",
            "out_json", "metadata", "noise_percent",
        ]),
        name="outputnode",
    )
    budget = {"mem_gb": mem_gb} if mem_gb else {}
    estimate = pe.Node(EstimateNoise(contrast=contrast, omp_nthreads=omp_nthreads, **budget),
                       name="estimate_noise", n_procs=omp_nthreads, **budget)
    if noise_level is not None:
        estimate.inputs.noise_level = noise_level
    select = pe.Node(SelectExperts(blend=blend), name="select_experts")
    if expert is not None:
        select.inputs.expert = expert
    cnn = pe.Node(CNNDenoise(tta=tta, device=device, omp_nthreads=omp_nthreads, **budget),
                  name="cnn_denoise", n_procs=omp_nthreads, **budget)
    fuse = pe.Node(FuseRINLM(fusion=fusion, guard=guard, omp_nthreads=omp_nthreads, **budget),
                   name="rinlm_fusion", n_procs=omp_nthreads, **budget)
    provenance = pe.Node(DenoiseProvenance(tta=tta, fusion=fusion, guard=guard, finetuned=finetune),
                         name="provenance")
    figures = pe.Node(DenoisingFigures(), name="figures")
    summary = pe.Node(DenoiseSummary(), name="summary")
    iqms = pe.Node(ComputeIQMs(contrast=contrast), name="iqms")

    workflow.connect([
        (inputnode, estimate, [("in_file", "in_file")]),
        (inputnode, select, [("experts_dir", "experts_dir")]),
        (estimate, select, [("percent", "percent")]),
        (inputnode, cnn, [("in_file", "in_file"), ("experts_dir", "experts_dir")]),
        (estimate, cnn, [("mask_file", "mask_file"), ("out_json", "noise_json")]),
        (select, cnn, [("out_json", "experts_json")]),
        (inputnode, fuse, [("in_file", "in_file")]),
        (estimate, fuse, [("sigma", "sigma")]),
        (cnn, fuse, [("out_file", "cnn_file")]),
        (inputnode, provenance, [("in_file", "source_file")]),
        (estimate, provenance, [("out_json", "noise_json"), ("runtime_s", "estimate_s")]),
        (select, provenance, [("out_json", "experts_json")]),
        (cnn, provenance, [("device", "device"), ("runtime_s", "cnn_s")]),
        (fuse, provenance, [("out_file", "denoised_file"), ("runtime_s", "rinlm_s")]),
        (inputnode, figures, [("in_file", "in_file")]),
        (estimate, figures, [("mask_file", "mask_file"), ("sigma", "sigma")]),
        (fuse, figures, [("out_file", "denoised_file"), ("noise_image", "noise_image")]),
        (inputnode, iqms, [("in_file", "source_file")]),
        (fuse, iqms, [("out_file", "denoised_file")]),
        (iqms, summary, [("out_json", "iqms_json")]),
        (provenance, summary, [("out_json", "provenance_json")]),
        (estimate, outputnode, [("percent", "noise_percent")]),
        (fuse, outputnode, [("out_file", "out_file"), ("noise_image", "noise_image")]),
        (figures, outputnode, [("before_after", "out_report"),
                               ("residual", "residual_report")]),
        (summary, outputnode, [("out_report", "summary_report")]),
        (provenance, outputnode, [("out_json", "out_json"), ("metadata", "metadata")]),
    ])  # fmt:skip
    return workflow
