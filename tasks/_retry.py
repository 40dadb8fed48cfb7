"""Retry policy shared by every task: retry only transient I/O, never bad input."""

from __future__ import annotations

from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.exceptions import HTTPClientError
from prefect.cache_policies import NO_CACHE

from aniso.errors import AnisoError

RETRIES = 3
RETRY_DELAYS = [1, 4, 10]

#: Failures that a later attempt can cure: storage or network outages.
TRANSIENT = (OSError, ConnectionError, TimeoutError, BotoConnectionError, HTTPClientError)
#: A CPython 3.11 bug (gh-106905, fixed in 3.12): the AST constructor's recursion counter is shared
#: by the threads of a process, so ``ast.literal_eval`` (numpy reads every ``.npy`` header with it)
#: in two Dask worker threads at once can fail with this SystemError. Measured here: one moments
#: merge of a 1M-row run failed so. A second attempt parses the same bytes.
AST_RACE = "AST constructor recursion depth mismatch"


def transient_only(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry outages, never errors aniso raised on purpose."""
    try:
        state.result()
    except AnisoError:
        return False
    except TRANSIENT:
        return True
    except SystemError as exc:
        return AST_RACE in str(exc)
    except Exception:
        return False
    return False


TASK_OPTIONS = dict(retries=RETRIES, retry_delay_seconds=RETRY_DELAYS, retry_condition_fn=transient_only,
                    persist_result=False, cache_policy=NO_CACHE)
