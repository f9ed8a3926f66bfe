"""Finding repeated acquisitions of one image among a subject's anatomical files.

Images of one subject whose BIDS entities are all equal except ``run`` and ``echo`` (and,
when asked, ``session``) are repeats of one image: a second ``run`` of a T1w, the echoes of
a multi-echo MPRAGE. Such a group is denoised together (:mod:`bids_auton2n.denoise.repeats`);
a group of one takes the single-image path.

Entities are parsed with pybids (:func:`~bids_auton2n.utils.bids.file_entities`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .bids import file_entities

LOGGER = logging.getLogger("bids_auton2n")

#: Entities that tell the repeats of one image apart.
REPEAT_ENTITIES = ("run", "echo")
#: Values of ``--repeats``.
REPEATS_MODES = ("auto", "off")
#: Fine-tuning methods on repeats (``--repeats-method``; :mod:`bids_auton2n.train.repeats`):
#: consensus Noise2Noise and Noise2Average.
REPEAT_METHODS = ("consensus", "n2a")
DEFAULT_REPEAT_METHOD = "consensus"
#: Default wall-clock budget (seconds) of the fine-tuning of one group (``--repeats-budget``).
REPEATS_BUDGET_S = 600.0


@dataclass(frozen=True)
class RepeatGroup:
    """Repeated acquisitions of one image, in acquisition order.

    Attributes
    ----------
    files : tuple of str
        The images, sorted by session, run and echo; the first is the *reference*, whose
        grid the combined image is written on.
    varying : tuple of str
        Entities whose values differ between the files (empty for a group of one).
    """

    files: tuple[str, ...]
    varying: tuple[str, ...] = ()

    @property
    def reference(self) -> str:
        """The first run: the combined image lies on its grid."""
        return self.files[0]

    @property
    def is_repeat(self) -> bool:
        """More than one image: the repeats path runs."""
        return len(self.files) > 1


def _order(entities: dict) -> tuple:
    def number(value):
        try:
            return int(value)
        except (TypeError, ValueError):
            return -1

    return (str(entities.get("session") or ""), number(entities.get("run")),
            number(entities.get("echo")))


def group_repeats(files, *, across_sessions: bool = False) -> list[RepeatGroup]:
    """Group ``files`` (one subject's images) into repeats of one image.

    Parameters
    ----------
    files : iterable of str
        Anatomical images of one subject.
    across_sessions : bool
        Also group images of different sessions (off by default: anatomy can change
        between sessions).

    Returns
    -------
    list of RepeatGroup
        Every file in exactly one group, groups in the order of their first file. Files
        that share all other entities but do not all carry the entities that vary (e.g.
        ``sub-01_T1w`` next to ``sub-01_run-2_T1w``) are not grouped: the combined image,
        named without those entities, would take the name of one of them. They are
        logged and each takes the single-image path.
    """
    ignored = REPEAT_ENTITIES + (("session",) if across_sessions else ())
    keyed: dict[tuple, list[tuple[dict, str]]] = {}
    for path in files:
        entities = file_entities(path)
        key = tuple(sorted((k, str(v)) for k, v in entities.items() if k not in ignored))
        keyed.setdefault(key, []).append((entities, str(path)))
    groups = []
    for members in keyed.values():
        members.sort(key=lambda member: _order(member[0]))
        varying = tuple(name for name in ignored
                        if len({str(m[0].get(name)) for m in members}) > 1)
        incomplete = [path for entities, path in members
                      if any(entities.get(name) is None for name in varying)]
        if len(members) > 1 and incomplete:
            LOGGER.warning(
                "not combining %s: %s lack(s) the %s entity that tells the repeats apart; "
                "each image is denoised on its own", ", ".join(Path(p).name for _, p in members),
                ", ".join(Path(p).name for p in incomplete), "/".join(varying))
            groups += [RepeatGroup((path,)) for _, path in members]
        else:
            groups.append(RepeatGroup(tuple(path for _, path in members), varying))
    order = {str(path): index for index, path in enumerate(files)}
    return sorted(groups, key=lambda group: min(order[f] for f in group.files))
