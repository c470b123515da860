"""The PAM tier's fixture (tests/pamlab.py): ``pam_hosts``, a pytest plugin of conftest.py.

Module scope: each module that uses it starts the PAM sshds beside the session's SshLab and
stops them at its end. When they cannot start: an error under CI, a skip saying why elsewhere.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from helpers import start_tier
from pamlab import PAM_PACKAGES, PamHosts
from sshlab import SshLab


@pytest.fixture(scope="module")
def pam_hosts(ssh_lab: SshLab) -> Iterator[PamHosts]:
    pam = PamHosts(ssh_lab)
    start_tier(pam.start, f"the PAM login tests need {', '.join(PAM_PACKAGES)} besides the SSH lab")
    try:
        yield pam
    finally:
        pam.close()
