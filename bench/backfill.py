"""Speed of a single-run backfill of the asset graph: raw_ticks -> filled_series -> indicators -> training_windows.

Run: `python bench/backfill.py [--hours 24] [--products 12]`. Target on 2 CPU cores: 24 hours x 12 products
backfilled in <= 60 s in total (all four assets), the cost linear in hours x products (beyond 12 products
the extra ones are simulated as X00-USD, ...). It also prints the disk used per product-hour by every store
and the budget that implies for 12 and 100 products.

What it does:
- PostgreSQL: a fresh database on the server of CB_DATABASE_URL when set (created here, dropped at the end),
  else an embedded server in a temporary directory on a free port (stopped and removed at the end).
- Seeds `--hours` simulated hours plus one warm-up hour before them x the 12 default products straight into
  raw_ticks (timed separately: it is not part of the backfill).
- Materialises the warm-up hour (every asset, one ordinary partition run): the first backfilled hour reads it
  as its look-back, and the assets refuse to run on a look-back hour that has raw ticks but was never computed.
  This run is timed and printed but not counted; it also compiles/loads the numba kernels, so the backfill
  figures are steady-state.
- Backfills the hours as a single-run backfill launches them (the tags
  `dagster/asset_partition_range_start`/`_end`): by default ONE RUN PER ASSET over the whole range, in
  dependency order (how a backfill orders them, and each asset's wall time is then its run's), or with
  `--one-run` one run of all four assets over the range. Per asset it prints the step's duration (STEP_START
  to STEP_SUCCESS in the run's event log) and, per run, the run's wall time including Dagster's own overhead.
- Prints rows written per table and windows stored. It prints figures, never asserts.

`--profile FILE` writes cProfile statistics of the backfill runs (all in this process) to FILE.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
from bench_services import postgres_server

from cb_assets.config import DEFAULT_PRODUCTS
from cb_assets.db.connection import connect
from cb_assets.db.migrate import migrate
from cb_assets.defs.resources import resources_for
from cb_assets.feed.seed import simulate_rows, write_rows
from cb_assets.series.clock import partition_key
from cb_assets.series.window_store import WindowStore

ASSET_NAMES = ("raw_ticks", "filled_series", "indicators", "training_windows")
TARGET_S = 60.0
HOUR = timedelta(hours=1)
# A fixed past day: partition keys and results do not depend on when the benchmark runs.
FIRST_HOUR = datetime(2024, 3, 1, tzinfo=UTC)


@contextlib.contextmanager
def database() -> Iterator[str]:
    """URL of an empty database for this run, removed afterwards (with its server when we started one)."""
    with postgres_server() as pg:
        yield pg.fresh_database(migrated=False)


def assets_defs(names: Sequence[str]) -> list[dg.AssetsDefinition]:
    from cb_assets.definitions import defs

    return [defs.get_assets_def(n) for n in names]


def step_seconds(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Per step key, STEP_START -> STEP_SUCCESS (or failure) from the run's event log."""
    starts: dict[str, float] = {}
    out: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        ev = entry.dagster_event
        if ev is None or ev.step_key is None:
            continue
        if ev.event_type == dg.DagsterEventType.STEP_START:
            starts[ev.step_key] = entry.timestamp
        elif ev.event_type in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            out[ev.step_key] = entry.timestamp - starts.get(ev.step_key, entry.timestamp)
    return out


def run(
    names: Sequence[str],
    res: dict[str, object],
    instance: dg.DagsterInstance,
    first: str,
    last: str,
) -> tuple[bool, float, dict[str, float]]:
    tags = (
        {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last}
        if first != last
        else {}
    )
    t = time.perf_counter()
    result = dg.materialize(
        assets_defs(names),
        resources=res,
        instance=instance,
        tags=tags,
        partition_key=first if first == last else None,
        raise_on_error=False,
        # Dagster's DEBUG console lines would bury the figures; failures are printed below.
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    wall = time.perf_counter() - t
    if not result.success:
        for ev in result.all_events:
            if ev.event_type == dg.DagsterEventType.STEP_FAILURE:
                print(f"  FAILED {ev.step_key}: {ev.step_failure_data.error.message.strip()[:500]}")
    return result.success, wall, step_seconds(instance, result.run_id)


def count_rows(url: str, start: datetime, end: datetime) -> dict[str, int]:
    with connect(url) as conn:
        counts = {
            table: conn.execute(
                f"SELECT count(*) FROM {table} WHERE time >= %s AND time < %s", (start, end)
            ).fetchone()[0]
            for table in ("raw_ticks", "filled_series", "indicators")
        }
        counts["kalman_params"] = conn.execute(
            "SELECT count(*) FROM kalman_params WHERE hour >= %s AND hour < %s", (start, end)
        ).fetchone()[0]
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=int, default=24, help="hours to backfill (default 24)")
    parser.add_argument("--seed", type=int, default=0, help="simulator seed")
    parser.add_argument("--one-run", action="store_true", help="one run of all four assets over the range")
    parser.add_argument("--profile", type=Path, help="write cProfile stats of the backfill runs here")
    parser.add_argument("--products", type=int, default=12, help="products (beyond 12: simulated extras)")
    args = parser.parse_args()
    # As in pytest.ini_options: the single-run backfill policy is a beta parameter, said once per asset.
    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    warnings.filterwarnings("ignore", category=dg.PreviewWarning)

    products = tuple(DEFAULT_PRODUCTS) + tuple(f"X{i:02d}-USD" for i in range(max(0, args.products - 12)))
    products = products[: args.products]
    warm, first_hour = FIRST_HOUR - HOUR, FIRST_HOUR
    last_hour = first_hour + (args.hours - 1) * HOUR
    first, last = partition_key(first_hour), partition_key(last_hour)
    print(
        f"backfill of {args.hours} h x {len(products)} products ({first} .. {last}), "
        f"{'one run for all assets' if args.one_run else 'one run per asset'} over the range"
    )

    with database() as url, tempfile.TemporaryDirectory(prefix="cb-bench-home-") as home:
        migrate(url)
        t = time.perf_counter()
        _, rows = simulate_rows(products, warm, args.hours + 1, seed=args.seed)
        t_sim = time.perf_counter() - t
        t = time.perf_counter()
        inserted = write_rows(url, rows)
        t_write = time.perf_counter() - t
        print(
            f"seeding: {inserted:,} ticks ({args.hours + 1} h incl. warm-up) simulated in {t_sim:.1f} s, "
            f"written in {t_write:.1f} s"
        )

        res = resources_for(url, Path(home), products)
        (Path(home) / "dagster").mkdir()
        with dg.instance_for_test(temp_dir=str(Path(home) / "dagster")) as instance:
            ok, wall, _ = run(ASSET_NAMES, res, instance, partition_key(warm), partition_key(warm))
            print(f"warm-up hour {partition_key(warm)}, all assets, one run: {wall:.1f} s (not counted)")
            if not ok:
                return

            groups = [list(ASSET_NAMES)] if args.one_run else [[n] for n in ASSET_NAMES]
            profiler = cProfile.Profile() if args.profile else None
            per_step: dict[str, float] = {}
            run_walls: list[tuple[str, float]] = []
            t_total = time.perf_counter()
            for names in groups:
                if profiler:
                    profiler.enable()
                ok, wall, steps = run(names, res, instance, first, last)
                if profiler:
                    profiler.disable()
                per_step.update(steps)
                run_walls.append(("+".join(names), wall))
                if not ok:
                    break
            total = time.perf_counter() - t_total
            if profiler:
                profiler.dump_stats(str(args.profile))

        print("backfill, per asset (step STEP_START -> STEP_SUCCESS):")
        for name in ASSET_NAMES:
            if name in per_step:
                print(f"  {name:<17} {per_step[name]:7.1f} s")
        for key, seconds in per_step.items():
            if key not in ASSET_NAMES:
                print(f"  {key:<17} {seconds:7.1f} s (other step)")
        print("backfill, per run (wall, incl. Dagster overhead):")
        for label, wall in run_walls:
            print(f"  {label:<17} {wall:7.1f} s")
        versus = (
            f"{total / TARGET_S:.2f} x the target of {TARGET_S:.0f} s"
            if args.hours == 24
            else f"the target of {TARGET_S:.0f} s is for 24 h"
        )
        print(f"backfill total: {total:.1f} s for {args.hours} h ({versus})")

        counts = count_rows(url, first_hour, last_hour + HOUR)
        print("rows in the backfilled hours: " + ", ".join(f"{k} {v:,}" for k, v in counts.items()))
        store = WindowStore(Path(home) / "windows")
        stored = store.keys()  # partition keys, not a dict's
        keys = [k for k in stored if first <= k <= last]
        sets = [store.load(k) for k in keys]
        n_windows = sum(len(ws) for ws in sets)
        n_valid = sum(int(ws.valid.sum()) for ws in sets)
        print(f"windows stored: {n_windows:,} in {len(keys)} hour partitions, {n_valid:,} valid")
        print(f"per product-hour: {total / (args.hours * len(products)) * 1000:.0f} ms of backfill")
        disk(url, Path(home), args.hours + 1, len(products))


def disk(url: str, home: Path, hours: int, n_products: int) -> None:
    """Bytes per product-hour of every store (tables with their indexes), and the budget they imply."""
    ph = hours * n_products
    with connect(url) as conn:
        sizes = {
            t: conn.execute("SELECT pg_total_relation_size(%s)", (t,)).fetchone()[0]
            for t in ("raw_ticks", "filled_series", "indicators", "kalman_params")
        }
    files = {
        "training windows (.npy)": sum(
            f.stat().st_size for f in (home / "windows").rglob("*") if f.is_file()
        ),
        "Dagster event log (sqlite here)": sum(
            f.stat().st_size for f in (home / "dagster").rglob("*") if f.is_file()
        ),
    }
    print("disk per product-hour:")
    for name, size in {**sizes, **files}.items():
        print(f"  {name:<32} {size / ph / 1024:8.1f} KiB")
    model = _model_bytes(n_products)
    print(f"  {'one model version (.keras)':<32} {model / 1024 / 1024:8.1f} MiB (per version, not per hour)")
    derived = sum(sizes[t] for t in ("filled_series", "indicators")) + files["training windows (.npy)"]
    raw = sizes["raw_ticks"]
    for products in (12, 100):
        day = 24 * products
        print(
            f"budget for {products} products: raw {raw / ph * day * 365 / 2**30:.1f} GiB/year (kept); derived "
            f"{derived / ph * day * 30 / 2**30:.1f} GiB for 30 days of retention"
        )


def _model_bytes(n_products: int) -> int:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from cb_assets.model.network import NetworkConfig, build_model, save_model

    with tempfile.TemporaryDirectory() as tmp:
        cfg = NetworkConfig(n_features=n_products * 43, n_outputs=n_products * 4)
        return save_model(build_model(cfg), Path(tmp) / "m.keras").stat().st_size


if __name__ == "__main__":
    main()
