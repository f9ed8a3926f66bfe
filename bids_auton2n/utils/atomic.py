"""Write outputs so that a reader sees the old file or the new one, never a part of one.

Every array task of a cluster run writes the shared files of the derivatives dataset
(``dataset_description.json``, ``logs/CITATION.md``) and the group level reads the status
files while tasks may still be writing theirs. A plain ``write_text`` truncates the file
first, so a concurrent reader finds it empty; a run killed or a disk filling up mid-write
leaves a truncated image under its final name. Here every file is written under a hidden
temporary name in the same folder (so the rename stays within one file system), flushed
to disk, and renamed onto its final name with :func:`os.replace`, which POSIX makes atomic
(also on NFS and Lustre); on any error the temporary file is removed and an earlier version
of the output, if any, is left as it was.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: Hidden folder of the output directory where the data sinks stage derivatives.
STAGING_DIR = ".bids_auton2n-staging"


def temporary_sibling(path: str | Path) -> Path:
    """Hidden, unique name next to ``path`` with the same extensions (``.nii.gz`` stays
    ``.nii.gz``, so writers that pick the format from the name still do).

    Parameters
    ----------
    path : str or Path
        The final name.
    """
    path = Path(path)
    stem, dot, extensions = path.name.partition(".")
    return path.with_name(f".{stem}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{dot}{extensions}")


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one step.

    On any error the temporary file is removed and ``path`` keeps its previous content.

    Parameters
    ----------
    path : str or Path
        The final name.

    Examples
    --------
    >>> with atomic_path(out_file) as tmp:  # doctest: +SKIP
    ...     image.to_filename(tmp)
    """
    path = Path(path)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename in (None, str(tmp), tmp):
            exc.filename = str(path)  # the user knows the final name, not ours
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``Path(path).write_text(text)``, atomically (see the module docstring).

    Parameters
    ----------
    path : str or Path
        The file to replace.
    text : str
        Its new content.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def move_into_place(source: str | Path, destination: str | Path) -> Path:
    """Rename a finished file onto its final name (same file system), after flushing it.

    Parameters
    ----------
    source : str or Path
        The finished file (e.g. in a :func:`staging_dir`).
    destination : str or Path
        Its final name (folders created).
    """
    source, destination = Path(source), Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    _fsync(source)
    os.replace(source, destination)
    return destination


@contextmanager
def staging_dir(root: str | Path) -> Iterator[Path]:
    """A private folder under ``root/.bids_auton2n-staging/`` (same file system as the
    final outputs), removed afterwards whatever happens.

    Parameters
    ----------
    root : str or Path
        The output folder the staged files will be moved into.
    """
    base = Path(root) / STAGING_DIR
    folder = base / f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            base.rmdir()  # only when no other writer is staging
        except OSError:
            pass


def remove_stale_staging(root: str | Path) -> list[Path]:
    """Remove staging folders left by killed processes of this host; returns them.

    Parameters
    ----------
    root : str or Path
        The output folder.
    """
    base = Path(root) / STAGING_DIR
    removed = []
    host = socket.gethostname()
    for folder in base.glob(f"{host}-*-*") if base.is_dir() else ():
        pid = folder.name[len(host) + 1:].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, belongs to someone else
        return True
    return True
