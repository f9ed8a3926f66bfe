"""PSNR of an expert on a real scan it was not trained on, with Gaussian noise added to a level.

The scan is divided by its reference-tissue intensity, Gaussian noise of std
``sqrt(max(level**2 - p0**2, 0)) / 100`` (``p0``: the scan's own estimated
noise) is added with a fixed seed, the noisy scan is denoised whole
(:func:`~bids_auton2n.denoise.inference.cnn_denoise`), and the PSNR of the noisy
and of the denoised scan against the scan *before* the added noise is measured
inside the head mask, with peak 1.0 (the reference tissue).  The reference still
carries its own noise ``p0``, so the figures are lower bounds of the PSNR
against a clean image and are only comparable between methods on the same scan,
level and seed.

Usage::

    python -m bids_auton2n.train.heldout --registry DIR --scan seg3D_MR.nii.gz:T1w --level 5
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np

from ..denoise.experts import ExpertRegistry
from ..denoise.inference import cnn_denoise, resolve_device
from .curriculum import load_volumes
from .data import TrainingVolume, added_noise_std


def heldout_psnr(model, volume: TrainingVolume, level: float, *, seed: int = 0, tta: bool = False,
                 device: str = "auto") -> dict:
    """PSNR (dB) of the noisy and denoised ``volume`` at ``level`` % against the scan itself.

    Returns
    -------
    dict
        ``level``, ``added_std`` (network units), ``psnr_noisy_db``, ``psnr_denoised_db``,
        ``gain_db``.
    """
    std = added_noise_std(level, volume.noise_percent)
    rng = np.random.default_rng([int(seed), int(round(100 * level))])
    noisy = (volume.image + std * rng.standard_normal(volume.image.shape)).astype(np.float32)
    denoised = cnn_denoise(noisy, [(model, 1.0)], tta=tta, device=resolve_device(device),
                           mask=volume.mask)
    inside = volume.mask

    def psnr(estimate):
        mse = float(np.mean((estimate[inside] - volume.image[inside]) ** 2, dtype=np.float64))
        return 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf")

    noisy_db, denoised_db = psnr(noisy), psnr(denoised)
    return {"scan": volume.name, "level": float(level), "intrinsic_noise_percent":
            round(volume.noise_percent, 3), "added_std": std, "tta": tta,
            "psnr_noisy_db": round(noisy_db, 3), "psnr_denoised_db": round(denoised_db, 3),
            "gain_db": round(denoised_db - noisy_db, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bids_auton2n.train.heldout",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--registry", help="registry directory (default: shipped experts)")
    parser.add_argument("--expert", type=float, help="expert level (default: same as --level)")
    parser.add_argument("--scan", required=True, help="FILE[:CONTRAST] of a held-out real scan")
    parser.add_argument("--level", type=float, nargs="+", default=[5.0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tta", action="store_true")
    parser.add_argument("--work-dir", help="pair cache")
    args = parser.parse_args(argv)
    registry = ExpertRegistry(args.registry)
    volume = load_volumes([args.scan], work_dir=args.work_dir)[0]
    for level in args.level:
        expert = args.expert if args.expert is not None else level
        figures = heldout_psnr(registry.load(expert), volume, level, seed=args.seed, tta=args.tta)
        print(json.dumps({"expert": expert, **figures}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
