"""Writing derivatives and reportlets (all data sinks of the app live here)."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.bids import DerivativesDataSink, OptionalDerivativesDataSink


def init_ds_denoised_wf(*, output_dir: str, write_noise_map: bool = False,
                        with_sigma_map: bool = True, name: str = "ds_denoised_wf"):
    """Save the denoised image (and optionally its noise maps) with its JSON sidecar.

    Parameters
    ----------
    output_dir : str
        Root of the derivatives dataset.
    write_noise_map : bool
        Also save the local noise sigma map as ``desc-noise`` (when ``with_sigma_map``) and
        input minus output as ``desc-residual``.
    with_sigma_map : bool
        A noise map exists (the noise is estimated, not given): ``inputnode.sigma_map``.
    name : str
        Workflow name.

    Inputs
    ------
    source_file
        Raw BIDS image (entities are taken from its name: ses, acq, rec, run, suffix).
    out_file
        Denoised image.
    noise_image
        Residual image.
    sigma_map
        Local noise sigma map (image units).
    metadata
        Sidecar content (provenance, Sources, SkullStripped, carried metadata).

    Outputs
    -------
    denoised
        Path of the written ``desc-denoised`` image.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["source_file", "out_file", "noise_image", "sigma_map",
                                      "metadata"]),
        name="inputnode",
    )
    outputnode = pe.Node(niu.IdentityInterface(fields=["denoised"]), name="outputnode")
    ds_denoised = pe.Node(
        # check_hdr=False: niworkflows would reset qform/sform codes to 1 ("scanner"); the
        # derivative keeps every geometry field of its source (save_like wrote them)
        DerivativesDataSink(base_directory=output_dir, desc="denoised", compress=True,
                            check_hdr=False),
        name="ds_denoised",
        run_without_submitting=True,
    )
    workflow.connect([
        (inputnode, ds_denoised, [("source_file", "source_file"), ("out_file", "in_file"),
                                  ("metadata", "meta_dict")]),
        (ds_denoised, outputnode, [("out_file", "denoised")]),
    ])  # fmt:skip
    if write_noise_map:
        ds_residual = pe.Node(
            DerivativesDataSink(
                base_directory=output_dir, desc="residual", compress=True, check_hdr=False,
                Description="Residual of the denoising: input minus denoised image.",
            ),
            name="ds_residual",
            run_without_submitting=True,
        )
        workflow.connect([
            (inputnode, ds_residual, [("source_file", "source_file"), ("noise_image", "in_file")]),
        ])  # fmt:skip
    if write_noise_map and with_sigma_map:
        ds_noise = pe.Node(
            DerivativesDataSink(
                base_directory=output_dir, desc="noise", compress=True, check_hdr=False,
                Description="Local noise level: the standard deviation of the noise at each "
                "voxel (Gaussian sigma of the real and imaginary channels), image units, "
                "estimated from the image and its synthetic Noise2Noise pair.",
                Units="same as the input image",
            ),
            name="ds_noise",
            run_without_submitting=True,
        )
        workflow.connect([
            (inputnode, ds_noise, [("source_file", "source_file"), ("sigma_map", "in_file")]),
        ])  # fmt:skip
    return workflow


def init_ds_reportlets_wf(*, output_dir: str, with_noise_map: bool = False,
                          name: str = "ds_reportlets_wf"):
    """Save the reportlets of one image under ``sub-<label>/figures/``.

    Parameters
    ----------
    output_dir : str
        Root of the derivatives dataset (the report assembler reads figures there).
    with_noise_map : bool
        Also save the mosaic of the local noise map (``desc-noisemap``).
    name : str
        Workflow name.

    Inputs
    ------
    source_file
        Raw BIDS image (names the figures).
    before_after
        Flicker SVG, noisy vs denoised (``desc-denoising``).
    residual
        Mosaic SVG of the residual (``desc-residual``).
    summary
        HTML fragment with noise estimate and experts (``desc-summary``).
    noise_map
        SVG of the local noise map (``desc-noisemap``), with ``with_noise_map``.
    """
    workflow = pe.Workflow(name=name)
    fields = ["before_after", "residual", "summary"] + (["noise_map"] if with_noise_map else [])
    inputnode = pe.Node(niu.IdentityInterface(fields=["source_file", "before_after", "residual",
                                                      "summary", "noise_map"]),
                        name="inputnode")
    descs = {"before_after": "denoising", "residual": "residual", "summary": "summary",
             "noise_map": "noisemap"}
    for field in fields:
        sink = pe.Node(
            DerivativesDataSink(base_directory=output_dir, desc=descs[field], datatype="figures"),
            name=f"ds_report_{field}",
            run_without_submitting=True,
        )
        workflow.connect([
            (inputnode, sink, [("source_file", "source_file"), (field, "in_file")]),
        ])  # fmt:skip
    return workflow


def init_ds_transforms_wf(*, output_dir: str, anat_files: list[str], contrast: str,
                          name: str = "ds_transforms_wf"):
    """Save the rigid transform of every run of a repeat group to the group's grid.

    Named as sMRIPrep names the transforms of its T1w runs into their merged reference:
    ``<run entities>_from-orig_to-<suffix>_mode-image_xfm.txt`` (ITK text; ``orig`` is the
    run's own space, ``<suffix>`` the space of the combined image, the first run's grid).

    Parameters
    ----------
    output_dir : str
        Root of the derivatives dataset.
    anat_files : list of str
        The runs (name the transforms).
    contrast : str
        Suffix of the runs (the ``to`` entity).
    name : str

    Inputs
    ------
    transforms
        One ITK transform per run, in the order of ``anat_files``.

    Outputs
    -------
    transforms
        Paths of the written transforms.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["transforms"]), name="inputnode")
    outputnode = pe.Node(niu.IdentityInterface(fields=["transforms"]), name="outputnode")
    merge = pe.Node(niu.Merge(len(anat_files)), name="merge_transforms")
    for index, anat_file in enumerate(anat_files):
        pick = pe.Node(niu.Select(index=index), name=f"pick_transform_{index}")
        sink = pe.Node(
            DerivativesDataSink(base_directory=output_dir, source_file=anat_file, suffix="xfm",
                                mode="image", to=contrast, **{"from": "orig"}),
            name=f"ds_transform_{index}", run_without_submitting=True)
        workflow.connect([
            (inputnode, pick, [("transforms", "inlist")]),
            (pick, sink, [("out", "in_file")]),
            (sink, merge, [("out_file", f"in{index + 1}")]),
        ])  # fmt:skip
    workflow.connect(merge, "out", outputnode, "transforms")
    return workflow


def init_ds_combined_wf(*, output_dir: str, anat_files: list[str], name: str = "ds_combined_wf"):
    """Save the combined image of a repeat group (nothing when the group fell back).

    Its name has the entities common to the runs (niworkflows' sink drops the others), as
    sMRIPrep names its merge of several T1w runs: ``sub-01_ses-1_desc-denoised_T1w``.

    Parameters
    ----------
    output_dir : str
    anat_files : list of str
        The runs of the group.
    name : str

    Inputs
    ------
    combined_file
        List holding the combined image, or empty.
    metadata
        Its sidecar content.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(niu.IdentityInterface(fields=["combined_file", "metadata"]),
                        name="inputnode")
    sink = pe.Node(
        OptionalDerivativesDataSink(base_directory=output_dir, source_file=anat_files,
                                    desc="denoised", compress=True),
        name="ds_combined", run_without_submitting=True)
    workflow.connect([
        (inputnode, sink, [("combined_file", "in_file"), ("metadata", "meta_dict")]),
    ])  # fmt:skip
    return workflow


def init_ds_repeats_reportlets_wf(*, output_dir: str, anat_files: list[str],
                                  name: str = "ds_repeats_reportlets_wf"):
    """Save the reportlets of a repeat group under ``sub-<label>/figures/``.

    Parameters
    ----------
    output_dir : str
    anat_files : list of str
        The runs of the group (the figures get their common entities).
    name : str

    Inputs
    ------
    alignment
        Flicker first run / aligned second run with edges (``desc-alignment``).
    combined
        Flicker noisy first run / combined image (``desc-combined``; may be empty).
    combined_vs_run
        Flicker denoised first run / combined image (``desc-combinedvsrun``; may be empty).
    summary
        HTML fragment of the group (``desc-repeats``).
    """
    workflow = pe.Workflow(name=name)
    fields = {"alignment": "alignment", "combined": "combined",
              "combined_vs_run": "combinedvsrun", "summary": "repeats"}
    inputnode = pe.Node(niu.IdentityInterface(fields=list(fields)), name="inputnode")
    for field, desc in fields.items():
        sink = pe.Node(
            OptionalDerivativesDataSink(base_directory=output_dir, source_file=anat_files,
                                        desc=desc, datatype="figures"),
            name=f"ds_report_{field}", run_without_submitting=True)
        workflow.connect(inputnode, field, sink, "in_file")
    return workflow
