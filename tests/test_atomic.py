"""Shared outputs are replaced atomically: concurrent readers never see a partial file, a
failed write leaves the previous version, and the group level skips a bad status file."""

from __future__ import annotations

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from bids_auton2n.reports.boilerplate import write_boilerplate
from bids_auton2n.reports.core import read_status
from bids_auton2n.utils.atomic import (STAGING_DIR, atomic_path, remove_stale_staging,
                                       staging_dir, write_text_atomic)
from bids_auton2n.utils.bids import write_derivative_description

#: How long the writers and readers of the concurrency test run (seconds).
STRESS_SECONDS = 3.0



def _workflow():
    """A denoiser workflow: what ``write_boilerplate`` describes."""
    from bids_auton2n.workflows.base import init_denoise_wf

    return init_denoise_wf(contrast="T1w")


def _status(index: int, n_records: int) -> str:
    return json.dumps([{"source": f"sub-{index:02d}/anat/sub-{index:02d}_run-{k}_T1w.nii.gz",
                        "subject": f"{index:02d}", "status": "success", "run_uuid": str(index),
                        "derivative": None, "error": None} for k in range(n_records)], indent=2)


def _writer(bids: str, out: str, index: int, barrier, counts) -> None:
    """One array task: rewrites the dataset-wide files and its status file, as fast as it can."""
    n = 0
    workflow = _workflow()
    barrier.wait()  # every process imported and ready: the race starts for all at once
    deadline = time.time() + STRESS_SECONDS
    while time.time() < deadline:
        write_derivative_description(Path(bids), Path(out))
        write_boilerplate(Path(out), workflow)
        write_text_atomic(Path(out) / "logs" / f"status_{index}.json",
                          _status(index, 1 + n % 40))  # the file's length changes every time
        n += 1
    counts[index] = n


def _reader(out: str, barrier, results, slot: int) -> None:
    reads = bad = 0
    description = Path(out) / "dataset_description.json"
    citation = Path(out) / "logs" / "CITATION.md"
    barrier.wait()
    deadline = time.time() + STRESS_SECONDS
    while time.time() < deadline:
        try:
            json.loads(description.read_text())
            if not citation.read_text().endswith("\n"):
                bad += 1
            for record in read_status(Path(out)).values():
                assert record["status"] == "success"
        except (ValueError, FileNotFoundError, AssertionError):
            bad += 1
        reads += 1
    results[slot] = (reads, bad)


def test_concurrent_writers_never_expose_a_partial_file(tiny_bids, tmp_path, caplog):
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    write_derivative_description(tiny_bids, out)
    write_boilerplate(out, _workflow())
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager:
        counts, results = manager.dict(), manager.dict()
        barrier = context.Barrier(5)
        writers = [context.Process(target=_writer, args=(str(tiny_bids), str(out), i,
                                                           barrier, counts)) for i in range(3)]
        readers = [context.Process(target=_reader, args=(str(out), barrier, results, i))
                   for i in range(2)]
        for process in writers + readers:
            process.start()
        for process in writers + readers:
            process.join(timeout=300)
            assert process.exitcode == 0
        reads = sum(r for r, _ in results.values())
        bad = sum(b for _, b in results.values())
        writes = sum(counts.values())
    assert writes > 30 and reads > 30, (writes, reads)  # the race did take place
    assert bad == 0, f"{bad} of {reads} reads saw a partial or missing file"
    assert sorted(p.name for p in out.rglob("*") if p.name.startswith(".")) == []


def test_failed_write_keeps_the_previous_version(tmp_path):
    target = tmp_path / "dataset_description.json"
    write_text_atomic(target, '{"Name": "old"}\n')
    with pytest.raises(OSError, match="No space left"):
        with atomic_path(target) as tmp:
            tmp.write_text('{"Name": "ne')
            raise OSError(28, "No space left on device")
    assert target.read_text() == '{"Name": "old"}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["dataset_description.json"]


def test_temporary_name_keeps_the_extension_and_is_hidden(tmp_path):
    with atomic_path(tmp_path / "sub-01_desc-denoised_T1w.nii.gz") as tmp:
        assert tmp.name.startswith(".sub-01_desc-denoised_T1w.tmp-")
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "sub-01_desc-denoised_T1w.nii.gz").read_bytes() == b"x"


def test_stale_staging_of_dead_processes_is_removed(tmp_path):
    import socket

    with staging_dir(tmp_path) as live:
        dead = tmp_path / STAGING_DIR / f"{socket.gethostname()}-{2 ** 22 + 12345}-0000abcd"
        dead.mkdir()
        other_host = tmp_path / STAGING_DIR / "another-host-1-0000abcd"
        other_host.mkdir()
        assert remove_stale_staging(tmp_path) == [dead]
        assert live.is_dir() and other_host.is_dir()  # alive, or not ours to judge
    assert not live.exists()


@pytest.mark.parametrize("content", [b"", b'[{"source": "sub-0', b'{"a": 1}', b"[1, 2]",
                                     b"\xff\xfe\x00garbage"])
def test_group_skips_an_unreadable_status_file(tmp_path, content, caplog):
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "status_1.json").write_text(_status(1, 2))
    bad = logs / "status_2.json"
    bad.write_bytes(content)
    (logs / "status_3.json").write_text(_status(3, 1))
    with caplog.at_level("WARNING", logger="bids_auton2n"):
        records = read_status(tmp_path)
    assert sorted({r["subject"] for r in records.values()}) == ["01", "03"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and str(bad) in warnings[0] and "skipped" in warnings[0]
    assert "\n" not in warnings[0]

