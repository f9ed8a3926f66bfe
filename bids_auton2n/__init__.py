"""bids-auton2n: self-supervised denoising of anatomical MRI as a BIDS-App."""

__version__ = "0.1.0"
__packagename__ = "bids_auton2n"
__url__ = "https://github.com/bids-auton2n/bids-auton2n"
