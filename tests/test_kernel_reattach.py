"""A kernel SIGKILLed while its detached job runs on a host: a new kernel, driven as a notebook
drives it (jupyter_client), re-attaches and receives every record."""

from __future__ import annotations

import os
import signal
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from kernel_helpers import KernelSession, errors, stream_text  # noqa: E402

pytestmark = [pytest.mark.kernel, pytest.mark.ssh]


def test_a_new_kernel_re_attaches_to_the_detached_job_of_a_killed_one(ssh_lab_empty, monkeypatch):
    # both kernels share the local registry (JUPYTER_RJOBS_STATE, set by ssh_lab_empty), as a user's would
    monkeypatch.setenv("JUPYTER_RJOBS_SSH_CONFIG", ssh_lab_empty.ssh_config)
    first = KernelSession()
    try:
        first.run("%load_ext jupyter_rjobs")
        first.run(
            "%%rjob start --host nshost3 --detached --name survivor\n"
            "import time\nfor i in range(40):\n    print(i, flush=True)\n    time.sleep(0.05)\n'all done'"
        )
        first.run("import time\ntime.sleep(0.5)")
        seen = stream_text(first.run("%rjob receive survivor"))  # some received there, never again
        assert seen.split(), "the job printed nothing before the kernel was killed"
        os.kill(first.kernel_pid, signal.SIGKILL)
        assert first.process.wait(5) == -signal.SIGKILL
    finally:
        first.close()

    second = KernelSession()
    try:
        second.run("%load_ext jupyter_rjobs")
        listing = stream_text(second.run("print(get_ipython().run_line_magic('rjob', 'list --all'))"))
        assert "survivor" in listing and "nshost3" in listing
        adopted = second.run("%rjob connect nshost3")
        assert "survivor" in "".join(o.text for o in adopted)
        outputs = second.run("%rjob receive survivor --wait", timeout=60)
        assert not errors(outputs), "".join(o.text for o in outputs)
        rest = stream_text(outputs)
        assert [int(n) for n in (seen + rest).split()] == list(range(40))
        assert second.value("get_ipython().run_line_magic('rjob', 'receive survivor')") is None  # all was received
        assert second.value("__import__('jupyter_rjobs.ipython.extension', fromlist=['x']).get_manager().get('survivor').result()") == "all done"
    finally:
        second.shutdown()
        second.close()
