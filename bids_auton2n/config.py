"""Settings of one run of the BIDS-App.

Read only by the command line (:mod:`bids_auton2n.cli`) and the top workflow builder
(:func:`bids_auton2n.workflows.base.init_auton2n_wf`); every other builder takes keyword
arguments. The sections mirror fMRIPrep's ``config`` module: ``execution`` (paths,
selection, the run identifier), ``workflow`` (what the denoiser does) and ``nipype``
(how Nipype executes it). :func:`to_filename` stores them in the work directory
(``<work_dir>/runs/<run_uuid>/config.json``) and :func:`load` reads them back, so a run can be
inspected and repeated (``bids_auton2n ... --config-file config.json``).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import get_type_hints

from .denoise import CONTRASTS
from .utils.repeats import DEFAULT_REPEAT_METHOD, REPEATS_BUDGET_S

#: Anatomical BIDS suffixes the app denoises by default: every contrast it can denoise.
DEFAULT_SUFFIXES = CONTRASTS

#: Environment variable naming a directory of expert weights (``manifest.json`` + files)
#: to use instead of the shipped experts; meant for tests and expert development.
EXPERTS_DIR_ENV = "BIDS_AUTON2N_EXPERTS_DIR"


def _new_run_uuid() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}_{uuid.uuid4()}"


@dataclass
class ExecutionSettings:
    """Paths, input selection and run identity."""

    bids_dir: Path | None = None
    output_dir: Path | None = None
    work_dir: Path = field(default_factory=lambda: Path("work").absolute())
    analysis_level: str = "participant"
    participant_label: list[str] = field(default_factory=list)
    session_label: list[str] = field(default_factory=list)
    bids_filters: dict = field(default_factory=dict)
    suffixes: list[str] = field(default_factory=lambda: list(DEFAULT_SUFFIXES))
    skip_bids_validation: bool = False
    reports_only: bool = False
    experts_dir: Path | None = None
    run_uuid: str = field(default_factory=_new_run_uuid)
    verbosity: int = 0


@dataclass
class WorkflowSettings:
    """What the denoiser does to every image."""

    device: str = "auto"
    tta: bool = True
    fusion: bool = True
    guard: bool = True
    wiener: bool = True
    noise_level: float | None = None
    expert: float | None = None
    blend: bool = False
    finetune: bool = False
    finetune_budget_s: float = 600.0
    finetune_steps: int | None = None
    write_noise_map: bool = False
    noise_model: str = "global"
    pair_source: str = "auto"
    slice_pair_budget_s: float = 300.0
    slice_pair_steps: int | None = None
    repeats: str = "auto"
    repeats_across_sessions: bool = False
    repeats_method: str = DEFAULT_REPEAT_METHOD
    repeats_budget_s: float = REPEATS_BUDGET_S
    repeats_steps: int | None = None


@dataclass
class NipypeSettings:
    """How Nipype runs the workflow."""

    plugin: str = "MultiProc"
    plugin_args: dict = field(default_factory=dict)
    nprocs: int = field(default_factory=lambda: os.cpu_count() or 1)
    omp_nthreads: int = 1
    mem_gb: float | None = None
    stop_on_first_crash: bool = False

    def image_mem_gb(self) -> float | None:
        """Each image's share of ``mem_gb``: as many images run at once as ``nprocs``
        allows at ``omp_nthreads`` threads each (None: no limit)."""
        if not self.mem_gb:
            return None
        return self.mem_gb / max(1, self.nprocs // max(1, self.omp_nthreads))

    def poll_seconds(self) -> float:
        """Nipype's scheduler loop period: short for the local plugins, whose loop only
        checks worker results (Nipype's 2 s default made a 40x48x40 image wait ~20 s between
        its nodes), Nipype's 2 s for the cluster plugins, which query the queue each time."""
        return 0.2 if self.plugin in ("MultiProc", "LegacyMultiProc", "Linear") else 2.0

    def get_plugin(self) -> dict:
        """Plugin name and arguments for :meth:`nipype.pipeline.engine.Workflow.run`."""
        args = dict(self.plugin_args)
        if self.plugin in ("MultiProc", "LegacyMultiProc"):
            args.setdefault("n_procs", self.nprocs)
            if self.mem_gb:
                args.setdefault("memory_gb", self.mem_gb)
            args.setdefault("raise_insufficient", False)
        if self.plugin == "MultiProc":
            # Workers are started fresh, not forked: a fork of a process whose OpenMP
            # (torch/numba) threads already ran can deadlock in the child.
            args.setdefault("mp_context", "forkserver")
        return {"plugin": self.plugin, "plugin_args": args}


execution = ExecutionSettings()
workflow = WorkflowSettings()
nipype = NipypeSettings()


def reset() -> None:
    """Restore defaults (a fresh run identifier included)."""
    global execution, workflow, nipype
    execution, workflow, nipype = ExecutionSettings(), WorkflowSettings(), NipypeSettings()


def to_dict() -> dict:
    """All settings as JSON-serialisable sections."""
    def clean(section):
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(section).items()}

    return {"execution": clean(execution), "workflow": clean(workflow), "nipype": clean(nipype)}


def to_filename(path: str | Path) -> Path:
    """Write the settings to ``path`` (JSON) and return it.

    Parameters
    ----------
    path : str or Path
        File to write (its folder is created).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(), indent=2, default=str))
    return path


def from_dict(settings: dict, *, new_run: bool = True) -> None:
    """Set the sections from :func:`to_dict`'s layout.

    Parameters
    ----------
    settings : dict
        ``{"execution": {...}, "workflow": {...}, "nipype": {...}}``; a section or setting left
        out keeps its default.
    new_run : bool
        Give the settings a new run identifier (a repeated run is a run of its own) instead of
        the one in ``settings``.

    Raises
    ------
    ValueError
        An unknown section or setting (e.g. from another version of the app).
    """
    reset()
    sections = {"execution": execution, "workflow": workflow, "nipype": nipype}
    unknown = set(settings) - set(sections)
    if unknown:
        raise ValueError(f"unknown settings section(s): {', '.join(sorted(unknown))}")
    for name, section in sections.items():
        values = dict(settings.get(name, {}))
        if new_run:
            values.pop("run_uuid", None)
        known = {f.name for f in fields(section)}
        if set(values) - known:
            raise ValueError(f"unknown {name} setting(s): {', '.join(sorted(set(values) - known))}")
        types = get_type_hints(type(section))
        for key, value in values.items():
            is_path = "Path" in str(types[key])
            setattr(section, key, Path(value) if is_path and value is not None else value)


def load(path: str | Path, *, new_run: bool = True) -> None:
    """Read settings written by :func:`to_filename` back into the sections.

    Parameters
    ----------
    path : str or Path
        The JSON file.
    new_run : bool
        See :func:`from_dict`.
    """
    from_dict(json.loads(Path(path).read_text()), new_run=new_run)
