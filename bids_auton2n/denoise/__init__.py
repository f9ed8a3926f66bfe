"""Denoising algorithms: numpy / numba / torch, arrays in and arrays out (no Nipype, no files)."""

#: BIDS suffixes of the anatomical contrasts the app denoises (each has a reference tissue in
#: :data:`bids_auton2n.denoise.noise.REFERENCE_TISSUE`).
CONTRASTS = ("T1w", "T2w", "FLAIR", "PDw")
