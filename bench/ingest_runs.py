"""The throughput half of bench/ingest.py: services, one timed sink run, and the sink / naive pair.

A run reads the whole pre-produced topic from offset 0 with a consumer group of its own into a fresh migrated
database, timed from its partition assignment until the commit of the batch holding the N-th tick (the
bundled broker holds every new group ~3 s before assigning partitions, whatever the consumer does).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psutil
from bench_services import PostgresServer, kafka_bootstrap, postgres_server

from cb_assets.db.connection import connect
from cb_assets.stream.sink import CommittedBatch, Sink, SinkConfig

# -- services --------------------------------------------------------------------------------------------


@dataclass
class Services:
    pg: PostgresServer
    bootstrap: str

    def cpu_seconds(self) -> tuple[float, float | None]:
        """CPU time used so far by this process (the sink's threads) and by the embedded PostgreSQL."""
        me = psutil.Process().cpu_times()
        return me.user + me.system, self.pg.cpu_seconds()

    def fresh_database(self) -> str:
        return self.pg.fresh_database()


@contextlib.contextmanager
def services() -> Iterator[Services]:
    with postgres_server() as pg, kafka_bootstrap() as bootstrap:
        yield Services(pg, bootstrap)


class _BackendClock:
    """CPU time of the sink's PostgreSQL backend on a configured server that runs on this machine."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.proc: psutil.Process | None = None
        self.start = 0.0

    def begin(self) -> None:
        with contextlib.suppress(Exception), connect(self.url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name = 'cb-assets sink'"
            ).fetchone()
            if row:
                self.proc = psutil.Process(int(row[0]))
                self.start = self._cpu()

    def _cpu(self) -> float:
        assert self.proc is not None
        t = self.proc.cpu_times()
        return t.user + t.system

    def seconds(self) -> float | None:
        if self.proc is None:
            return None
        with contextlib.suppress(psutil.Error):
            return self._cpu() - self.start
        return None


def row_count(url: str) -> int:
    with connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM raw_ticks").fetchone()
    return int(row[0]) if row else 0


# -- throughput ------------------------------------------------------------------------------------------


class _AssignmentClock(logging.Handler):
    """When the sink logs its partition assignment: the group join is over and fetching starts."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.at: float | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.at is None and record.getMessage().startswith("assigned"):
            self.at = time.perf_counter()


@dataclass
class SinkRun:
    label: str
    ticks: int
    total_s: float  # run() called -> commit of the batch holding the last tick
    join_s: float  # run() called -> partitions assigned (consumer group join, a broker matter)
    steady_s: float  # first commit -> last commit
    first_batch: int
    batches: int
    cpu_sink_s: float = 0.0  # this process (sink threads and librdkafka's) during the run
    cpu_pg_s: float | None = None  # the embedded PostgreSQL during the run
    load_before: float = 0.0  # 1-minute load average when the run started (the machine is shared)
    cpu_backend_s: float | None = None  # configured server: the sink's backend, first commit to last
    rows: int = 0  # rows in raw_ticks after the run

    def sink_us(self) -> float:
        return self.cpu_sink_s / self.ticks * 1e6 if self.ticks else math.nan

    def pg_text(self) -> str:
        if self.cpu_pg_s is not None:
            return f", PostgreSQL {self.cpu_pg_s / self.ticks * 1e6:.1f} us"
        if self.cpu_backend_s is not None and self.ticks > self.first_batch:
            us = self.cpu_backend_s / (self.ticks - self.first_batch) * 1e6
            return f", PostgreSQL backend {us:.1f} us (first commit to last)"
        return ""

    @property
    def rate(self) -> float:
        """Ticks over the time from partition assignment to the last commit: the sink's own work."""
        busy = self.total_s - self.join_s
        return self.ticks / busy if busy > 0 else 0.0

    @property
    def total_rate(self) -> float:
        return self.ticks / self.total_s if self.total_s > 0 else 0.0

    @property
    def steady_rate(self) -> float:
        return (self.ticks - self.first_batch) / self.steady_s if self.steady_s > 0 else 0.0


def run_sink(label: str, svc: Services, cfg: SinkConfig, n: int, timeout_s: float) -> SinkRun:
    commits: list[tuple[float, int]] = []
    done = 0
    cpu1: tuple[float, float | None] = (0.0, None)
    backend = _BackendClock(cfg.database_url) if svc.pg.postmaster is None else None
    backend_s: float | None = None

    def on_commit(b: CommittedBatch) -> None:
        nonlocal done, cpu1, backend_s
        if not commits and backend is not None:
            backend.begin()
        commits.append((time.perf_counter(), len(b.message_timestamps_ms)))
        done += len(b.message_timestamps_ms)
        if done >= n:
            # Sampled at the last commit, while the sink's server backend still runs (a backend that has
            # exited but is not yet reaped by the postmaster would be counted nowhere).
            cpu1 = svc.cpu_seconds()
            backend_s = backend.seconds() if backend is not None else None

    stop = threading.Event()
    watchdog = threading.Timer(timeout_s, stop.set)  # a broken run stops instead of hanging the bench
    watchdog.start()
    clock = _AssignmentClock()
    sink_log = logging.getLogger("cb_assets.stream.sink")
    sink_log.addHandler(clock)
    level = sink_log.level
    sink_log.setLevel(logging.INFO)  # the console handler still prints WARNING and up only
    sink = Sink(cfg, on_commit=on_commit)
    load = os.getloadavg()[0]
    cpu0 = svc.cpu_seconds()
    t0 = time.perf_counter()
    try:
        stats = sink.run(stop, max_messages=n)
    finally:
        watchdog.cancel()
        sink_log.removeHandler(clock)
        sink_log.setLevel(level)
    if done < n:
        cpu1 = svc.cpu_seconds()
    if stop.is_set():
        print(f"  WARNING: {label} hit the {timeout_s:.0f} s watchdog")
    if not commits:
        return SinkRun(label, 0, time.perf_counter() - t0, 0.0, 0.0, 0, 0)
    return SinkRun(
        label,
        stats.consumed,
        commits[-1][0] - t0,
        (clock.at or t0) - t0,
        commits[-1][0] - commits[0][0],
        commits[0][1],
        len(commits),
        cpu1[0] - cpu0[0],
        None if cpu0[1] is None or cpu1[1] is None else cpu1[1] - cpu0[1],
        load,
        backend_s,
    )


def throughput_runs(svc: Services, topic: str, products: tuple[str, ...], n: int) -> tuple[SinkRun, SinkRun]:
    """The sink and the naive sink over the same topic, each from offset 0 into a fresh database."""
    timeout_s = 120 + n / 5_000
    runs: list[SinkRun] = []
    for label, naive in (
        ("sink (batch path, binary COPY)", False),
        ("naive sink (parse_tick, executemany)", True),
    ):
        url = svc.fresh_database()
        cfg = SinkConfig(
            bootstrap=svc.bootstrap,
            topic=topic,
            database_url=url,
            products=products,
            group_id=f"bench-{'naive' if naive else 'sink'}-{uuid.uuid4().hex[:6]}",
            naive=naive,
        )
        r = run_sink(label, svc, cfg, n, timeout_s)
        r.rows = row_count(url)
        runs.append(r)
        print(
            f"{label}: {r.ticks:,} ticks in {r.total_s - r.join_s:.2f} s from partition assignment to the "
            f"last commit = {r.rate:,.0f} ticks/s\n"
            f"  (group join {r.join_s:.2f} s; with it {r.total_rate:,.0f} ticks/s; first commit to last "
            f"{r.steady_rate:,.0f} ticks/s; {r.batches} batches; {r.rows:,} rows in raw_ticks)\n"
            f"  CPU per tick: sink process {r.sink_us():.1f} us{r.pg_text()}; "
            f"1-min load average at start {r.load_before:.2f} on {os.cpu_count()} CPUs"
        )
    return runs[0], runs[1]
