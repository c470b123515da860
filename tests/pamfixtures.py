"""The PAM tier's fixture (tests/pamlab.py): import ``pam_hosts`` into a test module to use it.

Module scope: each module that uses it starts the PAM sshds beside the session's SshLab and
stops them at its end. When they cannot start: an error under CI, a skip saying why elsewhere.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from helpers import in_ci
from pamlab import PAM_PACKAGES, PamHosts
from sshlab import LabUnavailable, SshLab


@pytest.fixture(scope="module")
def pam_hosts(ssh_lab: SshLab) -> Iterator[PamHosts]:
    pam = PamHosts(ssh_lab)
    try:
        pam.start()
    except Exception as exc:  # noqa: BLE001 - any setup failure: error in CI, skip elsewhere
        if in_ci():
            raise
        reason = exc.reason if isinstance(exc, LabUnavailable) else f"{type(exc).__name__}: {exc}"
        pytest.skip(f"the PAM login tests need {', '.join(PAM_PACKAGES)} besides the SSH lab: {reason}")
    try:
        yield pam
    finally:
        pam.close()
