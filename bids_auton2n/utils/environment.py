"""Run as any user, with an unwritable HOME, installation or root file system.

Containers and clusters start the app in ways a laptop never does: ``docker run --user
12345:12345`` gives a uid without a passwd entry, Apptainer and ``docker run --read-only``
mount the image read-only, a cluster account may have a read-only or missing HOME. Three
things then break before any work starts:

* ``getpass.getuser()`` raises ``KeyError: 'getpwuid(): uid not found'`` when neither
  ``LOGNAME``, ``USER``, ``LNAME`` nor ``USERNAME`` is set and the uid has no passwd entry;
  MONAI calls it at import. Nipype's cluster plugins (SLURM, SGE, PBS, LSF, Condor) read
  ``os.environ["LOGNAME"]`` to name jobs and fail with ``KeyError: 'LOGNAME'`` without it
  (a job started by ``env -i``, cron or some schedulers).
* numba compiles the kernels with ``cache=True``: it needs a writable ``__pycache__`` next
  to the source or a writable ``~/.cache``, else the import raises.
* matplotlib and TemplateFlow write under ``~/.config`` / ``~/.cache``; matplotlib falls
  back to a temporary folder with a warning, TemplateFlow fails.

One more default is set for speed, not to avoid a failure: OpenMP's idle threads (torch's
and MKL's pool) spin-wait for the next parallel region by default, which takes the cores the
numba kernels and the other Nipype workers need between torch calls; on a 2-core machine the
spinning was a fixed cost on every image. ``OMP_WAIT_POLICY=PASSIVE`` makes them sleep. It
must be set before the OpenMP runtime loads (with torch), hence here.

:func:`prepare_environment` (run by ``bids_auton2n/__init__.py``, before any of those
libraries is imported) fills in what is missing and only that: variables the user set are
never changed, and caches move only when their default place cannot be written, to
``$TMPDIR/bids_auton2n-<uid>/``. :func:`check_scratch` is the one-line error the
commands give when no writable temporary folder exists at all.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

#: Environment variables ``getpass.getuser()`` reads, in its order.
USER_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")

#: What to do when no temporary folder can be written (e.g. ``docker run --read-only``).
SCRATCH_HINT = ("mount a writable folder on /tmp (docker run --tmpfs /tmp, or apptainer's "
                "default /tmp bind) or set TMPDIR to a writable folder")


def user_name(environ=os.environ) -> str:
    """The login name as ``getpass.getuser()`` would find it, ``uid<N>`` without any.

    Parameters
    ----------
    environ : mapping
        The environment to read (default: this process's).
    """
    for variable in USER_VARIABLES:
        if environ.get(variable):
            return environ[variable]
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without passwd entry (docker run --user 12345:12345)
        return f"uid{os.getuid()}"


def ensure_user_identity(environ=os.environ) -> None:
    """Set ``LOGNAME`` and ``USER`` where unset, so neither ``getpass`` nor Nipype fails.

    Parameters
    ----------
    environ : mapping
        The environment to complete (default: this process's).
    """
    name = user_name(environ)
    for variable in ("LOGNAME", "USER"):
        if not environ.get(variable):
            environ[variable] = name


def writable_dir(path: str | Path) -> bool:
    """``path`` is a folder this process may write, or could be created as one.

    Parameters
    ----------
    path : str or Path
        A folder, existing or not (then its nearest existing parent is checked).
    """
    path = Path(path).absolute()
    while not path.exists():
        if path.parent == path:
            return False
        path = path.parent
    return path.is_dir() and os.access(path, os.W_OK | os.X_OK)


def _default_cache_places(environ) -> dict[str, list[tuple[Path, ...]]]:
    """Where each library writes by default: alternatives, each a set of folders it needs."""
    home = Path(environ.get("HOME") or os.path.expanduser("~"))
    xdg_cache = Path(environ.get("XDG_CACHE_HOME") or home / ".cache")
    xdg_config = Path(environ.get("XDG_CONFIG_HOME") or home / ".config")
    kernels = Path(__file__).resolve().parent.parent / "denoise"
    return {
        # numba: __pycache__ next to the kernels' source, else its user-wide cache
        "NUMBA_CACHE_DIR": [(kernels / "__pycache__",), (xdg_cache / "numba",)],
        # matplotlib: its config and its cache folder
        "MPLCONFIGDIR": [(xdg_config / "matplotlib", xdg_cache / "matplotlib")],
        # TemplateFlow (imported by niworkflows' BIDS interfaces) populates a stub there
        "TEMPLATEFLOW_HOME": [(home / ".cache" / "templateflow",)],
    }


#: Folder of each redirected cache under the private temporary folder.
_CACHE_FOLDERS = {"NUMBA_CACHE_DIR": "numba", "MPLCONFIGDIR": "matplotlib",
                  "TEMPLATEFLOW_HOME": "templateflow"}


def _private_scratch() -> Path | None:
    """``$TMPDIR/bids_auton2n-<uid>`` (created 0700, ours), or None without a writable tmp."""
    try:
        base = Path(tempfile.gettempdir())
    except FileNotFoundError:  # no usable temporary folder at all
        return None
    scratch = base / f"bids_auton2n-{os.getuid()}"
    try:
        scratch.mkdir(mode=0o700, exist_ok=True)
        if scratch.stat().st_uid == os.getuid() and os.access(scratch, os.W_OK | os.X_OK):
            return scratch
        return Path(tempfile.mkdtemp(prefix="bids_auton2n-", dir=base))
    except OSError:
        return None


def redirect_caches(environ=os.environ) -> dict[str, str]:
    """Point each cache whose default place is unwritable at a private temporary folder.

    Parameters
    ----------
    environ : mapping
        The environment to complete (default: this process's).

    Returns
    -------
    dict
        The variables set (name -> folder).
    """
    moved = {}
    scratch = None
    for variable, alternatives in _default_cache_places(environ).items():
        if environ.get(variable):
            continue  # the user's choice stands
        if any(all(writable_dir(path) for path in places) for places in alternatives):
            continue
        scratch = scratch or _private_scratch()
        if scratch is None:
            break  # nothing writable anywhere: check_scratch() says so
        folder = scratch / _CACHE_FOLDERS[variable]
        folder.mkdir(exist_ok=True)
        environ[variable] = moved[variable] = str(folder)
    return moved


#: OpenMP settings made unless the user set them (see the module docstring).
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def set_openmp_defaults(environ=os.environ) -> dict[str, str]:
    """Set each of :data:`OPENMP_DEFAULTS` the user did not set; returns those set.

    Parameters
    ----------
    environ : mapping
        The environment to complete (default: this process's).
    """
    added = {name: value for name, value in OPENMP_DEFAULTS.items() if not environ.get(name)}
    environ.update(added)
    return added


def prepare_environment(environ=os.environ) -> None:
    """User identity, writable caches and OpenMP defaults; see the module docstring.

    Parameters
    ----------
    environ : mapping
        The environment to complete (default: this process's).
    """
    ensure_user_identity(environ)
    redirect_caches(environ)
    set_openmp_defaults(environ)


def check_scratch() -> str | None:
    """Why the app cannot run here (no writable temporary folder or cache), else None."""
    try:
        base = Path(tempfile.gettempdir())
    except FileNotFoundError:
        return f"no writable temporary folder (tried $TMPDIR, /tmp, /var/tmp, ...): {SCRATCH_HINT}"
    for variable in ("NUMBA_CACHE_DIR", "MPLCONFIGDIR"):
        folder = os.environ.get(variable)
        if folder and not writable_dir(folder):
            return f"{folder}: {variable} is not writable: {SCRATCH_HINT}"
    if not writable_dir(base):
        return f"{base}: temporary folder is not writable: {SCRATCH_HINT}"
    return None


#: Longest path of a Unix socket on Linux (``sun_path`` holds 108 bytes, NUL included).
SOCKET_PATH_MAX = 107
#: What multiprocessing appends to its temporary folder for a socket's path: its private
#: folder ``/pymp-`` and the socket ``/listener-``, each with 8 random characters.
_SOCKET_NAME_LENGTH = 32
#: Short folders tried for the sockets when the temporary folder's path is too long.
_SHORT_SOCKET_BASES = ("/tmp", "/var/tmp", "/dev/shm")


def shorten_socket_folder() -> str | None:
    """Give multiprocessing a short folder for its sockets when ``$TMPDIR``'s path is long.

    Nipype's MultiProc plugin starts its workers through a forkserver that listens on a
    Unix socket in multiprocessing's temporary folder under ``$TMPDIR``. A socket path
    longer than :data:`SOCKET_PATH_MAX` fails with ``OSError: AF_UNIX path too long``
    before any node runs (a job-specific ``TMPDIR`` on a cluster, nested scratch folders);
    Python 3.13 falls back to a short system folder itself, this does the same on older
    Pythons. ``$TMPDIR`` stays the user's choice for every other file.

    Returns
    -------
    str or None
        The socket folder made (removed at exit), or None where none was needed or found.
    """
    try:
        base = tempfile.gettempdir()
    except FileNotFoundError:
        return None
    if len(os.fsencode(base)) + _SOCKET_NAME_LENGTH <= SOCKET_PATH_MAX:
        return None
    import multiprocessing
    import multiprocessing.util
    import shutil

    for candidate in _SHORT_SOCKET_BASES:
        if writable_dir(candidate) and Path(candidate).is_dir():
            folder = tempfile.mkdtemp(prefix="pymp-", dir=candidate)
            # multiprocessing.util.get_temp_dir() returns this folder when set (no public
            # setter); the finalizer removes it at exit as multiprocessing does its own.
            multiprocessing.current_process()._config["tempdir"] = folder
            multiprocessing.util.Finalize(None, shutil.rmtree, args=(folder,),
                                          kwargs={"ignore_errors": True}, exitpriority=-100)
            return folder
    return None


def default_work_dir(cwd: str | Path | None = None) -> Path:
    """``./work`` where the current folder is writable (fMRIPrep's default), else
    ``$TMPDIR/bids_auton2n-<uid>/work`` (a read-only container root or current folder).

    Parameters
    ----------
    cwd : str or Path, optional
        The current folder (default: this process's).
    """
    local = (Path.cwd() if cwd is None else Path(cwd)).absolute() / "work"
    if writable_dir(local):
        return local
    scratch = _private_scratch()
    return scratch / "work" if scratch is not None else local


def unwritable_reason(path: str | Path, error: OSError) -> str:
    """Why ``path`` could not be written, with the folder's owner when permissions are why.

    Parameters
    ----------
    path : str or Path
        What could not be written.
    error : OSError
        The error writing it raised.
    """
    reason = error.strerror or str(error)
    if error.errno in (errno.EACCES, errno.EPERM):
        existing = Path(path).absolute()
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        reason += (f": {existing} belongs to uid {existing.stat().st_uid}, this process runs "
                   f"as uid {os.getuid()}")
        if os.environ.get("BIDS_AUTON2N_CONTAINER"):
            reason += ("; create the folder before starting the container and run it with "
                       "--user $(id -u):$(id -g), or run it as root (the image's default)")
    elif error.errno == errno.EROFS:
        reason += ": mount a writable folder there"
    return reason
