"""What makes an input file, a label or a filter unusable, said in one line naming it.

Checked before any workflow is built, so that one bad file of a dataset fails alone (the
other images are still denoised) and the message says what to do, instead of a library
traceback: DataLad datasets whose annexed content was never fetched, broken links,
malformed JSON sidecars (pybids refuses to index a dataset with one), participant labels
that are not BIDS labels, filter files that name no BIDS entity.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

#: A BIDS label: letters and digits only (ASCII), e.g. ``01`` or ``control07``.
LABEL = re.compile(r"[a-zA-Z0-9]+")

#: Where git-annex keeps content; an annexed file is a link there, or (unlocked, adjusted
#: branches, Windows) a small text file holding that path.
ANNEX_OBJECTS = ".git/annex/objects/"
_ANNEX_POINTER = b"/annex/objects/"


def _datalad_hint(path: Path) -> str:
    return (f"{path}: annexed file without its content (git-annex/DataLad dataset); "
            f"fetch it first: datalad get {path}")


def unreadable_reason(path: str | Path) -> str | None:
    """Why ``path`` cannot be read as a data file, or None (the content is not checked).

    Parameters
    ----------
    path : str or Path
        A data file: missing, a broken link or a DataLad/git-annex file whose content was
        not fetched (a link into the annex or a pointer file) are said so.
    """
    path = Path(path)
    if path.is_symlink() and not path.exists():
        target = os.readlink(path)
        if ANNEX_OBJECTS in target:
            return _datalad_hint(path)
        return f"{path}: broken symbolic link (to {target})"
    if not path.exists():
        return f"{path}: no such file"
    if not path.is_file():
        return f"{path}: not a file"
    if not os.access(path, os.R_OK):
        return f"{path}: not readable (permission denied)"
    if path.stat().st_size < 1024:
        with open(path, "rb") as stream:
            if stream.read(len(_ANNEX_POINTER)) == _ANNEX_POINTER:
                return _datalad_hint(path)
    return None


def sidecar_problem(path: str | Path) -> str | None:
    """Why the JSON file ``path`` cannot be used as a BIDS sidecar, or None.

    Parameters
    ----------
    path : str or Path
        The JSON file (unreadable, not UTF-8, not JSON, not an object: one line each).
    """
    path = Path(path)
    reason = unreadable_reason(path)
    if reason:
        return reason
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        return f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"
    except json.JSONDecodeError as exc:
        return f"{path}: not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno})"
    if not isinstance(content, dict):
        return f"{path}: a sidecar must hold a JSON object, not {type(content).__name__}"
    return None


def _entities(path: Path) -> dict:
    from .bids import file_entities

    entities = file_entities(path)
    entities.pop("extension", None)
    return entities


def sidecar_applies(sidecar: str | Path, image: str | Path) -> bool:
    """BIDS inheritance: ``sidecar`` sits in the image's folder or above it, has its suffix,
    and each of its entities has the image's value.

    Parameters
    ----------
    sidecar : str or Path
        A JSON file of the dataset.
    image : str or Path
        A raw image of the dataset.
    """
    sidecar, image = Path(sidecar).absolute(), Path(image).absolute()
    if sidecar.parent not in image.parents:
        return False
    inherited, own = _entities(sidecar), _entities(image)
    return "suffix" in inherited and all(own.get(k) == v for k, v in inherited.items())


def check_label(label: str, what: str = "participant") -> str:
    """``label`` without its ``sub-``/``ses-`` prefix if it is a BIDS label, else raises
    ``ValueError`` saying why (``../x``, spaces, unicode letters, empty).

    Parameters
    ----------
    label : str
        As given on the command line.
    what : str
        The entity it labels, for the message (``participant``, ``session``).
    """
    if not LABEL.fullmatch(label):
        raise ValueError(f"invalid {what} label {label!r}: BIDS labels are ASCII letters and "
                         "digits only")
    return label
