"""Writing derivatives and reportlets (all data sinks of the app live here)."""

from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from ..interfaces.bids import DerivativesDataSink


def init_ds_denoised_wf(*, output_dir: str, write_noise_map: bool = False,
                        name: str = "ds_denoised_wf"):
    """Save the denoised image (and optionally its residual) with its JSON sidecar.

    Parameters
    ----------
    output_dir : str
        Root of the derivatives dataset.
    write_noise_map : bool
        Also save input minus output as ``desc-noise``.
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
    metadata
        Sidecar content (provenance, Sources, SkullStripped, carried metadata).

    Outputs
    -------
    denoised
        Path of the written ``desc-denoised`` image.
    """
    workflow = pe.Workflow(name=name)
    inputnode = pe.Node(
        niu.IdentityInterface(fields=["source_file", "out_file", "noise_image", "metadata"]),
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
        ds_noise = pe.Node(
            DerivativesDataSink(
                base_directory=output_dir, desc="noise", compress=True, check_hdr=False,
                Description="Residual of the denoising: input minus denoised image.",
            ),
            name="ds_noise",
            run_without_submitting=True,
        )
        workflow.connect([
            (inputnode, ds_noise, [("source_file", "source_file"), ("noise_image", "in_file")]),
        ])  # fmt:skip
    return workflow


def init_ds_reportlets_wf(*, output_dir: str, name: str = "ds_reportlets_wf"):
    """Save the reportlets of one image under ``sub-<label>/figures/``.

    Parameters
    ----------
    output_dir : str
        Root of the derivatives dataset (the report assembler reads figures there).
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
    """
    workflow = pe.Workflow(name=name)
    fields = ["before_after", "residual", "summary"]
    inputnode = pe.Node(niu.IdentityInterface(fields=["source_file", *fields]), name="inputnode")
    descs = {"before_after": "denoising", "residual": "residual", "summary": "summary"}
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
