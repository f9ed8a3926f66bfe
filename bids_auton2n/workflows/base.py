"""Nipype workflows of the participant level.

``init_auton2n_wf`` (reads :mod:`bids_auton2n.config`) → one ``init_single_subject_wf`` per
participant → one ``init_anat_denoise_wf`` per anatomical image, which is the denoiser
(``init_denoise_wf``) followed by its reportlets:

    estimate noise → select expert(s) → CNN experts (+ flip TTA) → RI-NLM fusion
    → provenance → derivatives + reportlets

With ``--finetune`` one fine-tuning node shared by the dataset adapts the expert nearest to
the images' median noise (it estimates the noise itself) and its registry serves every CNN node.

With ``--repeats auto`` (the default) the repeated acquisitions of one image (same entities
but ``run``/``echo``, :func:`~bids_auton2n.utils.repeats.group_repeats`) go through one
``init_repeats_wf`` instead (:mod:`bids_auton2n.workflows.repeats`).

The workflows are niworkflows' ``LiterateWorkflow``: each ``__desc__`` describes what it does
with the options it was built with, and :func:`bids_auton2n.reports.boilerplate.write_boilerplate`
collects them into the run's methods text (``logs/CITATION.md``), as fMRIPrep does.
"""

from __future__ import annotations

import re
from copy import deepcopy
from pathlib import Path

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe
from niworkflows.engine.workflows import LiterateWorkflow as Workflow

from ..interfaces.denoise import (
    CNNDenoise,
    DenoiseProvenance,
    EstimateNoise,
    FineTune,
    FuseRINLM,
    SelectExperts,
    SlicePairFineTune,
)
from ..interfaces.qc import ComputeIQMs
from ..interfaces.reports import DenoiseSummary, DenoisingFigures
from ..utils.bids import file_entities
from .outputs import (
    init_ds_combined_wf,
    init_ds_denoised_wf,
    init_ds_repeats_reportlets_wf,
    init_ds_reportlets_wf,
)


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
    niworkflows.engine.workflows.LiterateWorkflow
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
    workflow = Workflow(name="auton2n_wf")
    workflow.base_dir = str(execution.work_dir)
    workflow.__desc__, workflow.__postdesc__ = _software_desc()

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
                execution.output_dir / f"sub-{subject_id}" / "log" / execution.run_uuid
            ),
            experts_dir=str(execution.experts_dir) if execution.experts_dir else None,
            tta=settings.tta,
            fusion=settings.fusion,
            guard=settings.guard,
            wiener=settings.wiener,
            noise_level=settings.noise_level,
            expert=settings.expert,
            blend=settings.blend,
            device=settings.device,
            finetune=settings.finetune,
            write_noise_map=settings.write_noise_map,
            noise_model=settings.noise_model,
            pair_source=settings.pair_source,
            slice_pair_budget_s=settings.slice_pair_budget_s,
            slice_pair_steps=settings.slice_pair_steps,
            repeats=settings.repeats,
            repeats_across_sessions=settings.repeats_across_sessions,
            repeats_method=settings.repeats_method,
            repeats_budget_s=settings.repeats_budget_s,
            repeats_steps=settings.repeats_steps,
            omp_nthreads=config.nipype.omp_nthreads,
            mem_gb=config.nipype.image_mem_gb(),
        )
        if finetune_node is not None:
            names = {workflow for workflow, _ in denoise_workflow_names(
                anat_files, repeats=settings.repeats,
                across_sessions=settings.repeats_across_sessions).values()}
            workflow.connect([
                (finetune_node, subject_wf, [("experts_dir", f"{wf_name}.inputnode.experts_dir")])
                for wf_name in sorted(names)
            ])
        else:
            workflow.add_nodes([subject_wf])  # connect() adds it in the branch above
    return workflow


def _software_desc() -> tuple[str, str]:
    """Methods text of the software (``__desc__``) and of its libraries (``__postdesc__``)."""
    from importlib.metadata import version

    from .. import __version__

    desc = (f"Anatomical images were denoised with *bids-auton2n* {__version__} [@bids_auton2n], "
            "a BIDS-App [@bidsapps] implementing Auto-N2N [@auton2n], which runs on *Nipype* "
            f"{version('nipype')} [@nipype].\n\n")
    postdesc = (
        f"The networks ran with *PyTorch* {version('torch')} [@pytorch] and the sliding-window "
        f"inference of *MONAI* {version('monai')} [@monai]; the synthetic pairs and RI-NLM are "
        f"*Numba* {version('numba')} [@numba] kernels; images were read and written with "
        f"*NiBabel* {version('nibabel')} [@nibabel] and the dataset was indexed with *PyBIDS* "
        f"{version('pybids')} [@pybids]. Denoised images keep the voxel grid, affine and header "
        "of their source.\n\n"
        "### Copyright waiver\n\n"
        "The above boilerplate text was automatically generated by bids-auton2n from the "
        "workflow that ran, with the express intention that users should copy and paste it "
        "into their manuscripts *unchanged*. It is released under the "
        "[CC0](https://creativecommons.org/publicdomain/zero/1.0/) license.\n\n"
    )
    return desc, postdesc


def _sidecar(layout, path: str) -> dict:
    """Metadata of ``path`` after BIDS inheritance (JSON-able values only)."""
    return {k: v for k, v in layout.get_metadata(path).items()
            if isinstance(v, (str, int, float, bool, list, dict, type(None)))}


def image_workflow_name(path: str) -> str:
    """Nipype-safe, unique-per-subject name of the workflow of one image.

    The file name without its extension and ``sub-<label>_``, e.g. ``anat_ses_1_T1w_wf``.

    Parameters
    ----------
    path : str
        The image.
    """
    entities = file_entities(path)
    name = Path(path).name
    stem = name[: len(name) - len(entities.get("extension", ""))]
    stem = stem.removeprefix(f"sub-{entities['subject']}_") if "subject" in entities else stem
    return "anat_" + re.sub(r"[^a-zA-Z0-9]", "_", stem) + "_wf"


def repeats_workflow_name(group) -> str:
    """Nipype-safe, unique-per-subject name of the workflow of a repeat group: the first
    run's name without the entities that vary in the group, e.g. ``repeats_ses_1_T1w_wf``.

    Parameters
    ----------
    group : bids_auton2n.utils.repeats.RepeatGroup
        A group of two or more runs.
    """
    entities = file_entities(group.reference)
    stem = image_workflow_name(group.reference).removeprefix("anat_")
    for name in group.varying:
        stem = stem.replace(f"{_FILE_KEYS[name]}_{entities[name]}_", "", 1)
    return "repeats_" + stem


#: File-name keys of the entities a repeat group may vary in.
_FILE_KEYS = {"run": "run", "echo": "echo", "session": "ses"}


def subject_groups(anat_files, *, repeats: str = "auto", across_sessions: bool = False):
    """The repeat groups of one subject's images (every image alone with ``repeats="off"``).

    Parameters
    ----------
    anat_files : list of str
        The subject's images.
    repeats : {"auto", "off"}
        ``--repeats``.
    across_sessions : bool
        ``--repeats-across-sessions``.
    """
    from ..utils.repeats import RepeatGroup, group_repeats

    if repeats == "off":
        return [RepeatGroup((f,)) for f in anat_files]
    return group_repeats(anat_files, across_sessions=across_sessions)


def denoise_workflow_names(anat_files, *, repeats: str = "auto",
                           across_sessions: bool = False) -> dict[str, tuple[str, str]]:
    """Per image: the workflow that denoises it (its own, or its repeat group's) and the name
    its sinks are named after (``ds_<name>``: its own workflow's, or
    ``<group workflow>_run<k>`` for run ``k`` of a group).

    Parameters
    ----------
    anat_files, repeats, across_sessions
        As in :func:`subject_groups`.
    """
    names = {}
    for group in subject_groups(anat_files, repeats=repeats, across_sessions=across_sessions):
        for index, path in enumerate(group.files):
            names[path] = ((repeats_workflow_name(group), _run_outputs_name(group, index))
                           if group.is_repeat else (image_workflow_name(path),) * 2)
    return names


def _run_outputs_name(group, index: int) -> str:
    return f"{repeats_workflow_name(group)}_run{index}"


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
    wiener: bool = True,
    noise_level: float | None = None,
    expert: float | None = None,
    blend: bool = False,
    device: str = "auto",
    finetune: bool = False,
    write_noise_map: bool = False,
    noise_model: str = "global",
    pair_source: str = "auto",
    slice_pair_budget_s: float | None = None,
    slice_pair_steps: int | None = None,
    repeats: str = "auto",
    repeats_across_sessions: bool = False,
    repeats_method: str = "consensus",
    repeats_budget_s: float = 600.0,
    repeats_steps: int | None = None,
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
    tta, fusion, guard, wiener, noise_level, expert, blend, device, finetune, omp_nthreads, mem_gb
        See :func:`init_anat_denoise_wf`.
    noise_model, pair_source, slice_pair_budget_s, slice_pair_steps
        See :func:`init_anat_denoise_wf`.
    write_noise_map : bool
        Also write the local noise map (``desc-noise``) and the residual (``desc-residual``).
    repeats : {"auto", "off"}
        ``auto``: repeated acquisitions of one image are denoised together
        (:func:`~bids_auton2n.workflows.repeats.init_repeats_wf`); ``off``: every image alone.
    repeats_across_sessions : bool
        Also group the repeats of different sessions.
    repeats_method : {"consensus", "n2a"}
        Fine-tuning on the aligned runs.
    repeats_budget_s : float
        Its time budget per group (seconds).
    repeats_steps : int, optional
        Its most Adam steps per group.
    name : str, optional
        Defaults to ``sub_<label>_wf``.

    Inputs
    ------
    None: the inputs are fixed at build time (one sub-workflow per image).

    Outputs
    -------
    None: derivatives and reportlets are written by the sinks.
    """
    workflow = Workflow(name=name or f"sub_{subject_id}_wf")
    singles = []
    for group in subject_groups(anat_files, repeats=repeats, across_sessions=repeats_across_sessions):
        if not group.is_repeat:
            singles.append(group.reference)
            continue
        _connect_repeats(
            workflow, group, source_metadata=source_metadata, bids_dir=bids_dir,
            output_dir=output_dir, experts_dir=experts_dir, tta=tta, fusion=fusion, guard=guard,
            wiener=wiener, noise_level=noise_level, expert=expert, device=device, finetune=finetune,
            write_noise_map=write_noise_map, method=repeats_method, budget_s=repeats_budget_s,
            max_steps=repeats_steps, omp_nthreads=omp_nthreads)
    for anat_file in singles:
        anat_wf = init_anat_denoise_wf(
            contrast=file_entities(anat_file)["suffix"],
            tta=tta,
            fusion=fusion,
            guard=guard,
            wiener=wiener,
            noise_level=noise_level,
            expert=expert,
            blend=blend,
            device=device,
            finetune=finetune,
            noise_model=noise_model,
            pair_source=pair_source,
            slice_pair_budget_s=slice_pair_budget_s,
            slice_pair_steps=slice_pair_steps,
            omp_nthreads=omp_nthreads,
            mem_gb=mem_gb,
            name=image_workflow_name(anat_file),
        )
        anat_wf.inputs.inputnode.in_file = anat_file
        anat_wf.inputs.inputnode.bids_dir = bids_dir
        anat_wf.inputs.inputnode.source_metadata = source_metadata.get(anat_file, {})
        if experts_dir and not finetune:
            anat_wf.inputs.inputnode.experts_dir = experts_dir

        ds_denoised_wf = init_ds_denoised_wf(
            output_dir=output_dir, write_noise_map=write_noise_map,
            with_sigma_map=noise_level is None, name=f"ds_{anat_wf.name}",
        )
        ds_denoised_wf.inputs.inputnode.source_file = anat_file
        ds_reportlets_wf = init_ds_reportlets_wf(
            output_dir=output_dir, with_noise_map=noise_level is None,
            name=f"ds_reportlets_{anat_wf.name}",
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
        if noise_level is None:
            workflow.connect([
                (anat_wf, ds_denoised_wf, [("outputnode.sigma_map", "inputnode.sigma_map")]),
                (anat_wf, ds_reportlets_wf, [("outputnode.noise_map_report",
                                              "inputnode.noise_map")]),
            ])  # fmt:skip
    if crashdump_dir:
        # Nipype reads the crash folder from each node's own config (as in fMRIPrep)
        workflow.config["execution"]["crashdump_dir"] = crashdump_dir
        for node in workflow._get_all_nodes():
            node.config = deepcopy(workflow.config)
    return workflow


def _connect_repeats(workflow, group, *, source_metadata, bids_dir, output_dir, experts_dir,
                     tta, fusion, guard, wiener, noise_level, expert, device, finetune,
                     write_noise_map, method, budget_s, max_steps, omp_nthreads):
    """Add a repeat group's workflow and its sinks to a subject's ``workflow``."""
    from .repeats import init_repeats_wf

    files = list(group.files)
    repeats_wf = init_repeats_wf(
        anat_files=files, contrast=file_entities(files[0])["suffix"], output_dir=output_dir,
        bids_dir=bids_dir, method=method, budget_s=budget_s, max_steps=max_steps, tta=tta,
        fusion=fusion, guard=guard, wiener=wiener, noise_level=noise_level, expert=expert,
        device=device, finetune=finetune, omp_nthreads=omp_nthreads,
        name=repeats_workflow_name(group))
    repeats_wf.inputs.inputnode.source_metadata = [source_metadata.get(f, {}) for f in files]
    if experts_dir and not finetune:
        repeats_wf.inputs.inputnode.experts_dir = experts_dir
    for index, anat_file in enumerate(files):
        ds_denoised_wf = init_ds_denoised_wf(
            output_dir=output_dir, write_noise_map=write_noise_map, with_sigma_map=False,
            name=f"ds_{_run_outputs_name(group, index)}")  # the repeats path has no sigma map
        ds_denoised_wf.inputs.inputnode.source_file = anat_file
        ds_reportlets_wf = init_ds_reportlets_wf(
            output_dir=output_dir, name=f"ds_reportlets_{_run_outputs_name(group, index)}")
        ds_reportlets_wf.inputs.inputnode.source_file = anat_file
        for field, target in (("out_files", "inputnode.out_file"),
                              ("noise_images", "inputnode.noise_image"),
                              ("metadata", "inputnode.metadata"),
                              ("out_reports", "inputnode.before_after"),
                              ("residual_reports", "inputnode.residual"),
                              ("summary_reports", "inputnode.summary")):
            pick = pe.Node(niu.Select(index=index), name=f"pick_{repeats_wf.name}_{field}_{index}")
            sink_wf = ds_denoised_wf if field in ("out_files", "noise_images", "metadata") \
                else ds_reportlets_wf
            workflow.connect([
                (repeats_wf, pick, [(f"outputnode.{field}", "inlist")]),
                (pick, sink_wf, [("out", target)]),
            ])  # fmt:skip
    ds_combined_wf = init_ds_combined_wf(output_dir=output_dir, anat_files=files,
                                         name=f"ds_combined_{repeats_wf.name}")
    ds_group_reportlets_wf = init_ds_repeats_reportlets_wf(
        output_dir=output_dir, anat_files=files, name=f"ds_reportlets_{repeats_wf.name}")
    workflow.connect([
        (repeats_wf, ds_combined_wf, [("outputnode.combined_file", "inputnode.combined_file"),
                                      ("outputnode.combined_metadata", "inputnode.metadata")]),
        (repeats_wf, ds_group_reportlets_wf, [
            ("outputnode.alignment_report", "inputnode.alignment"),
            ("outputnode.combined_report", "inputnode.combined"),
            ("outputnode.combined_vs_run_report", "inputnode.combined_vs_run"),
            ("outputnode.repeats_summary", "inputnode.summary")]),
    ])  # fmt:skip


def init_anat_denoise_wf(*, name: str = "anat_denoise_wf", **denoise_options):
    """Denoise one anatomical image and make its reportlets.

    Parameters
    ----------
    name : str
        Workflow name.
    **denoise_options
        The options of :func:`init_denoise_wf` (``contrast``, ``tta``, ``fusion``, ...).

    Inputs
    ------
    in_file, bids_dir, source_metadata, experts_dir
        Those of :func:`init_denoise_wf`.

    Outputs
    -------
    out_file, noise_image, mask_file, sigma, out_json, metadata, noise_percent, sigma_map
        Those of :func:`init_denoise_wf`.
    out_report
        Before/after SVG: noisy and denoised rows over the same cuts, then a flicker.
    residual_report
        SVG of the residual on +/- 3 sigma, with a colour bar.
    summary_report
        HTML fragment: noise estimate, experts, options, quality measures before and
        after (those of the group table) and the structure removed, flagged when high.
    noise_map_report
        SVG of the local noise map (undefined with a user-given ``noise_level``).
    """
    workflow = Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=DENOISE_INPUTS), name="inputnode")
    outputnode = pe.Node(
        niu.IdentityInterface(fields=[*DENOISE_OUTPUTS, "out_report", "residual_report",
                                      "summary_report", "noise_map_report"]),
        name="outputnode",
    )
    denoise_wf = init_denoise_wf(**denoise_options)
    figures = pe.Node(DenoisingFigures(), name="figures")
    summary = pe.Node(DenoiseSummary(), name="summary")
    iqms = pe.Node(ComputeIQMs(contrast=denoise_options["contrast"]), name="iqms")

    workflow.connect([
        (inputnode, denoise_wf, [(f, f"inputnode.{f}") for f in DENOISE_INPUTS]),
        (denoise_wf, outputnode, [(f"outputnode.{f}", f) for f in DENOISE_OUTPUTS]),
        (inputnode, figures, [("in_file", "in_file")]),
        (denoise_wf, figures, [("outputnode.out_file", "denoised_file"),
                               ("outputnode.noise_image", "noise_image"),
                               ("outputnode.mask_file", "mask_file"),
                               ("outputnode.sigma", "sigma"),
                               ("outputnode.sigma_map", "sigma_map_file"),
                               ("outputnode.noise_percent", "noise_percent")]),
        (inputnode, iqms, [("in_file", "source_file")]),
        (denoise_wf, iqms, [("outputnode.out_file", "denoised_file")]),
        (iqms, summary, [("out_json", "iqms_json")]),
        (denoise_wf, summary, [("outputnode.out_json", "provenance_json")]),
        (figures, outputnode, [("before_after", "out_report"),
                               ("residual", "residual_report"),
                               ("noise_map", "noise_map_report")]),
        (summary, outputnode, [("out_report", "summary_report")]),
    ])  # fmt:skip
    return workflow


#: Inputs and outputs of :func:`init_denoise_wf`.
DENOISE_INPUTS = ["in_file", "bids_dir", "source_metadata", "experts_dir"]
DENOISE_OUTPUTS = ["out_file", "noise_image", "mask_file", "sigma", "out_json", "metadata",
                   "noise_percent", "sigma_map"]


def init_denoise_wf(
    *,
    contrast: str,
    tta: bool = True,
    fusion: bool = True,
    guard: bool = True,
    wiener: bool = True,
    noise_level: float | None = None,
    expert: float | None = None,
    blend: bool = False,
    device: str = "auto",
    finetune: bool = False,
    noise_model: str = "global",
    pair_source: str = "auto",
    slice_pair_budget_s: float | None = None,
    slice_pair_steps: int | None = None,
    omp_nthreads: int = 1,
    mem_gb: float | None = None,
    name: str = "denoise_wf",
):
    """The app's denoiser: :func:`~bids_auton2n.denoise.pipeline.denoise_array` as Nipype nodes.

    estimate noise → select expert(s) → CNN experts (+ flip TTA) → RI-NLM fusion and guard
    → provenance (QSIPrep-style output contract: ``out_file``, ``noise_image`` and the record).

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
    wiener : bool
        Collaborative Wiener stage with the fused image as pilot.
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
    noise_model : {"auto", "global", "adaptive"}
        One noise level, or the local noise map routing the experts and giving RI-NLM and
        the guard their local sigma; ``auto`` decides by the map's spread (default
        ``global``: docs/noise-models.md).
    pair_source : {"auto", "synthetic-patches", "neighbouring-slices"}
        ``neighbouring-slices`` fine-tunes the selected expert on the image's neighbouring
        slices (NS-N2N) and applies it slice by slice; ``auto`` does so for thick slices
        (decided at run time from the header's voxel size).
    slice_pair_budget_s : float, optional
        Wall-clock budget of that fine-tuning (default 300 s).
    slice_pair_steps : int, optional
        Its step limit (machine-independent; for tests).
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
    bids_dir
        Root of the raw dataset (``Sources`` of the sidecar are BIDS URIs relative to it).
    source_metadata
        Sidecar metadata of ``in_file`` (carried into the derivative's sidecar).
    experts_dir
        Expert registry directory (left undefined: shipped experts).

    Outputs
    -------
    out_file
        Denoised image (float32, voxel grid and affine of the input; see
        :data:`~bids_auton2n.utils.io.KEPT_FROM_SOURCE`).
    noise_image
        Input minus denoised.
    mask_file
        Head mask the noise was estimated in.
    sigma
        Noise standard deviation in image units (estimated, or from ``noise_level``).
    out_json
        Provenance record (also as ``metadata`` dict for the sidecar).
    metadata
        The sidecar's content.
    noise_percent
        Noise level in percent of the reference tissue.
    sigma_map
        Local noise sigma map (image units; undefined with ``noise_level``).
    """
    workflow = Workflow(name=name)
    workflow.__desc__ = _denoise_desc(tta=tta, fusion=fusion, guard=guard, wiener=wiener,
                                      noise_level=noise_level,
                                      expert=expert, blend=blend, finetune=finetune,
                                      noise_model=noise_model, pair_source=pair_source)
    inputnode = pe.Node(niu.IdentityInterface(fields=DENOISE_INPUTS), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=DENOISE_OUTPUTS), name="outputnode")
    budget = {"mem_gb": mem_gb} if mem_gb else {}
    estimate = pe.Node(EstimateNoise(contrast=contrast, noise_model=noise_model,
                                     pair_source=pair_source, omp_nthreads=omp_nthreads, **budget),
                       name="estimate_noise", n_procs=omp_nthreads, **budget)
    if noise_level is not None:
        estimate.inputs.noise_level = noise_level
    select = pe.Node(SelectExperts(blend=blend), name="select_experts")
    if expert is not None:
        select.inputs.expert = expert
    slice_pairs = pe.Node(SlicePairFineTune(device=device, omp_nthreads=omp_nthreads, **budget),
                          name="slice_pair_finetune", n_procs=omp_nthreads, **budget)
    if slice_pair_budget_s is not None:
        slice_pairs.inputs.budget_s = slice_pair_budget_s
    if slice_pair_steps is not None:
        slice_pairs.inputs.max_steps = slice_pair_steps
    cnn = pe.Node(CNNDenoise(tta=tta, device=device, omp_nthreads=omp_nthreads, **budget),
                  name="cnn_denoise", n_procs=omp_nthreads, **budget)
    fuse = pe.Node(FuseRINLM(fusion=fusion, guard=guard, wiener=wiener, omp_nthreads=omp_nthreads,
                             **budget),
                   name="rinlm_fusion", n_procs=omp_nthreads, **budget)
    provenance = pe.Node(DenoiseProvenance(tta=tta, fusion=fusion, guard=guard, wiener=wiener,
                                           finetuned=finetune),
                         name="provenance")

    workflow.connect([
        (inputnode, estimate, [("in_file", "in_file")]),
        (inputnode, select, [("experts_dir", "experts_dir")]),
        (estimate, select, [("percent", "percent")]),
        (inputnode, slice_pairs, [("experts_dir", "experts_dir")]),
        (estimate, slice_pairs, [("finite_file", "in_file"), ("mask_file", "mask_file"),
                                 ("noise", "noise"), ("sigma", "sigma"),
                                 ("sigma_map_file", "sigma_map_file"),
                                 ("noise_model", "noise_model"), ("pair_source", "pair_source")]),
        (select, slice_pairs, [("experts", "experts")]),
        (inputnode, cnn, [("experts_dir", "experts_dir")]),
        (estimate, cnn, [("finite_file", "in_file"), ("mask_file", "mask_file"),
                         ("noise", "noise"), ("sigma", "sigma"),
                         ("sigma_map_file", "sigma_map_file"), ("noise_model", "noise_model"),
                         ("pair_source", "pair_source")]),
        (select, cnn, [("experts", "experts")]),
        (slice_pairs, cnn, [("tuned_dir", "tuned_dir")]),
        (estimate, fuse, [("finite_file", "in_file"), ("nonfinite_file", "nonfinite_file"),
                          ("sigma", "sigma"), ("sigma_map_file", "sigma_map_file"),
                          ("noise_model", "noise_model")]),
        (cnn, fuse, [("out_file", "cnn_file")]),
        (inputnode, provenance, [("in_file", "source_file"), ("bids_dir", "bids_dir"),
                                 ("source_metadata", "source_metadata")]),
        (estimate, provenance, [("noise", "noise"), ("noise_source", "noise_source"),
                                ("timings", "estimate_timings"),
                                ("noise_model_record", "noise_model_record"),
                                ("pair_source", "pair_source")]),
        (select, provenance, [("selection", "selection")]),
        (slice_pairs, provenance, [("record", "slice_pairs"), ("timings", "slice_pair_timings")]),
        (cnn, provenance, [("experts", "experts"), ("weights_sha256", "weights_sha256"),
                           ("device", "device"), ("timings", "cnn_timings")]),
        (fuse, provenance, [("out_file", "denoised_file"), ("timings", "fusion_timings")]),
        (estimate, outputnode, [("percent", "noise_percent"), ("mask_file", "mask_file"),
                                ("sigma", "sigma"), ("sigma_map_file", "sigma_map")]),
        (fuse, outputnode, [("out_file", "out_file"), ("noise_image", "noise_image")]),
        (provenance, outputnode, [("out_json", "out_json"), ("metadata", "metadata")]),
    ])  # fmt:skip
    return workflow


def _denoise_desc(*, tta, fusion, guard, wiener, noise_level, expert, blend, finetune,
                  noise_model="global", pair_source="auto") -> str:
    """Methods text of :func:`init_denoise_wf` built with these options."""
    from ..denoise.guard import MAX_RESIDUAL_RMS
    from ..denoise.wiener import BLOCK, GROUP_SIZE, SEARCH_RADIUS
    from ..utils.io import KEPT_FROM_SOURCE

    if noise_level is not None:
        noise = f"The noise level was set by the user to {noise_level:g} %"
    else:
        noise = (
            "The noise level of each image was estimated from the difference between the "
            "image and a synthetic second realization built by non-local patch matching "
            "(Auto-N2N [@auton2n]), as a standard deviation in image units and as a percentage "
            "of the intensity of the reference tissue (white matter for T1w and FLAIR, "
            "cerebrospinal fluid for T2w and PDw)"
        )
    if expert is not None:
        experts = f"the expert trained for {expert:g} % noise was used (user choice)"
    elif blend:
        experts = ("the two experts whose training noise levels bracket the estimate were "
                   "blended with linear weights")
    else:
        experts = "the expert whose training noise level is nearest to the estimate was used"
    text = [
        f"{noise}.",
        "Auto-N2N trains 3D residual convolutional networks (5 residual blocks of two "
        "3x3x3 convolutions with 16 filters, after a fixed high-pass layer) without clean "
        "references, on synthetic noisy pairs, one expert per noise level (1, 3, 5, 7 and "
        f"9 %); {experts}.",
    ]
    if finetune:
        text.append("Before denoising, the selected expert was fine-tuned self-supervisedly "
                    "on the images of this dataset (Auto-N2N synthetic pairs).")
    if noise_level is None and noise_model != "global":
        where = ("" if noise_model == "adaptive" else
                 "Where that map varied across the head (spread of its 10th to 90th percentile "
                 "above 30 % of its median), ")
        local = " and ".join(stage for stage, used in (("RI-NLM", fusion),
                                                       ("the do-no-harm guard", guard)) if used)
        text.append("A local noise map was estimated from the same difference (robust local "
                    "spread, smoothed over about 2 cm). " + where + ("each" if where else "Each")
                    + " region was denoised by the experts of its local noise level (a weighted "
                    "mix of the two nearest)"
                    + (f", and {local} used the local noise level." if local else "."))
    if pair_source != "synthetic-patches":
        which = ("Each image" if pair_source == "neighbouring-slices" else
                 "Each image with thick slices (slice spacing at least twice the in-plane "
                 "spacing)")
        text.append(f"{which} was denoised by the selected expert, trained further on the image's "
                    "own pairs of neighbouring slices (Neighbouring-Slice Noise2Noise [@nsn2n]: "
                    "reconstruction, regional-consistency and inter-slice-continuity losses, "
                    "pixels weighted by a match mask of the low-pass filtered slices), applied "
                    "slice by slice.")
    text.append(
        "The network was applied in sliding windows"
        + (", averaging its outputs over the identity and the flip of all three axes "
           "(test-time augmentation)" if tta else ", without test-time augmentation")
        + "."
    )
    if fusion:
        text.append("The network output was then averaged with a rotationally invariant "
                    "non-local means filter (RI-NLM [@manjon2012]) of the noisy image guided by "
                    "it, with a Rician noise model.")
    else:
        text.append("No RI-NLM fusion was applied (network output only).")
    if wiener:
        text.append("The image was then re-estimated from the noisy data by a collaborative "
                    "Wiener filter, the second step of BM4D [@maggioni2013], with that image as "
                    f"its pilot: blocks of {BLOCK}x{BLOCK}x{BLOCK} voxels were grouped by "
                    f"similarity in the pilot ({GROUP_SIZE} per group, searched within "
                    f"±{SEARCH_RADIUS} voxels), and each coefficient of "
                    "their 3D discrete cosine and group transforms was scaled by the Wiener gain "
                    "the pilot gives it; block means were kept from the pilot.")
    if guard:
        text.append("Wherever the removed residual (input minus output) had a local RMS "
                    f"(3x3x3 voxels) above {MAX_RESIDUAL_RMS:g} times the estimated noise "
                    "standard deviation, it was scaled down to that level and the rest given "
                    "back to the image (do-no-harm guard: what noise cannot explain is structure "
                    "[@buades2005]), for the network output before it guided RI-NLM and after "
                    "every later step.")
    text.append(f"Denoised images keep the {KEPT_FROM_SOURCE}. Where a source has no negative "
                "voxel (a magnitude image), negative output values are set to 0.")
    return " ".join(text) + "\n\n"
