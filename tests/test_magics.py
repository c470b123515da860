"""The %rjob magics, run in a real IPython InteractiveShell."""

from __future__ import annotations

import pytest
from IPython.core.error import UsageError
from IPython.utils.capture import capture_output

from jupyter_rjobs import Job, JobKind, JobState, JobTable
from jupyter_rjobs.ipython.extension import get_manager

CRUNCH = "import time\nfor i in range(3):\n    print('step', i); time.sleep(0.05)\nsum(range(10**6))"


def rjob(ip, line):
    return ip.run_line_magic("rjob", line)


def rjob_cell(ip, line, cell):
    return ip.run_cell_magic("rjob", line, cell)


def test_the_quickstart(ip):
    job = rjob_cell(ip, "start --thread --name crunch", CRUNCH)
    assert isinstance(job, Job) and job.kind is JobKind.THREAD and job.name == "crunch"
    assert "crunch" in str(rjob(ip, "list"))
    finished = rjob(ip, "wait crunch --timeout 10")
    assert list(finished) == [job] and finished.note == ""
    with capture_output() as out:
        value = rjob(ip, "receive crunch")
    assert out.stdout == "step 0\nstep 1\nstep 2\n"
    assert value == sum(range(10**6))
    with capture_output() as again:
        assert rjob(ip, "receive crunch") is None
    assert again.stdout == "" and again.stderr == ""


def test_start_shows_a_one_row_table(ip):
    job = rjob(ip, "start --thread --name shown -- 1")
    text = ip.display_formatter.format(job)[0]
    assert text["text/plain"].splitlines()[0].split() == [
        "Id", "Name", "PSJobTypeName", "State", "HasMoreData", "Location", "Command"
    ]
    assert "shown" in text["text/plain"] and "<table" in text["text/html"]


def test_line_form_and_out(ip):
    rjob(ip, "start --thread --out the_job -- 6 * 7")
    job = ip.user_ns["the_job"]
    assert isinstance(job, Job)
    assert rjob(ip, f"receive {job.id} --wait --out answer") == 42
    assert ip.user_ns["answer"] == 42


def test_process_is_the_default_and_gets_notebook_variables(ip):
    ip.user_ns["base"] = 5
    job = rjob_cell(ip, "start --name p", "base * 3")
    assert job.kind is JobKind.PROCESS
    assert rjob(ip, "receive p --wait") == 15


def test_push_and_no_push(ip):
    ip.user_ns.update(a=1, b=2)
    rjob_cell(ip, "start --name pushed --push b", "globals().get('a'), b")
    assert rjob(ip, "receive pushed --wait") == (None, 2)
    rjob_cell(ip, "start --name none --no-push", "'b' in globals()")
    assert rjob(ip, "receive none --wait") is False


def test_receive_several_jobs_labels_them_and_returns_a_dict(ip):
    rjob(ip, "start --thread --name one -- print('from one') or 1")
    rjob(ip, "start --thread --name two -- print('from two') or 2")
    rjob(ip, "wait one two --timeout 10")
    with capture_output() as out:
        values = rjob(ip, "receive one two")
    assert values == {"one": 1, "two": 2}
    assert "--- job" in out.stdout and "from one" in out.stdout and "from two" in out.stdout


def test_keep_returns_the_value_again(ip):
    rjob(ip, "start --thread --name kept -- 'v'")
    rjob(ip, "wait kept --timeout 10")
    assert rjob(ip, "receive kept --keep") == "v"
    assert get_manager(ip).get("kept").has_more_data
    assert rjob(ip, "receive kept") == "v"
    assert rjob(ip, "receive kept") is None


def test_receive_wait_auto_remove(ip):
    rjob(ip, "start --thread --name gone -- 'x'")
    assert rjob(ip, "receive gone --wait --auto-remove") == "x"
    assert get_manager(ip).list() == []


def test_wait_with_timeout_says_what_still_runs(ip):
    rjob_cell(ip, "start --thread --name forever", "import time\nwhile True:\n    time.sleep(0.05)")
    result = rjob(ip, "wait forever --timeout 0.2")
    assert list(result) == []
    assert "Timed out after 0.2 s; still running" in result.note and "forever" in result.note
    assert "still running" in str(result)
    stopped = rjob(ip, "stop forever")
    assert [j.state for j in stopped] == [JobState.Stopped]


def test_remove(ip):
    rjob_cell(ip, "start --thread --name busy", "import time\nwhile True:\n    time.sleep(0.05)")
    rjob(ip, "start --thread --name done -- 1")
    rjob(ip, "wait done --timeout 10")
    with pytest.raises(UsageError, match="--force"):
        rjob(ip, "remove busy done")
    assert len(get_manager(ip).list()) == 2
    with capture_output() as out:
        rjob(ip, "remove --state Completed")
    assert "Removed job" in out.stdout
    assert [j.name for j in get_manager(ip).list()] == ["busy"]
    rjob(ip, "remove busy --force")
    assert get_manager(ip).list() == []


def test_a_failed_job_shows_its_traceback_on_receive(ip):
    rjob_cell(ip, "start --thread --name bad", "def f():\n    raise KeyError('nope')\nf()")
    rjob(ip, "wait bad --timeout 10")
    with capture_output() as out:
        assert rjob(ip, "receive bad") is None
    assert "KeyError" in out.stdout and "raise KeyError('nope')" in _plain(out.stdout)
    details = str(rjob(ip, "show bad"))
    assert "State         : Failed" in details and "KeyError" in details
    assert "raise KeyError" in _plain(details)


def test_show_lists_every_property(ip):
    rjob(ip, "start --thread --name props -- 1")
    rjob(ip, "wait props --timeout 10")
    details = rjob(ip, "show props")
    names = [line.split(":")[0].strip() for line in str(details).splitlines() if " : " in line]
    for field in ("Id", "InstanceId", "Name", "PSJobTypeName", "State", "HasMoreData", "Location",
                  "BeginTime", "EndTime", "ChildJobs", "Error", "Command"):
        assert field in names
    assert "<table" in details._repr_html_()


def test_list_filters(ip):
    rjob(ip, "start --thread --name alpha -- 1")
    rjob(ip, "start --name beta -- 2")
    rjob(ip, "wait --timeout 30")
    assert [j.name for j in rjob(ip, "list al*")] == ["alpha"]
    assert [j.name for j in rjob(ip, "list --kind process")] == ["beta"]
    assert [j.name for j in rjob(ip, "list --state Completed --has-more-data")] == ["alpha", "beta"]
    assert isinstance(rjob(ip, "list"), JobTable)


@pytest.mark.parametrize(
    ("line", "cell", "message"),
    [
        ("receive nosuch", None, "no job with id or name 'nosuch'"),
        ("start --bogus -- 1", None, "unrecognized arguments: --bogus"),
        ("frobnicate", None, "unknown %rjob subcommand 'frobnicate'"),
        ("", None, "unknown %rjob subcommand"),
        ("start --thread", "x = (", "does not compile"),
        ("start --thread --process -- 1", None, "choose one of --thread and --process"),
        ("start --push a --no-push -- 1", None, "choose one of --push NAMES and --no-push"),
        ("start --push 'not a name' -- 1", None, "is not a variable name"),
        ("start --push missing_var -- 1", None, "the notebook does not have"),
        ("start --thread", "   ", "no code to run"),
        ("remove", None, "name the jobs to remove"),
        ("receive --auto-remove", None, "--auto-remove needs --wait"),
        ("list --state Sleeping", None, "unknown job state 'Sleeping'"),
        ("wait --timeout soon", None, "invalid float value"),
        ("list", "1", "takes no cell"),
    ],
)
def test_bad_input_is_a_one_line_usage_error_and_creates_nothing(ip, line, cell, message):
    with pytest.raises(UsageError) as caught:
        if cell is None:
            rjob(ip, line)
        else:
            rjob_cell(ip, line, cell)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value).strip()
    assert get_manager(ip).list() == []


def test_an_unsendable_variable_is_a_usage_error_naming_it(ip):
    ip.user_ns["stream"] = (i for i in range(3))
    with pytest.raises(UsageError, match="variable 'stream' cannot be sent"):
        rjob_cell(ip, "start", "sum(stream)")
    assert get_manager(ip).list() == []


def test_help_documents_every_subcommand(ip):
    doc = ip.find_line_magic("rjob").__doc__
    for subcommand in ("start", "list", "show", "wait", "receive", "stop", "remove"):
        assert f"rjob {subcommand}" in doc
    for option in ("--thread", "--push", "--no-push", "--keep", "--auto-remove", "--timeout", "--force"):
        assert option in doc


def test_magics_through_run_cell_show_usage_errors_without_tracebacks(ip):
    with capture_output() as out:
        result = ip.run_cell("%rjob receive nosuch")
    assert not result.success
    assert "UsageError: no job with id or name 'nosuch'" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def _plain(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


# -- bad input that got through (issue 14, defect 10) ---------------------------------------
@pytest.mark.parametrize("line", ["start --thread --out 1bad -- 1", "start --thread --out 'a b' -- 1", "start --thread --out class -- 1"])
def test_out_that_is_not_a_variable_name_is_refused_before_anything_starts(ip, line):
    with pytest.raises(UsageError, match="not a Python variable name"):
        rjob(ip, line)
    assert get_manager(ip).list() == []


@pytest.mark.parametrize("value", ["nan", "-1"])
def test_wait_refuses_a_timeout_that_is_not_seconds(ip, value):
    rjob(ip, "start --thread --name w -- 1")
    with pytest.raises(UsageError, match="timeout must be a number of seconds, 0 or more"):
        rjob(ip, f"wait w --timeout {value}")


@pytest.mark.parametrize("value", ["inf", "1e10"])
def test_wait_with_an_endless_timeout_waits_until_the_end(ip, value):
    job = rjob(ip, "start --thread --name w -- 'done'")
    finished = rjob(ip, f"wait w --timeout {value}")
    assert list(finished) == [job] and job.state is JobState.Completed


def test_arguments_are_read_as_a_shell_reads_them(ip):
    job = rjob(ip, "start --thread --name 'my job' -- 1")
    assert job.name == "my job"
    assert list(rjob(ip, 'wait "my job" --timeout 30')) == [job]
    assert rjob(ip, "receive 'my job'") == 1


def test_ids_win_over_names_so_names_of_digits_are_refused(ip):
    first = rjob(ip, "start --thread -- 1")
    with pytest.raises(UsageError, match="names of digits only read as ids"):
        rjob(ip, "start --thread --name 7 -- 2")
    assert get_manager(ip).list() == [first]
