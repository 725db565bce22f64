"""CPU priority of training, so a fine-tune on the same cores does not delay the live forecaster.

On two cores a fine-tune's TensorFlow threads take both cores for 15-30 s; the forecaster (and the sink
that feeds it) then waited its turn: bench/forecast.py measured the live p99 from tick to forecast row at
412 ms beside a training at nice 0 and 136 ms beside the same training at nice 10. A training at a lower
priority (a higher nice value) still gets every cycle the live path does not use.

Linux keeps the nice value per thread and a new thread inherits its creator's, so the context manager sets
it on every thread of the process that exists when it starts (TensorFlow may have created its pools
already) and on the calling thread, whose later threads inherit it. Raising the priority back needs
CAP_SYS_NICE: without it the process keeps the lower priority, which costs nothing in a Dagster run worker
(it ends with the run) and only slows a test process that trains in-process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MAX_NICE = 19
# price_model's default: the live forecaster and the sink on the same cores come first.
TRAINING_NICE = 10


def _thread_ids() -> set[int]:
    try:
        return {int(t.name) for t in Path("/proc/self/task").iterdir()}
    except OSError:  # no /proc (not Linux): the calling thread is all this can change
        return {threading.get_native_id()}


def _nice_of(tid: int) -> int | None:
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:  # the thread ended in between
        return None


def _set_nice(tid: int, value: int) -> bool:
    try:
        os.setpriority(os.PRIO_PROCESS, tid, value)
        return True
    except OSError:  # ended in between, or raising a priority without CAP_SYS_NICE
        return False


@contextmanager
def training_priority(nice: int) -> Iterator[dict[int, int]]:
    """Run the block with every thread of this process at nice value `nice` or lower priority (0 leaves
    priorities alone).

    Yields the threads it lowered with their earlier values. On exit it puts those back, and gives threads
    started inside the block (TensorFlow's pools) the calling thread's earlier value, where it may."""
    if not 0 <= nice <= MAX_NICE:
        raise ValueError(f"nice must be within 0..{MAX_NICE}, got {nice}")
    lowered: dict[int, int] = {}
    me = threading.get_native_id()
    before_block = _thread_ids() | {me}
    if nice:
        for tid in before_block:
            before = _nice_of(tid)
            if before is not None and before < nice and _set_nice(tid, nice):
                lowered[tid] = before
    try:
        yield lowered
    finally:
        inherited = lowered.get(me)
        started_inside = {} if inherited is None else dict.fromkeys(_thread_ids() - before_block, inherited)
        for tid, value in {**started_inside, **lowered}.items():
            _set_nice(tid, value)
