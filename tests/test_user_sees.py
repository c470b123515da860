"""The checker of what a user sees (tests/user_sees.py) catches each kind of noise it is meant to."""

from __future__ import annotations

from user_sees import Seen, from_transcript, noise


def test_clean_output_passes():
    assert noise([Seen("c", stdout="Out[1]: 2\n")]) == []


def test_each_kind_of_noise_is_caught():
    assert "Error in callback" in noise([Seen("c", stdout="Error in callback <function f> (for pre_run_cell)")])[0]
    assert "unexpected stderr" in noise([Seen("c", stderr="WARNING: something\n")])[0]
    assert "unexpected error output" in noise([Seen("c", errors=["TypeError"])])[0]
    tb = "Traceback (most recent call last):\n  File x\nTypeError: boom\n"
    assert "unexpected traceback" in noise([Seen("c", stdout=tb)])[0]


def test_expected_errors_are_allowed_only_where_named():
    tb = "-" * 75 + "\nZeroDivisionError                         Traceback (most recent call last)\nZeroDivisionError: division by zero\n"
    transcript = "In [1]: %rjob receive oops\n" + tb + "In [2]: 1\nOut[2]: 1\nIn [3]: other\n" + tb
    found = noise(from_transcript(transcript, "", {"receive oops": ["ZeroDivisionError"]}))
    assert len(found) == 1 and "In [3]" in found[0]
    assert noise(from_transcript("In [1]: x\n", "stray\n")) == ["the process's stderr: unexpected stderr 'stray'"]
