"""bids-auton2n: self-supervised denoising of anatomical MRI as a BIDS-App."""

__version__ = "0.1.0"
__packagename__ = "bids_auton2n"
__url__ = "https://github.com/bids-auton2n/bids-auton2n"

# Before numba, matplotlib, MONAI or Nipype is imported: a login name for a uid without
# passwd entry, writable caches under a read-only HOME, OpenMP threads that sleep when idle
# (see utils/environment.py).
from .utils.environment import prepare_environment as _prepare_environment  # noqa: E402

_prepare_environment()
