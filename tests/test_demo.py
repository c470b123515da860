"""The README's first command: the demo runs to the end in a fresh process."""

from __future__ import annotations

import subprocess
import sys

from user_sees import assert_user_sees_no_noise, from_transcript


def test_the_demo_runs_every_magic_and_exits_cleanly():
    done = subprocess.run(
        [sys.executable, "-m", "jupyter_rjobs", "demo"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    out = done.stdout
    assert "step 0\nstep 1\nstep 2\n" in out
    assert "Out[8]: 499999500000" in out
    assert "Timed out after 0.5 s; still running: 3 (forever, Running)" in out
    assert "ZeroDivisionError: division by zero" in out
    assert "Removed job 1 (crunch), job 2 (squares)" in out
    assert "UsageError" not in out + done.stderr
    # what the user sees: no traceback at all (the failed job is shown as its state and one-line error),
    # no callback errors, no stderr
    assert_user_sees_no_noise(from_transcript(out, done.stderr))
