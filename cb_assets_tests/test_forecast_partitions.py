"""The rule that holds seconds open for partitions that still have unread messages (forecast/partitions.py)."""

from __future__ import annotations

import time

from cb_assets.forecast.partitions import PartitionProgress


def test_a_lagging_partition_holds_seconds_after_its_newest_tick() -> None:
    progress = PartitionProgress()
    progress.assigned([(0, 0), (1, 0)])
    progress.seen(0, 500)
    progress.seen(1, 120)
    progress.seen(1, 110)  # an older tick does not move a partition back
    assert progress.closable(499, {0: 0, 1: 900}, floor=100) == 119
    assert progress.closable(499, {0: 0, 1: 0}, floor=100) == 499  # caught up: nothing held
    assert progress.closable(499, {}, floor=100) == 499  # watermarks unknown: nothing held


def test_a_lagging_partition_that_showed_nothing_holds_everything_and_a_reassignment_forgets() -> None:
    progress = PartitionProgress()
    progress.assigned([(0, 0), (1, 0)])
    progress.seen(0, 500)
    assert progress.closable(499, {0: 0, 1: 10}, floor=100) == 100
    progress.seen(1, 300)
    progress.assigned([(1, 40)])
    assert progress.closable(499, {1: 10}, floor=100) == 100


def test_the_hold_gives_way_when_unread_messages_never_arrive_but_not_while_they_do() -> None:
    progress = PartitionProgress(max_hold_s=0.2)
    progress.seen(0, 500)
    progress.seen(1, 150)
    assert progress.closable(499, {1: 5}, floor=100) == 149
    for second in (160, 170, 180):  # a slow catch-up that keeps delivering keeps its hold
        time.sleep(0.12)
        progress.seen(1, second)
        assert progress.closable(499, {1: 5}, floor=100) == second - 1
    time.sleep(0.25)  # nothing newer: it stops holding
    assert progress.closable(499, {1: 5}, floor=100) == 499
    progress.seen(1, 520)  # it moves again: it holds again
    assert progress.closable(600, {1: 5}, floor=499) == 519
