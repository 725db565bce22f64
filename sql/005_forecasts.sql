-- 005: the live forecast ledger. The forecaster (`cb-assets forecast`) writes one row per model version,
-- product, anchor second and horizon while the horizon is still in the future, and attaches the outcome once
-- the data has passed anchor + horizon; `forecast_scores` (a Dagster asset) summarises the scored rows per hour.

CREATE TABLE IF NOT EXISTS forecasts (
    version_id      bigint           NOT NULL REFERENCES model_versions (id),
    product_id      text             NOT NULL,
    -- The data second the forecast was made at (the window's last second), whatever the replay speed.
    anchor          timestamptz      NOT NULL,
    horizon_s       integer          NOT NULL,
    forecast_return double precision NOT NULL,  -- log return from last_price to the price at anchor + horizon
    forecast_price  double precision NOT NULL,
    last_price      double precision NOT NULL,  -- the last observed price at or before the anchor
    made_at         timestamptz      NOT NULL DEFAULT now(),
    -- The outcome: the last observed price at or before anchor + horizon, or why there is none.
    outcome_price   double precision,
    outcome_return  double precision,
    outcome_reason  text,
    scored_at       timestamptz,
    -- A restart or a replay writes nothing twice: the first write wins.
    PRIMARY KEY (version_id, product_id, anchor, horizon_s)
);
CREATE INDEX IF NOT EXISTS forecasts_anchor_idx ON forecasts (anchor);
CREATE INDEX IF NOT EXISTS forecasts_made_at_idx ON forecasts (made_at);
CREATE INDEX IF NOT EXISTS forecasts_unscored_idx ON forecasts (anchor) WHERE scored_at IS NULL;

-- Anchors at which the forecaster made no forecast (or none for some product), counted per data hour and reason.
CREATE TABLE IF NOT EXISTS forecast_skips (
    hour     timestamptz NOT NULL,
    reason   text        NOT NULL,
    n        bigint      NOT NULL,
    PRIMARY KEY (hour, reason)
);

-- The forecaster's heartbeat: what the `cb-assets up` status line shows.
CREATE TABLE IF NOT EXISTS forecaster_status (
    name        text        PRIMARY KEY,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    version_id  bigint,
    anchor      timestamptz,
    counters    jsonb       NOT NULL DEFAULT '{}'
);

-- Live scores per data hour, model version, product and horizon (written by the forecast_scores asset).
CREATE TABLE IF NOT EXISTS forecast_scores (
    hour             timestamptz      NOT NULL,
    version_id       bigint           NOT NULL REFERENCES model_versions (id),
    product_id       text             NOT NULL,
    horizon_s        integer          NOT NULL,
    n                integer          NOT NULL,
    skill            double precision,  -- 1 - MSE / MSE(persistence)
    hit_rate         double precision,
    ic               double precision,
    mae_bp           double precision,
    mse              double precision,
    mse_persistence  double precision,
    PRIMARY KEY (hour, version_id, product_id, horizon_s)
);
