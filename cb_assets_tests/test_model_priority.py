"""Training's CPU priority (model/priority.py): every thread of the process yields while the block runs,
threads started inside inherit it, and priorities come back afterwards."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from cb_assets.model.priority import training_priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")


def nice_of(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def all_threads() -> set[int]:
    return {int(t) for t in os.listdir("/proc/self/task")}


def test_every_thread_yields_inside_the_block_and_a_thread_started_there_inherits_it() -> None:
    started, stop = threading.Event(), threading.Event()
    seen: dict[str, int] = {}

    def earlier() -> None:
        seen["earlier"] = threading.get_native_id()
        started.set()
        stop.wait()

    t = threading.Thread(target=earlier)
    t.start()
    started.wait()
    me = threading.get_native_id()
    before = {tid: nice_of(tid) for tid in all_threads()}
    assert before[me] < 12, "the test process already runs at nice 12 or more"
    with training_priority(12) as lowered:
        inside = threading.Thread(target=lambda: seen.setdefault("inside", nice_of(0)))
        inside.start()
        inside.join()
        assert nice_of(me) == 12 and nice_of(seen["earlier"]) == 12
        assert seen["inside"] == 12, "a thread TensorFlow starts in the block must inherit the priority"
        assert me in lowered and seen["earlier"] in lowered
    if os.geteuid() != 0:
        stop.set()
        pytest.skip("putting the priority back needs CAP_SYS_NICE (root here in CI)")
    assert nice_of(me) == before[me] and nice_of(seen["earlier"]) == before[seen["earlier"]]
    stop.set()
    t.join()


def test_a_thread_started_in_the_block_and_still_running_gets_the_callers_priority_back() -> None:
    if os.geteuid() != 0:
        pytest.skip("putting the priority back needs CAP_SYS_NICE (root here in CI)")
    ready, stop = threading.Event(), threading.Event()
    tid: list[int] = []

    def pool_worker() -> None:  # as TensorFlow's pools outlive the training that started them
        tid.append(threading.get_native_id())
        ready.set()
        stop.wait()

    caller_before = nice_of(0)
    with training_priority(15):
        worker = threading.Thread(target=pool_worker)
        worker.start()
        ready.wait()
        assert nice_of(tid[0]) == 15
    assert nice_of(tid[0]) == caller_before
    stop.set()
    worker.join()


def test_nice_zero_changes_nothing_and_values_outside_the_range_are_refused() -> None:
    before = {tid: nice_of(tid) for tid in all_threads()}
    with training_priority(0) as lowered:
        assert lowered == {}
        assert {tid: nice_of(tid) for tid in before if tid in all_threads()} == before
    for bad in (-1, 20):
        with pytest.raises(ValueError, match=r"nice must be within 0\.\.19"), training_priority(bad):
            pass
