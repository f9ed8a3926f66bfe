"""Input collection, BIDS file names and derivative-dataset bookkeeping for the BIDS-App.

File names are parsed by pybids (:func:`file_entities`), nowhere by hand. Exit codes come from
:mod:`bids_auton2n.utils.exit_codes`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .. import __url__, __version__
from ..denoise import CONTRASTS
from .exit_codes import (  # noqa: F401 (EXIT_FAILURE, EXIT_CANTCREAT: used via this module)
    EXIT_CANTCREAT,
    EXIT_FAILURE,
    EXIT_INVALID_BIDS,
    EXIT_NOINPUT,
    EXIT_NOTHING_SELECTED,
    EXIT_UNKNOWN_LEVEL,
    EXIT_USAGE,
)
from .atomic import write_text_atomic

#: Top-level folders that hold no raw data (BIDS exempts them; pybids does not index them).
EXEMPT_FOLDERS = ("derivatives", "sourcedata", "code", "stimuli", "models")


#: Name of the raw dataset in ``DatasetLinks`` (so ``Sources`` read ``bids:raw:sub-...``).
RAW_DATASET_LINK = "raw"


class BIDSAppError(RuntimeError):
    """An error the command line reports in one line, with its exit code.

    Parameters
    ----------
    message : str
        The line to print.
    exit_code : int
        One of :mod:`bids_auton2n.utils.exit_codes`.
    """

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def check_paths(bids_dir: Path, output_dir: Path, work_dir: Path | None = None) -> None:
    """Refuse a missing/non-BIDS input and outputs that would write into the input dataset.

    Writing is allowed inside the input dataset only under its ``derivatives/`` folder,
    as BIDS reserves that place for derived data.

    Parameters
    ----------
    bids_dir : Path
        Input dataset.
    output_dir : Path
        Derivatives folder.
    work_dir : Path, optional
        Nipype's working folder.

    Raises
    ------
    BIDSAppError
        Missing input (66), not a BIDS dataset (16), an output inside the input (64).
    """
    bids_dir, output_dir = Path(bids_dir).absolute(), Path(output_dir).absolute()
    if not bids_dir.is_dir():
        raise BIDSAppError(f"{bids_dir}: input BIDS directory does not exist", EXIT_NOINPUT)
    if not (bids_dir / "dataset_description.json").is_file():
        raise BIDSAppError(
            f"{bids_dir}: not a BIDS dataset (no dataset_description.json at its root)",
            EXIT_INVALID_BIDS,
        )
    from .inputs import sidecar_problem

    problem = sidecar_problem(bids_dir / "dataset_description.json")
    if problem:
        raise BIDSAppError(f"not a valid BIDS dataset: {problem}", EXIT_INVALID_BIDS)
    for label, path in (("output", output_dir), ("work", work_dir)):
        if path is None:
            continue
        path = Path(path).absolute()
        if _is_within(path, bids_dir) and not _is_within(path, bids_dir / "derivatives"):
            raise BIDSAppError(
                f"{path}: the {label} directory is inside the input dataset {bids_dir}; "
                f"use a folder outside it or under {bids_dir / 'derivatives'}",
                EXIT_USAGE,
            )


def _is_within(path: Path, parent: Path) -> bool:
    path, parent = Path(os.path.realpath(path)), Path(os.path.realpath(parent))
    return path == parent or parent in path.parents


def validate_dataset(bids_dir: Path, *, max_listed: int = 5) -> None:
    """Check every file name of ``bids_dir`` against the BIDS schema, offline.

    Uses the Python ``bids_validator`` (file-name rules of the BIDS schema), which works
    without network access or Node.js; the full JavaScript/Deno validator is not
    required. Folders BIDS exempts (``derivatives``, ``sourcedata``, ``code``, ``stimuli``,
    hidden files) and paths listed in ``.bidsignore`` are skipped.

    Parameters
    ----------
    bids_dir : Path
        Input dataset.
    max_listed : int
        How many of the invalid names the error message lists.

    Raises
    ------
    BIDSAppError
        With exit code 16, naming the invalid files.
    """
    from bids_validator import BIDSValidator

    bids_dir = Path(bids_dir).absolute()
    ignored = _bidsignore_patterns(bids_dir)
    validator = BIDSValidator()
    invalid = []
    for path in sorted(bids_dir.rglob("*")):
        relative = path.relative_to(bids_dir)
        if path.is_dir() or relative.parts[0] in EXEMPT_FOLDERS:
            continue
        if any(part.startswith(".") for part in relative.parts):
            continue
        if any(relative.match(pattern) for pattern in ignored):
            continue
        if not validator.is_bids("/" + relative.as_posix()):
            invalid.append(relative.as_posix())
    if invalid:
        listed = ", ".join(invalid[:max_listed]) + (" ..." if len(invalid) > max_listed else "")
        raise BIDSAppError(
            f"{bids_dir}: BIDS validation failed, {len(invalid)} file(s) with names outside "
            f"the BIDS specification: {listed} (rename them, list them in .bidsignore, or "
            "pass --skip-bids-validation)",
            EXIT_INVALID_BIDS,
        )


def _bidsignore_patterns(bids_dir: Path) -> list[str]:
    ignore_file = bids_dir / ".bidsignore"
    if not ignore_file.is_file():
        return []
    lines = (line.strip() for line in ignore_file.read_text().splitlines())
    return [line.strip("/") for line in lines if line and not line.startswith("#")]


def make_layout(bids_dir: Path, *, database_dir: Path | None = None, ignore=()):
    """Index ``bids_dir`` with pybids (validation is :func:`validate_dataset`'s job).

    Parameters
    ----------
    bids_dir : Path
        Input dataset.
    database_dir : Path, optional
        Where pybids keeps its index (default: in memory).
    ignore : sequence of Path
        Files left out of the index, e.g. the sidecars :func:`invalid_sidecars` found
        (pybids raises on the first malformed JSON file of a dataset).
    """
    import re

    from bids.layout import BIDSLayout, BIDSLayoutIndexer
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    bids_dir = Path(bids_dir).absolute()
    skipped = [re.compile("^/" + re.escape(Path(path).absolute().relative_to(bids_dir)
                                           .as_posix()) + "$") for path in ignore]
    return BIDSLayout(
        str(bids_dir),
        validate=False,
        indexer=BIDSLayoutIndexer(validate=False,
                                  ignore=[*DEFAULT_LOCATIONS_TO_IGNORE, *skipped]),
        database_path=str(database_dir) if database_dir else None,
        reset_database=True,
    )


def invalid_sidecars(bids_dir: Path) -> dict[Path, str]:
    """JSON files of the raw dataset that cannot be read as BIDS metadata, with why.

    Parameters
    ----------
    bids_dir : Path
        Input dataset (its exempt folders, :data:`EXEMPT_FOLDERS`, and hidden ones skipped).

    Returns
    -------
    dict
        Path of each bad sidecar to a one-line reason.
    """
    from .inputs import sidecar_problem

    bids_dir = Path(bids_dir).absolute()
    problems = {}
    for path in sorted(bids_dir.rglob("*.json")):
        relative = path.relative_to(bids_dir)
        if relative.parts[0] in EXEMPT_FOLDERS or any(
                part.startswith(".") for part in relative.parts):
            continue
        reason = sidecar_problem(path)
        if reason:
            problems[path] = reason
    return problems


def screen_images(subjects: dict[str, list[str]], bad_sidecars: dict[Path, str]) -> dict[str, str]:
    """Images that cannot be denoised as they are, with a one-line reason naming the file:
    unreadable (annexed without content, broken link) or described by a bad sidecar.

    Parameters
    ----------
    subjects : dict
        Participant label to its images (:func:`collect_anatomicals`).
    bad_sidecars : dict
        :func:`invalid_sidecars` of the dataset.

    Returns
    -------
    dict
        Each refused image to its reason; the other images are denoised.
    """
    from .inputs import sidecar_applies, unreadable_reason

    rejected = {}
    for files in subjects.values():
        for image in files:
            reason = unreadable_reason(image)
            if reason is None:
                reason = next((problem for sidecar, problem in bad_sidecars.items()
                               if sidecar_applies(sidecar, image)), None)
                reason = reason and f"metadata cannot be read: {reason}"
            if reason:
                rejected[image] = reason
    return rejected


def collect_anatomicals(
    layout,
    *,
    participant_label=(),
    session_label=(),
    suffixes=CONTRASTS,
    bids_filters=None,
) -> dict[str, list[str]]:
    """Anatomical images to denoise, by subject label.

    Parameters
    ----------
    layout : bids.BIDSLayout
        Index of the input dataset (:func:`make_layout`).
    participant_label, session_label : sequence of str
        Labels to keep (without ``sub-``/``ses-``); empty: all.
    suffixes : sequence of str
        Contrasts to denoise.
    bids_filters : dict, optional
        pybids entity filters (:func:`load_bids_filters`).

    Returns
    -------
    dict
        Sorted image paths by participant label.

    Raises
    ------
    BIDSAppError
        Exit code 18 when a requested participant or session does not exist or the filters
        select nothing, 66 when the dataset holds no anatomical image of the suffixes at all.
    """
    subjects = layout.get_subjects()
    if participant_label:
        missing = sorted(set(participant_label) - set(subjects))
        if missing:
            raise BIDSAppError(
                f"{layout.root}: participant label(s) not found: {', '.join(missing)} "
                f"(available: {', '.join(sorted(subjects)) or 'none'})",
                EXIT_NOTHING_SELECTED,
            )
        subjects = list(participant_label)
    if session_label:
        missing = sorted(set(session_label) - set(layout.get_sessions()))
        if missing:
            raise BIDSAppError(
                f"{layout.root}: session label(s) not found: {', '.join(missing)}",
                EXIT_NOTHING_SELECTED,
            )
    query = {"datatype": "anat", "extension": [".nii", ".nii.gz"], "suffix": list(suffixes)}
    query.update(bids_filters or {})
    if session_label:
        query["session"] = list(session_label)
    selected = {
        subject: sorted(layout.get(return_type="file", subject=subject, **query))
        for subject in sorted(subjects)
    }
    selected = {subject: files for subject, files in selected.items() if files}
    if not selected:
        filtered = bool(participant_label or session_label or bids_filters)
        raise BIDSAppError(
            f"{layout.root}: no anatomical image with suffix {'/'.join(suffixes)} "
            + ("matches the selection" if filtered else "found"),
            EXIT_NOTHING_SELECTED if filtered else EXIT_NOINPUT,
        )
    return selected


def load_bids_filters(path: Path) -> dict:
    """Read a ``--bids-filter-file`` (JSON object of pybids entity queries).

    Every key must be a BIDS entity pybids knows (``acquisition``, ``run``, ...; a typo
    would otherwise make pybids raise mid-query) and every value a string, an integer, a
    boolean, ``null`` or a list of those.

    Parameters
    ----------
    path : Path
        The JSON file: entity filters, or fMRIPrep-style ``{"t1w": {...}}`` (merged).
    """
    path = Path(path)
    if not path.is_file():
        raise BIDSAppError(f"{path}: BIDS filter file does not exist", EXIT_NOINPUT)
    try:
        filters = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BIDSAppError(f"{path}: not valid JSON ({exc})", EXIT_USAGE) from None
    if not isinstance(filters, dict):
        raise BIDSAppError(f"{path}: must hold a JSON object of entity filters", EXIT_USAGE)
    # fMRIPrep's filter files are keyed by image kind ({"t1w": {...}}); accept a flat
    # object as well as those keys, which all apply to the anatomical query here.
    nested = [v for v in filters.values() if isinstance(v, dict)]
    if nested:
        merged = {}
        for value in nested:
            merged.update(value)
        filters = merged
    _check_filters(path, filters)
    return filters


def _check_filters(path: Path, filters: dict) -> None:
    from bids.layout import Config

    entities = set(Config.load("bids").entities)
    unknown = sorted(set(filters) - entities)
    if unknown:
        raise BIDSAppError(
            f"{path}: unknown BIDS entit{'ies' if len(unknown) > 1 else 'y'} "
            f"{', '.join(map(repr, unknown))} (known: {', '.join(sorted(entities))})",
            EXIT_USAGE)
    scalar = (str, int, float, bool, type(None))
    for key, value in filters.items():
        values = value if isinstance(value, list) else [value]
        if not all(isinstance(v, scalar) for v in values):
            raise BIDSAppError(
                f"{path}: filter {key!r} must be a string, number, boolean, null or a list "
                f"of those, not {json.dumps(value)}", EXIT_USAGE)


def file_entities(path: str | Path) -> dict[str, str]:
    """BIDS entities of a file's name (pybids' ``parse_file_entities``), as strings.

    Parameters
    ----------
    path : str or Path
        Any file; only its name is parsed (folders do not add entities).

    Returns
    -------
    dict
        Entity name (``subject``, ``session``, ``acquisition``, ``run``, ..., ``suffix``,
        ``extension``) to its value as written in the name (``run-01`` gives ``"01"``).
    """
    from bids.layout import parse_file_entities

    # pybids finds ``sub-`` after a folder separator only
    entities = parse_file_entities("/" + Path(path).name)
    return {key: str(value) for key, value in entities.items()}


def contrast_from_filename(path: str | Path, default: str = "T1w") -> str:
    """The BIDS suffix of ``path`` if it names a supported contrast, else ``default``.

    Parameters
    ----------
    path : str or Path
        Any file name.
    default : str
        The contrast of a name without a supported suffix.
    """
    suffix = file_entities(path).get("suffix")
    return suffix if suffix in CONTRASTS else default


def derivative_path(source: str, bids_dir: Path, output_dir: Path, desc: str = "denoised") -> Path:
    """Where the derivative of ``source`` lands (``desc`` is the last entity in BIDS).

    Parameters
    ----------
    source : str
        Raw image inside ``bids_dir``.
    bids_dir, output_dir : Path
        Raw dataset root and derivatives root.
    desc : str
        The derivative's ``desc`` entity.
    """
    relative = Path(source).absolute().relative_to(Path(bids_dir).absolute())
    entities = file_entities(relative)
    stem = relative.name[: -len(entities.get("extension", ""))]
    prefix = stem[: -len(entities["suffix"])]
    return Path(output_dir) / relative.parent / f"{prefix}desc-{desc}_{entities['suffix']}.nii.gz"


def bids_uri(path: str | Path, bids_dir: str | Path) -> str:
    """BIDS URI of a raw file, e.g. ``bids:raw:sub-01/anat/sub-01_T1w.nii.gz``.

    Parameters
    ----------
    path : str or Path
        File inside ``bids_dir``.
    bids_dir : str or Path
        Raw dataset root (the ``raw`` of ``DatasetLinks``).
    """
    relative = Path(path).absolute().relative_to(Path(bids_dir).absolute())
    return f"bids:{RAW_DATASET_LINK}:{relative.as_posix()}"


def write_derivative_description(bids_dir: Path, output_dir: Path) -> Path:
    """Create or update ``dataset_description.json`` of the derivatives dataset.

    Parameters
    ----------
    bids_dir : Path
        Raw dataset (its name, BIDS version and DOI are carried over).
    output_dir : Path
        Derivatives root.
    """
    bids_dir, output_dir = Path(bids_dir).absolute(), Path(output_dir).absolute()
    generated_by = {
        "Name": "bids-auton2n",
        "Version": __version__,
        "CodeURL": __url__,
        "Description": "Self-supervised denoising of anatomical MRI (Auto-N2N mixture of "
        "experts fused with RI-NLM).",
    }
    container = os.getenv("BIDS_AUTON2N_CONTAINER")
    if container:
        generated_by["Container"] = {"Type": container, "Tag": f"bids-auton2n:{__version__}"}
    raw_description = {}
    raw_file = bids_dir / "dataset_description.json"
    if raw_file.is_file():
        try:
            raw_description = json.loads(raw_file.read_text())
        except json.JSONDecodeError:
            raw_description = {}
    # No absolute paths (they name one machine and break when a dataset moves): the raw
    # dataset is linked relative to the derivatives root and cited by its BIDS URI.
    source = {"URL": f"bids:{RAW_DATASET_LINK}:"}
    if raw_description.get("DatasetDOI"):
        source["DOI"] = raw_description["DatasetDOI"]
    if raw_description.get("DatasetVersion"):
        source["Version"] = raw_description["DatasetVersion"]
    description = {
        "Name": f"bids-auton2n outputs of {raw_description.get('Name', bids_dir.name)}",
        "BIDSVersion": raw_description.get("BIDSVersion", "1.9.0"),
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by],
        "SourceDatasets": [source],
        "DatasetLinks": {RAW_DATASET_LINK: os.path.relpath(bids_dir, output_dir)},
        "HowToAcknowledge": "Please cite the Auto-N2N paper and this software; see "
        "logs/CITATION.md for the methods text of this run.",
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    out_file = output_dir / "dataset_description.json"
    write_text_atomic(out_file, json.dumps(description, indent=2) + "\n")  # tasks share it
    return out_file
