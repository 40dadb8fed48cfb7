"""Progress in rows (aniso.progress) and the CLI's plain-line display (aniso.flows._console)."""

from __future__ import annotations

import logging
import time

import pytest

from aniso import progress
from aniso.flows._console import _PlainProgress
from aniso.quality.metric_info import format_value


@pytest.fixture(autouse=True)
def _clean():
    progress.reset()
    previous = progress.set_callback(None)
    yield
    progress.set_callback(None)
    for cb in previous:
        progress.add_callback(cb)


def test_events_carry_rows_rate_and_eta():
    events = []
    progress.set_callback(events.append)
    progress.report("apply", 0, 1000)
    time.sleep(0.05)
    mid = progress.report("apply", 250, 1000)
    assert mid.rate is not None and 250 / mid.elapsed == pytest.approx(mid.rate)
    assert mid.eta == pytest.approx(750 / mid.rate)
    end = progress.report("apply", 1000, 1000)
    assert end.finished and end.eta == 0.0 and end.elapsed >= mid.elapsed
    assert [e.done for e in events] == [0, 250, 1000]
    assert "rows/s" in progress.format_event(mid) and "ETA" in progress.format_event(mid)
    assert "done in" in progress.format_event(end)


def test_unknown_rate_before_any_row_and_empty_stage():
    first = progress.report("fit", 0, 7)
    assert first.rate is None and first.eta is None and "elapsed" in progress.format_event(first)
    empty = progress.report("publish", 0, 0)
    assert empty.finished and empty.fraction == 1.0


@pytest.mark.parametrize(("n", "text"), [(950, "950"), (1234, "1.23k"), (2_500_000, "2.5M"), (3e9, "3G")])
def test_format_rows(n, text):
    assert progress.format_rows(n) == text


def test_plain_lines_are_throttled_per_stage(caplog):
    display = _PlainProgress(interval=3600, heartbeat=False)
    progress.set_callback(display)
    with caplog.at_level(logging.INFO, logger="aniso.progress"):
        progress.report("embed text", 0, 10_000)
        for done in range(1, 10):  # within the interval: no line
            progress.report("embed text", done * 1000, 10_000)
        progress.report("embed text", 10_000, 10_000)
    lines = [r.getMessage() for r in caplog.records if r.name == "aniso.progress"]
    assert len(lines) == 2, lines
    assert lines[0] == "embed text: 10k rows, started"
    assert lines[1].startswith("embed text: 10k/10k rows (100%) done in")


def test_plain_lines_repeat_after_the_interval(caplog):
    display = _PlainProgress(interval=0.0, heartbeat=False)
    progress.set_callback(display)
    with caplog.at_level(logging.INFO, logger="aniso.progress"):
        for done in (0, 10, 20, 30):
            progress.report("apply", done, 30)
    assert len([r for r in caplog.records if r.name == "aniso.progress"]) == 4


@pytest.mark.parametrize(("value", "text"), [(1.604415000855397e-08, "1.60e-08"), (0.9479575868488007, "0.948"),
                                             (600, "600"), (1.0, "1"), (True, "yes"), (12.3456, "12.35")])
def test_human_numbers(value, text):
    assert format_value(value) == text


def test_a_silent_stage_gets_a_heartbeat_line(caplog):
    display = _PlainProgress(interval=0.2)
    progress.set_callback(display)
    try:
        with caplog.at_level(logging.INFO, logger="aniso.progress"):
            progress.report("gates", 0, 3000)  # a one-task stage: nothing until it ends
            time.sleep(1.0)
            progress.report("gates", 3000, 3000)
    finally:
        display.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "aniso.progress"]
    assert lines[0] == "gates: 3k rows, started" and lines[-1].startswith("gates: 3k/3k rows (100%) done in")
    beats = lines[1:-1]
    assert beats and all(b.startswith("gates: 0/3k rows (0%), ") and b.endswith("s elapsed") for b in beats)


# -- shard batches: few, large tasks ---------------------------------------------------------
@pytest.mark.parametrize("n, slots, sizes", [
    (0, 2, []),
    (1, 2, [1]),
    (4, 2, [1, 1, 1, 1]),  # up to two tasks per worker thread: one shard each
    (5, 2, [2, 2, 1]),
    (16, 2, [4, 4, 4, 4]),  # 1M rows in 65,536-row shards on two threads
    (32, 2, [4] * 8),  # never more than MAX_SHARDS_PER_TASK
    (16, 16, [1] * 16),  # a large cluster keeps one shard per task
])
def test_shard_batches_are_consecutive_and_cover_every_shard(n, slots, sizes):
    from aniso.flows._common import MAX_SHARDS_PER_TASK, shard_batches

    groups = shard_batches(list(range(n)), slots)
    assert [len(g) for g in groups] == sizes
    assert [s for g in groups for s in g] == list(range(n))
    assert all(len(g) <= MAX_SHARDS_PER_TASK for g in groups)
