-- 006: the retraining sensor's record of every hour it asked the data chain for: requested, waiting to be
-- retried after a failure, skipped after the retries (with the last error), or done. The status line and the
-- `no_skipped_hours` check read it; a skipped hour is a gap the next hour starts cold after.

CREATE TABLE IF NOT EXISTS hour_runs (
    hour            timestamptz PRIMARY KEY,
    state           text        NOT NULL CHECK (state IN ('requested', 'retry_wait', 'skipped', 'done')),
    attempts        integer     NOT NULL DEFAULT 1,
    run_key         text,
    requested_at    timestamptz,
    last_error      text,
    next_attempt_at timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS hour_runs_open_idx ON hour_runs (hour) WHERE state <> 'done';
