"""Types and lint: mypy --strict and ruff, configured in pyproject.toml, over the package.

Run in the newest leg (tests/run.sh), where the newest mypy, ruff and library types are; the
oldest leg's older IPython and Python give other (older) type information, so it skips saying so."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _newest_leg_only() -> None:
    if os.environ.get("RJOBS_EXPECT_INSTALL") == "editable":
        pytest.skip("types and lint are checked in the newest leg (the oldest has older IPython and Python types)")


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=CHECKOUT, capture_output=True, text=True, timeout=600)


def test_mypy_strict_is_clean() -> None:
    done = _run("mypy")  # files, strict and the commented allowlist: pyproject.toml [tool.mypy]
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_ruff_is_clean() -> None:
    done = _run("ruff", "check", "jupyter_rjobs")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_package_says_it_is_typed() -> None:
    import jupyter_rjobs

    assert (Path(jupyter_rjobs.__file__).parent / "py.typed").is_file()  # shipped in the wheel too
