"""Registry of the Auto-N2N noise-level experts (paper section 2.4).

Weights live in a directory holding ``manifest.json`` and one ``.pt`` state dict
per expert.  Manifest format (``format`` 1)::

    {"format": 1,
     "architecture": "ResidualDenoiser3D",
     "parameters": 69745,
     "experts": [{"level": 1.0, "file": "expert_01pct.pt", "sha256": "...",
                  "training_data": "...", "command": "...", "revision": "...", ...}]}

``level`` is the noise level in percent of the reference-tissue intensity the
expert was fine-tuned for.  Every load verifies the SHA-256 of the file and
loads it with ``torch.load(weights_only=True)`` into a strict state dict; any
problem raises :class:`ExpertWeightsError`.  There is no fallback to random
weights: a denoiser silently running an untrained network would return a
corrupted image.

References
----------
.. [1] S. Morell-Ortega et al., "Auto-N2N: Self-supervised MRI Denoising using
   Synthetic Pair Generation and Mixture of Experts", section 2.4.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib.resources
import json
import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .network import ResidualDenoiser3D, count_parameters

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = 1
ARCHITECTURE = ResidualDenoiser3D.__name__
#: Provenance every expert entry must record.
REQUIRED_PROVENANCE = ("training_data", "command", "revision")
#: Levels closer than this (percent) are the same level.
LEVEL_TOLERANCE = 1e-6


class ExpertWeightsError(RuntimeError):
    """The expert weights are missing, corrupt or do not fit the network."""


@dataclass(frozen=True)
class ExpertChoice:
    """One selected expert: its noise ``level`` (percent) and blending ``weight``."""

    level: float
    weight: float


def default_root() -> Path:
    """Directory of the experts shipped with the package (``bids_auton2n/data/experts``)."""
    return Path(str(importlib.resources.files("bids_auton2n") / "data" / "experts"))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes.

    Parameters
    ----------
    path : str or os.PathLike
        The file.
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expert_filename(level: float) -> str:
    """File name of the expert for ``level`` percent: ``expert_01pct.pt``, ``expert_2p5pct.pt``.

    Parameters
    ----------
    level : float
        Noise level of the expert, percent.
    """
    if float(level).is_integer():
        return f"expert_{int(level):02d}pct.pt"
    return f"expert_{float(level):g}pct.pt".replace(".", "p", 1)


#: Noise level of the implicit identity expert that every registry has: below its lowest
#: trained level the lowest expert is blended with the input itself, so an (almost) clean image
#: comes out (almost) unchanged instead of being smoothed at the lowest expert's strength.
IDENTITY_LEVEL = 0.0
IDENTITY_SHA256 = "identity"


class IdentityExpert(nn.Module):
    """The 0 % expert. Returns a copy: MONAI's sliding window scales predictions in place."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()


class ExpertRegistry:
    """Noise-level experts described by a ``manifest.json``.

    Besides the trained experts, level :data:`IDENTITY_LEVEL` is the identity (no weights).

    Parameters
    ----------
    root : path-like, optional
        Directory holding ``manifest.json`` and the weight files; defaults to the
        experts shipped with the package (:func:`default_root`).

    Raises
    ------
    ExpertWeightsError
        If the manifest is missing, unreadable, of another format or
        architecture, or lists no experts.
    """

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root) if root is not None else default_root()
        self.manifest_path = self.root / MANIFEST_NAME
        self.manifest = _read_manifest(self.manifest_path)
        entries = self.manifest["experts"]
        self._entries = sorted(entries, key=lambda entry: float(entry["level"]))
        self.levels: list[float] = [float(entry["level"]) for entry in self._entries]

    def __repr__(self) -> str:
        return f"ExpertRegistry(root={str(self.root)!r}, levels={self.levels})"

    @property
    def label(self) -> str:
        """Name of this registry for provenance records, free of this machine's paths.

        ``"shipped (bids_auton2n/data/experts)"`` for the package's own experts, else the
        folder's name; the recorded SHA-256 of each expert identifies the weights.
        """
        if self.root.resolve() == default_root().resolve():
            return "shipped (bids_auton2n/data/experts)"
        return self.root.name

    def entry(self, level: float) -> dict:
        """Manifest entry (file, sha256, provenance) of the expert at ``level``."""
        for known, entry in zip(self.levels, self._entries):
            if abs(known - float(level)) <= LEVEL_TOLERANCE:
                return dict(entry)
        raise ExpertWeightsError(
            f"{self.manifest_path}: no expert for noise level {level} % (available: {self.levels})"
        )

    def path(self, level: float) -> Path:
        """Path of the weight file of the expert at ``level``."""
        return self.root / self.entry(level)["file"]

    def sha256(self, level: float) -> str:
        """Recorded SHA-256 of the expert at ``level`` (``"identity"`` for the identity)."""
        if float(level) == IDENTITY_LEVEL:
            return IDENTITY_SHA256
        return self.entry(level)["sha256"]

    def load(self, level: float, device: str | torch.device = "cpu") -> nn.Module:
        """Verified :class:`ResidualDenoiser3D` of the expert at ``level``, in eval mode.

        Raises
        ------
        ExpertWeightsError
            Missing file, SHA-256 mismatch, unloadable file, or state dict
            whose keys / shapes do not match the network.

        The identity level gives :class:`IdentityExpert`.
        """
        if float(level) == IDENTITY_LEVEL:
            return IdentityExpert().to(device)
        entry = self.entry(level)
        path = self.root / entry["file"]
        if not path.is_file():
            raise ExpertWeightsError(f"{path}: expert weight file for {level} % is missing")
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            raise ExpertWeightsError(
                f"{path}: SHA-256 mismatch (manifest {entry['sha256']}, file {actual}); "
                "the weights are corrupt or were replaced"
            )
        try:
            state_dict = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises many types for corrupt pickles / zips
            raise ExpertWeightsError(f"{path}: cannot load weights ({error})") from error
        model = ResidualDenoiser3D()
        _load_strict(model, state_dict, path)
        return model.to(device).eval()

    def nearest_level(self, percent: float) -> float:
        """The trained level nearest to ``percent`` (ties go to the lower level)."""
        return min(self.levels, key=lambda level: (abs(level - float(percent)), level))

    def select(self, percent: float, blend: bool = False) -> list[ExpertChoice]:
        """Experts to use for an estimated noise level of ``percent`` %.

        Parameters
        ----------
        percent : float
            Estimated noise level (percent of the reference-tissue intensity).
        blend : bool
            False: the single nearest level (ties go to the lower level, the
            expert that smooths less).  True: the two levels bracketing
            ``percent``, linearly weighted (weights sum to 1); clamped to the
            highest expert above the range.  Below the lowest trained level both
            modes blend the lowest expert with the identity, linearly in ``percent``.

        Returns
        -------
        list of ExpertChoice
            One or two choices with weights summing to 1.
        """
        value = float(percent)
        if not math.isfinite(value):
            raise ValueError(f"noise level must be finite, got {percent!r}")
        levels = self.levels
        if value < levels[0]:
            lowest_weight = max(value, 0.0) / levels[0]
            choices = [ExpertChoice(levels[0], lowest_weight),
                       ExpertChoice(IDENTITY_LEVEL, 1.0 - lowest_weight)]
            return [choice for choice in choices if choice.weight > 0]
        if not blend:
            return [ExpertChoice(self.nearest_level(value), 1.0)]
        if value >= levels[-1]:
            return [ExpertChoice(levels[-1], 1.0)]
        upper_index = bisect.bisect_left(levels, value)
        lower, upper = levels[upper_index - 1], levels[upper_index]
        if abs(upper - value) <= LEVEL_TOLERANCE:
            return [ExpertChoice(upper, 1.0)]
        upper_weight = (value - lower) / (upper - lower)
        return [ExpertChoice(lower, 1.0 - upper_weight), ExpertChoice(upper, upper_weight)]


def _read_manifest(path: Path) -> dict:
    if not path.is_file():
        raise ExpertWeightsError(
            f"{path}: expert manifest not found (no trained experts installed here; "
            "train them with bids_auton2n-train or pass the directory of a trained registry)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ExpertWeightsError(f"{path}: unreadable expert manifest ({error})") from error
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ExpertWeightsError(f"{path}: unsupported manifest format (expected {MANIFEST_FORMAT})")
    if manifest.get("architecture") != ARCHITECTURE:
        raise ExpertWeightsError(
            f"{path}: architecture {manifest.get('architecture')!r} is not {ARCHITECTURE!r}"
        )
    expected_parameters = count_parameters(ResidualDenoiser3D())
    if manifest.get("parameters") != expected_parameters:
        raise ExpertWeightsError(
            f"{path}: manifest says {manifest.get('parameters')} parameters, "
            f"this {ARCHITECTURE} has {expected_parameters}"
        )
    experts = manifest.get("experts")
    if not isinstance(experts, list) or not experts:
        raise ExpertWeightsError(f"{path}: manifest lists no experts")
    for entry in experts:
        if not isinstance(entry, dict) or not {"level", "file", "sha256"} <= entry.keys():
            raise ExpertWeightsError(f"{path}: expert entry lacks level/file/sha256: {entry!r}")
    return manifest


def _load_strict(model: nn.Module, state_dict, path: Path) -> None:
    if not isinstance(state_dict, dict) or not all(
        isinstance(value, torch.Tensor) for value in state_dict.values()
    ):
        raise ExpertWeightsError(f"{path}: not a state dict of tensors")
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise ExpertWeightsError(
            f"{path}: weights do not fit {ARCHITECTURE} ({str(error).splitlines()[0]} ...)"
        ) from error


def _atomic_write(path: Path, write) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_manifest_entry(
    root: str | os.PathLike, level: float, state_dict: dict, provenance: dict
) -> Path:
    """Save an expert's weights (float32) and record it in ``root/manifest.json``.

    Used by the training code.  The state dict is first loaded strictly into a
    :class:`ResidualDenoiser3D` (so only weights that fit are ever written), then
    saved as float32 CPU tensors; the manifest entry for ``level`` is created or
    replaced with the file name, its SHA-256 and ``provenance``.  Both files are
    written atomically (temporary file + rename).

    Parameters
    ----------
    root : path-like
        Registry directory (created if needed).
    level : float
        Noise level in percent the expert was trained for (> 0).
    state_dict : dict
        ``model.state_dict()`` of a :class:`ResidualDenoiser3D`.
    provenance : dict
        JSON-able record; must contain ``training_data``, ``command`` and
        ``revision`` (may add e.g. ``epochs``, ``loss``, ``initialised_from``).

    Returns
    -------
    pathlib.Path
        Path of the written weight file.
    """
    level = float(level)
    if not math.isfinite(level) or level <= 0:
        raise ValueError(f"expert level must be a finite percentage > 0, got {level!r}")
    missing = [key for key in REQUIRED_PROVENANCE if key not in provenance]
    if missing:
        raise ValueError(f"provenance lacks {missing} (required: {list(REQUIRED_PROVENANCE)})")
    reserved = {"level", "file", "sha256"} & provenance.keys()
    if reserved:
        raise ValueError(f"provenance must not set {sorted(reserved)}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    weights = {
        name: tensor.detach().to("cpu", torch.float32).contiguous().clone()
        for name, tensor in state_dict.items()
    }
    model = ResidualDenoiser3D()
    _load_strict(model, weights, root / expert_filename(level))

    weight_path = root / expert_filename(level)
    _atomic_write(weight_path, lambda temporary: torch.save(weights, temporary))

    manifest_path = root / MANIFEST_NAME
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
    else:
        manifest = {
            "format": MANIFEST_FORMAT,
            "architecture": ARCHITECTURE,
            "parameters": count_parameters(model),
            "experts": [],
        }
    others = [
        entry
        for entry in manifest["experts"]
        if abs(float(entry["level"]) - level) > LEVEL_TOLERANCE
    ]
    entry = {"level": level, "file": weight_path.name, "sha256": sha256_file(weight_path)}
    entry.update(provenance)
    manifest["experts"] = sorted(others + [entry], key=lambda item: float(item["level"]))
    _atomic_write(
        manifest_path,
        lambda temporary: Path(temporary).write_text(json.dumps(manifest, indent=2) + "\n"),
    )
    return weight_path
