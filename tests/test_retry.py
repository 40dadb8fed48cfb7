"""The tasks' retry policy (tasks/_retry.py): outages and CPython's threaded-AST race are retried,
errors aniso raised on purpose and other bugs are not. Real Prefect tasks under the test harness."""

from __future__ import annotations

import pytest

from aniso.errors import InputError
from tasks._retry import AST_RACE, TASK_OPTIONS

FAILURES = {
    "ast race": (SystemError(f"{AST_RACE} (before=75, after=73)"), True),
    "storage outage": (OSError("connection reset"), True),
    "bad input": (InputError("row 3 is NaN"), False),
    "another SystemError": (SystemError("error return without exception set"), False),
    "a bug": (KeyError("x"), False),
}


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_a_task_retries_only_what_a_second_attempt_can_cure(prefect_harness, case):
    from prefect import flow, task

    error, retried = FAILURES[case]
    attempts = []

    @task(**{**TASK_OPTIONS, "retry_delay_seconds": 0})
    def fails_once() -> str:
        attempts.append(1)
        if len(attempts) == 1:
            raise error
        return "done"

    @flow
    def run() -> str:
        return fails_once()

    if retried:
        assert run() == "done" and len(attempts) == 2
    else:
        with pytest.raises(type(error)):
            run()
        assert len(attempts) == 1
