"""``bids_auton2n-denoise``: denoise one anatomical NIfTI image outside of BIDS."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from .. import __version__
from ..denoise import CONTRASTS
from ..utils.exit_codes import (
    EXIT_CANTCREAT as EX_CANTCREAT,
    EXIT_DATAERR as EX_DATAERR,
    EXIT_NOINPUT as EX_NOINPUT,
    EXIT_SOFTWARE as EX_SOFTWARE,
    EXIT_USAGE as EX_USAGE,
)
from .parser import HelpFormatter, add_denoising_options, add_threads_option


class _Parser(argparse.ArgumentParser):
    """Usage errors exit with EX_USAGE (64), as the BIDS execution specification asks."""

    def error(self, message):
        self.print_usage(sys.stderr)
        self.exit(EX_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="bids_auton2n-denoise",
        formatter_class=HelpFormatter,
        description="Denoise a 3D anatomical MRI (T1w, T2w, FLAIR, PDw) with the Auto-N2N mixture "
                    "of experts fused with RI-NLM. The output keeps the input's "
                    "voxel grid, affine, voxel sizes and units, stored as float32; negative "
                    "values are set to 0 where the input has none (magnitude images).",
    )
    parser.add_argument("in_file", type=Path, help="noisy 3D NIfTI image")
    parser.add_argument("out_file", type=Path, nargs="?",
                        help="denoised image to write (not needed with --estimate-only)")
    parser.add_argument("--contrast", choices=CONTRASTS,
                        help="image contrast (default: the file's BIDS suffix, else T1w); "
                             "sets the reference tissue of the noise percentage")
    add_denoising_options(parser)
    parser.add_argument("--gaussian", dest="rician", action="store_false",
                        help="treat noise as Gaussian (default: Rician magnitude data)")
    add_threads_option(parser, default_help="all CPUs")
    parser.add_argument("--mem-gb", type=float, metavar="GB",
                        help="memory budget: the stages work in slabs and tiles that fit it "
                        "(default: whole volume, fastest)")
    parser.add_argument("--mask", type=Path, help="head mask (default: estimated)")
    parser.add_argument("--experts-dir", type=Path,
                        help="expert registry folder (e.g. from bids_auton2n-train --finetune)")
    parser.add_argument("--sidecar", type=Path, metavar="OUT.json",
                        help="write the noise estimate, experts, flags and timings as JSON")
    parser.add_argument("--noise-map", type=Path, metavar="OUT",
                        help="write input minus output (the removed noise)")
    parser.add_argument("--sigma-map", type=Path, metavar="OUT",
                        help="write the local noise level map (sigma, image units)")
    parser.add_argument("--estimate-only", action="store_true",
                        help="print the noise estimate as JSON and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    parser.add_argument("--version", action="version", version=f"bids-auton2n {__version__}")
    return parser


def _fail(message: str, code: int) -> int:
    print(f"bids_auton2n-denoise: error: {message}", file=sys.stderr)
    return code


def _unwritable(path: Path | None) -> str | None:
    """Why ``path`` cannot be written, checked before any work is done."""
    if path is None:
        return None
    folder = path.parent
    if not folder.is_dir():
        return f"{path}: output folder {folder} does not exist"
    if not os.access(folder, os.W_OK):
        return f"{path}: output folder {folder} is not writable"
    return None


def _missing(path: Path | None) -> str | None:
    """The one-line error of a missing input (or a broken link, an annexed file without its
    content), worded as :func:`~bids_auton2n.utils.io.load_volume` does."""
    if path is None or (path.exists() and not path.is_symlink()):
        return None
    from ..utils.inputs import unreadable_reason

    return unreadable_reason(path)


def run(argv: list[str] | None = None) -> int:
    parser = build_parser()
    opts = parser.parse_args(argv)
    if opts.out_file is None and not opts.estimate_only:
        parser.error("OUT is required unless --estimate-only is given")
    # Arguments and paths are checked before the heavy imports (torch, numba, nibabel:
    # seconds), so that a typo is reported at once.
    for source in (opts.in_file, opts.mask):
        problem = _missing(source)
        if problem:
            return _fail(problem, EX_NOINPUT)
    for target in (opts.out_file, opts.sidecar, opts.noise_map, opts.sigma_map):
        problem = _unwritable(target)
        if problem:
            return _fail(problem, EX_CANTCREAT)
    logging.basicConfig(level=logging.WARNING if opts.quiet else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    from ..utils.threads import set_threads

    set_threads(opts.omp_nthreads)
    if opts.mem_gb is not None and not opts.mem_gb > 0:
        parser.error("--mem-gb must be > 0")
    from ..denoise.memory import set_memory_limit

    set_memory_limit(opts.mem_gb)

    from ..denoise.experts import ExpertRegistry, ExpertWeightsError
    from ..denoise.pipeline import noise_sidecar
    from ..utils.atomic import write_text_atomic
    from ..utils.bids import contrast_from_filename
    from ..utils.io import InputImageError, denoise_file, estimate_file_noise

    contrast = opts.contrast or contrast_from_filename(opts.in_file)
    try:
        if opts.estimate_only:
            noise = estimate_file_noise(opts.in_file, contrast=contrast, mask_file=opts.mask)
            record = {"Source": str(opts.in_file), "Contrast": contrast,
                      "NoiseEstimate": noise_sidecar(noise, "estimated"), "SoftwareVersion": __version__}
            print(json.dumps(record, indent=2))
            if opts.sidecar:
                write_text_atomic(opts.sidecar, json.dumps(record, indent=2) + "\n")
            return 0
        registry = ExpertRegistry(opts.experts_dir) if opts.experts_dir else None
        result = denoise_file(
            opts.in_file, opts.out_file, contrast=contrast, mask_file=opts.mask,
            noise_map=opts.noise_map, sigma_map=opts.sigma_map, noise_level=opts.noise_level,
            expert=opts.expert, blend=opts.blend, tta=opts.tta, fusion=opts.fusion,
            guard=opts.guard, wiener=opts.wiener, device=opts.device, rician=opts.rician, registry=registry,
            progress=not opts.quiet, noise_model=opts.noise_model, pair_source=opts.pair_source,
            slice_pair_budget_s=opts.slice_pair_budget, slice_pair_steps=opts.slice_pair_steps,
        )
    except FileNotFoundError as exc:
        return _fail(str(exc), EX_NOINPUT)
    except InputImageError as exc:
        code = EX_NOINPUT if "no such file" in str(exc) else EX_DATAERR
        return _fail(str(exc), code)
    except ExpertWeightsError as exc:
        return _fail(str(exc), EX_SOFTWARE)
    except OSError as exc:
        return _fail(f"{exc.filename}: cannot write ({exc.strerror})", EX_CANTCREAT)
    except ValueError as exc:
        return _fail(f"{opts.in_file}: {exc}", EX_DATAERR)

    record = {"Sources": [str(opts.in_file)], "Contrast": contrast, **result.provenance()}
    if opts.sidecar:
        write_text_atomic(opts.sidecar, json.dumps(record, indent=2) + "\n")
    if not opts.quiet:
        noise = result.noise
        experts = ", ".join(f"{c.level:g}% (w={c.weight:.2f})" for c in result.experts)
        print(f"{opts.out_file}: noise {noise.percent:.2f}% of {noise.reference_tissue} "
              f"(sigma {noise.sigma:.4g}), experts {experts}, "
              f"{result.timings['total']:.1f} s", file=sys.stderr)
    return 0


def main() -> None:
    sys.exit(run())


if __name__ == "__main__":
    main()
