"""The one-line platform status `cb-assets up` prints while it runs (and as its exit summary)."""

from __future__ import annotations

from cb_assets.config import Settings
from cb_assets.db.connection import connect


def status_line(settings: Settings) -> str:
    with connect(settings.database_url, autocommit=True, timeout_s=3) as conn:
        total, last_minute, newest = conn.execute(
            """
            SELECT (SELECT count(*) FROM raw_ticks),
                   (SELECT count(*) FROM raw_ticks WHERE received_at > now() - interval '1 minute'),
                   (SELECT max(time) FROM raw_ticks)
            """
        ).fetchone()
        rejected = conn.execute("SELECT count(*) FROM raw_ticks_rejected").fetchone()[0]
    newest_s = newest.strftime("%Y-%m-%d %H:%M:%S") if newest else "-"
    return f"ticks {total} (+{last_minute}/min), rejected {rejected}, newest tick {newest_s} UTC"
