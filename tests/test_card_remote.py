"""Job cards of remote jobs against the real sshd lab: one host, a fan-out (one line per child), a
session job, and a ``--cache remote`` job (whose output stays on the host: its card has no tail)."""

from __future__ import annotations

from typing import Any

import pytest
from helpers import wait_until

from jupyter_rjobs import JobManager, JobState
from jupyter_rjobs.core.records import RecordKind
from jupyter_rjobs.ipython.card import JobCard

pytestmark = pytest.mark.ssh
TALK = "import socket\nfor i in range(3):\n    print('remote line', i, flush=True)\n'done'"


@pytest.fixture
def remote(make_manager: Any, ssh_lab: Any) -> JobManager:
    manager: JobManager = make_manager(ssh_config=ssh_lab.ssh_config)
    return manager


def finished_card(manager: JobManager, job: Any) -> JobCard:
    card = JobCard(job, manager)
    assert wait_until(lambda: card.final, 60), card._head.value
    return card


def test_a_remote_jobs_card_shows_its_lines_and_value(remote: JobManager) -> None:
    job = remote.start(TALK, host="server01")
    card = finished_card(remote, job)
    try:
        assert "data-state='Completed'" in card._head.value and "server01" in card._head.value
        assert [t for t, _ in card.tail.snapshot()] == ["remote line 0", "remote line 1", "remote line 2"]
        assert "value: &#x27;done&#x27;" in card._body.value
        assert [r.data for r in remote.receive(job) if r.kind is RecordKind.STDOUT] == [f"remote line {i}\n" for i in range(3)]
    finally:
        card.close()


def test_a_fan_out_card_has_a_line_per_host(remote: JobManager) -> None:
    job = remote.start(TALK, host="server01,nshost1")
    card = finished_card(remote, job)
    try:
        body = card._body.value
        assert "data-host='server01'" in body and "data-host='nshost1'" in body and body.count("rjob-card-child") == 2
        assert "[server01] remote line 2" in body and "[nshost1] remote line 2" in body
        assert job.state is JobState.Completed
    finally:
        card.close()


def test_a_session_jobs_card(remote: JobManager) -> None:
    remote.new_session("server01", name="s1")
    remote.invoke("x = 41", session="s1")
    job = remote.start("print('in the session')\nx + 1", session="s1")
    card = finished_card(remote, job)
    try:
        assert "in the session" in card._body.value and "value: 42" in card._body.value
    finally:
        card.close()


def test_a_remote_cache_jobs_card_has_no_tail_and_receive_fetches_all(remote: JobManager) -> None:
    job = remote.start(TALK, host="server01", cache="remote")
    card = finished_card(remote, job)
    try:
        assert card.tail.snapshot() == [] and "data-state='Completed'" in card._head.value  # its output stayed on the host
        assert [r.data for r in remote.receive(job) if r.kind is RecordKind.STDOUT] == [f"remote line {i}\n" for i in range(3)]
    finally:
        card.close()
