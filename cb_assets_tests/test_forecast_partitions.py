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


def test_a_second_closes_when_every_partition_is_past_it_or_its_ticks_have_lingered() -> None:
    progress = PartitionProgress()
    progress.assigned([(0, 0), (1, 0)])
    for partition, second in ((0, 101), (1, 101), (0, 106), (1, 104)):
        progress.seen(partition, second, now=10.0)
    assert progress.settled(100, linger_s=0.05, now=10.01) == 103  # both partitions are past 103
    assert progress.settled(100, linger_s=0.05, now=10.06) == 106  # 106 waited the linger
    progress.seen(1, 106, now=10.07)  # late for a closed second: nothing held for it
    progress.seen(1, 111, now=10.08)
    progress.seen(1, 112, now=10.2)
    assert progress.settled(106, linger_s=0.05, now=10.21) == 111  # 112 is too new; partition 0 is quiet
    assert progress.settled(106, linger_s=0.05, now=10.3) == 112
    assert progress.first_seen == {111: 10.08, 112: 10.2}  # forgotten once passed as the floor:
    assert progress.settled(112, linger_s=0.05, now=10.4) == 112 and progress.first_seen == {}


def test_a_lagging_partitions_older_second_is_not_closed_by_a_newer_one_before_the_linger() -> None:
    """A fast replay: partition 0 shows second 110 before partition 1's ticks of 105 are in."""
    progress = PartitionProgress()
    progress.assigned([(0, 0), (1, 0)])
    progress.seen(0, 105, now=1.0)
    progress.seen(1, 100, now=1.0)
    progress.seen(0, 110, now=1.01)
    assert progress.settled(100, linger_s=0.05, now=1.02) == 100  # 105 may still get partition 1's tick
    progress.seen(1, 105, now=1.03)  # (its other products may still have ticks of 105)
    assert progress.settled(100, linger_s=0.05, now=1.03) == 104
    assert progress.settled(100, linger_s=0.05, now=1.05) == 105
