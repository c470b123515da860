"""Progress: ``progress()`` and tqdm bars inside jobs become the job's progress, shown by
``Job.progress`` and as a Progress column in ``%rjob list`` (text and HTML)."""

from __future__ import annotations

import io
from typing import Any

import pytest

from jupyter_rjobs import JobManager, RecordKind
from jupyter_rjobs.core.table import html_table, text_table

TQDM_JOB = "from tqdm import tqdm\nfor _ in tqdm(range(5), desc='work', mininterval=0):\n    pass\n'done'"


def test_the_latest_progress_record_is_the_jobs_progress(manager: JobManager) -> None:
    job = manager.start("from jupyter_rjobs import progress\nprogress(1, 5, 'one')\nprogress(2, 5, 'two')", "thread")
    job.result(timeout=10)
    assert job.progress == {"current": 2, "total": 5, "message": "two"}
    assert manager.start("1", "thread").progress is None  # never reported: None


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_a_tqdm_bar_in_a_job_is_its_progress(manager: JobManager, kind: str) -> None:
    job = manager.start(TQDM_JOB, kind)
    assert job.result(timeout=30) == "done"
    assert job.progress == {"current": 5, "total": 5, "message": "work"}
    records = manager.receive(job)
    steps = [r.data["current"] for r in records if r.kind is RecordKind.PROGRESS]
    assert steps == sorted(steps) and steps[-1] == 5 and len(steps) == len(set(steps))  # in order, no repeats


def test_tqdm_outside_jobs_is_left_alone(manager: JobManager) -> None:
    import tqdm  # in the test extra

    manager.start(TQDM_JOB, "thread").result(timeout=10)  # tqdm is patched in this process now
    out = io.StringIO()
    for _ in tqdm.tqdm(range(3), file=out, desc="here", mininterval=0):
        pass
    assert "here" in out.getvalue() and "3/3" in out.getvalue()
    assert manager.list(state="Running") == []  # and no job appeared from it


def test_tables_show_the_percentage_only_when_a_job_reported_progress(manager: JobManager) -> None:
    plain = manager.start("1", "thread")
    plain.result(timeout=10)
    assert "Progress" not in text_table([plain])
    job = manager.start("from jupyter_rjobs import progress\nprogress(2, 5, 'two')", "thread")
    job.result(timeout=10)
    lines = text_table([plain, job]).splitlines()
    assert lines[0].split()[:5] == ["Id", "Name", "PSJobTypeName", "State", "Progress"]
    assert lines[3].split()[3:5] == ["Completed", "40%"]
    assert "<th style='text-align:left'>Progress</th>" in html_table([job]) and ">40%<" in html_table([job])
    counting = manager.start("from jupyter_rjobs import progress\nprogress(7)", "thread")
    counting.result(timeout=10)
    assert text_table([counting]).splitlines()[2].split()[4] == "7"  # no total: the count


def test_rjob_list_shows_the_percentage(ip: Any) -> None:
    ip.run_cell("%rjob start --thread --name half -- __import__('jupyter_rjobs').progress(1, 2)")
    ip.run_cell("%rjob wait half --timeout 10")
    table = ip.run_line_magic("rjob", "list")
    assert "50%" in str(table) and ">50%<" in table._repr_html_()
