"""The forecast ledger: forecasts written while they are in the future, outcomes attached once the data has
passed them, guard counts, the forecaster's heartbeat and the per-hour live scores.

Outcomes come from raw_ticks, the authoritative record, not from the forecaster's memory: a forecaster that
restarts (or a ledger row written during a replay) is scored the same way, by one indexed lookup per row.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

import pandas as pd
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

LEDGER_COLUMNS = (
    "version_id",
    "product_id",
    "anchor",
    "horizon_s",
    "forecast_return",
    "forecast_price",
    "last_price",
)
_INSERT = (
    "INSERT INTO forecasts (version_id, product_id, anchor, horizon_s, forecast_return, forecast_price, "
    "last_price) VALUES (%s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (version_id, product_id, anchor, horizon_s) DO NOTHING"
)
OBSERVED = "observed"


@dataclass(frozen=True)
class LedgerRow:
    version_id: int
    product_id: str
    anchor: datetime
    horizon_s: int
    forecast_return: float
    forecast_price: float
    last_price: float


def write_forecasts(conn: psycopg.Connection, rows: Sequence[LedgerRow]) -> None:
    """Insert forecasts in one transaction; a row already there (a restart, a replay) is left as it was."""
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            _INSERT,
            [
                (
                    r.version_id,
                    r.product_id,
                    r.anchor,
                    r.horizon_s,
                    r.forecast_return,
                    r.forecast_price,
                    r.last_price,
                )
                for r in rows
            ],
        )


def score_due(conn: psycopg.Connection, slack_s: float = 5.0, limit: int = 50_000) -> int:
    """Attach outcomes to the forecasts whose anchor + horizon the raw table has passed (by `slack_s`, for
    ticks of other partitions still on their way). Returns how many rows were scored.

    The outcome is the last observed price at or before anchor + horizon (what a training label uses); a
    feed gap inside the horizon, or no price at all, is recorded as the reason instead of a number.
    """
    cur = conn.execute(
        """WITH clock AS (SELECT max(time) - make_interval(secs => %(slack)s) AS t FROM raw_ticks),
           due AS (
               SELECT f.version_id, f.product_id, f.anchor, f.horizon_s, f.last_price,
                      f.anchor + make_interval(secs => f.horizon_s) AS at
               FROM forecasts f, clock
               WHERE f.scored_at IS NULL AND f.anchor + make_interval(secs => f.horizon_s) <= clock.t
               ORDER BY f.anchor LIMIT %(limit)s
           ),
           outcome AS (
               SELECT d.*,
                      (SELECT r.price FROM raw_ticks r WHERE r.product_id = d.product_id AND r.time <= d.at
                       ORDER BY r.time DESC LIMIT 1) AS price,
                      EXISTS (SELECT 1 FROM feed_gaps g
                              WHERE g.after_time > d.anchor AND g.before_time < d.at) AS gap
               FROM due d
           )
           UPDATE forecasts f SET
               outcome_price = CASE WHEN o.gap OR o.price IS NULL THEN NULL ELSE o.price END,
               outcome_return = CASE WHEN o.gap OR o.price IS NULL THEN NULL ELSE ln(o.price / f.last_price) END,
               outcome_reason = CASE WHEN o.gap THEN 'feed gap within the horizon'
                                     WHEN o.price IS NULL THEN 'no price at or before anchor + horizon'
                                     ELSE 'observed' END,
               scored_at = now()
           FROM outcome o
           WHERE f.version_id = o.version_id AND f.product_id = o.product_id AND f.anchor = o.anchor
             AND f.horizon_s = o.horizon_s""",
        {"slack": float(slack_s), "limit": int(limit)},
    )
    return cur.rowcount


def drop_summarised(conn: psycopg.Connection, older_than: datetime) -> int:
    """Delete scored rows anchored before `older_than` whose hour forecast_scores has summarised."""
    cur = conn.execute(
        """DELETE FROM forecasts f WHERE f.scored_at IS NOT NULL AND f.anchor < %s
           AND EXISTS (SELECT 1 FROM forecast_scores s WHERE s.hour = date_trunc('hour', f.anchor))""",
        (older_than,),
    )
    return cur.rowcount


def add_skips(conn: psycopg.Connection, counts: Mapping[tuple[datetime, str], int]) -> None:
    """Add guard counts per (data hour, reason)."""
    if not counts:
        return
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO forecast_skips (hour, reason, n) VALUES (%s, %s, %s) "
            "ON CONFLICT (hour, reason) DO UPDATE SET n = forecast_skips.n + EXCLUDED.n",
            [(h, r, n) for (h, r), n in counts.items()],
        )


def write_status(
    conn: psycopg.Connection, name: str, version_id: int | None, anchor: datetime | None, counters: dict
) -> None:
    conn.execute(
        """INSERT INTO forecaster_status (name, updated_at, version_id, anchor, counters)
           VALUES (%s, now(), %s, %s, %s)
           ON CONFLICT (name) DO UPDATE SET updated_at = now(), version_id = EXCLUDED.version_id,
               anchor = EXCLUDED.anchor, counters = EXCLUDED.counters""",
        (name, version_id, anchor, Jsonb(counters)),
    )


@dataclass(frozen=True)
class ForecasterStatus:
    updated_at: datetime
    version_id: int | None
    anchor: datetime | None
    counters: dict
    forecasts_last_minute: int


def read_status(conn: psycopg.Connection, name: str = "forecaster") -> ForecasterStatus | None:
    row = conn.execute(
        """SELECT s.updated_at, s.version_id, s.anchor, s.counters,
                  (SELECT count(*) FROM forecasts WHERE made_at > now() - interval '1 minute')
           FROM forecaster_status s WHERE s.name = %s""",
        (name,),
    ).fetchone()
    return ForecasterStatus(*row) if row else None


def ledger_rows(
    conn: psycopg.Connection, start: datetime, end: datetime, *, scored_only: bool = True
) -> pd.DataFrame:
    """Ledger rows anchored in [start, end)."""
    rows = conn.execute(
        "SELECT version_id, product_id, anchor, horizon_s, forecast_return, last_price, outcome_return, "
        "outcome_reason FROM forecasts WHERE anchor >= %s AND anchor < %s "
        "AND (scored_at IS NOT NULL OR NOT %s)",
        (start, end, scored_only),
    ).fetchall()
    cols = ["version_id", "product_id", "anchor", "horizon_s", "forecast_return", "last_price", "outcome_return",
            "outcome_reason"]  # fmt: skip
    frame = pd.DataFrame(rows, columns=cols)
    return frame.astype({"forecast_return": float, "last_price": float, "outcome_return": float})


def skips_between(conn: psycopg.Connection, start: datetime, end: datetime) -> dict[str, int]:
    rows = conn.execute(
        "SELECT reason, sum(n) FROM forecast_skips WHERE hour >= %s AND hour < %s GROUP BY reason ORDER BY 2 DESC",
        (start, end),
    ).fetchall()
    return {r: int(n) for r, n in rows}


SCORE_COLUMNS = (
    "hour", "version_id", "product_id", "horizon_s", "n", "skill", "hit_rate", "ic", "mae_bp", "mse",
    "mse_persistence",
)  # fmt: skip


def replace_scores(conn: psycopg.Connection, hour: datetime, frame: pd.DataFrame) -> None:
    """The hour's live scores (one row per version, product and horizon), replaced atomically."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("DELETE FROM forecast_scores WHERE hour = %s", (hour,))
        cur.executemany(
            sql.SQL("INSERT INTO forecast_scores ({}) VALUES ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, SCORE_COLUMNS)),
                sql.SQL(", ").join([sql.Placeholder()] * len(SCORE_COLUMNS)),
            ),
            [tuple(None if pd.isna(v) else v for v in row) for row in frame[list(SCORE_COLUMNS)].itertuples(index=False)],
        )  # fmt: skip


def scores_between(conn: psycopg.Connection, start: datetime, end: datetime) -> pd.DataFrame:
    query = sql.SQL(
        "SELECT {} FROM forecast_scores WHERE hour >= %s AND hour < %s ORDER BY hour, version_id, product_id, horizon_s"
    ).format(sql.SQL(", ").join(map(sql.Identifier, SCORE_COLUMNS)))
    rows = conn.execute(query, (start, end)).fetchall()
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def live_skill_by_version(
    conn: psycopg.Connection, since: datetime | None = None
) -> dict[int, tuple[float, int]]:
    """Per model version: pooled live skill (1 - sum MSE / sum MSE(persistence), weighted by n) and rows."""
    rows = conn.execute(
        """SELECT version_id, 1 - sum(mse * n) / nullif(sum(mse_persistence * n), 0), sum(n)
           FROM forecast_scores WHERE (%(since)s::timestamptz IS NULL OR hour >= %(since)s)
           GROUP BY version_id""",
        {"since": since},
    ).fetchall()
    return {int(v): (float(s) if s is not None else float("nan"), int(n)) for v, s, n in rows}


def newest_forecasts(conn: psycopg.Connection) -> pd.DataFrame:
    """The newest anchor's forecasts (every product and horizon the forecaster made there)."""
    rows = conn.execute(
        """SELECT version_id, product_id, anchor, horizon_s, forecast_return, forecast_price, last_price, made_at
           FROM forecasts WHERE anchor = (SELECT max(anchor) FROM forecasts)
           ORDER BY product_id, horizon_s"""
    ).fetchall()
    cols = ["version_id", "product_id", "anchor", "horizon_s", "forecast_return", "forecast_price", "last_price",
            "made_at"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)
