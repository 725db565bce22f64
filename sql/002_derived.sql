-- 002: the derived tables users query: the filled 1 s series and the indicators, one row per product and
-- second. Each hourly partition's slice is replaced atomically (DELETE + COPY in one transaction) when Dagster
-- re-materialises it. Wide tables: one row carries everything known about a product at a second.

CREATE TABLE IF NOT EXISTS filled_series (
    product_id                       text        NOT NULL,
    time                             timestamptz NOT NULL,  -- grid second t: holds the last tick in (t-1s, t]
    observed                         boolean     NOT NULL,  -- a tick landed in this second
    -- the Kalman parameters were fitted on the previous hour (false on a cold start: in-sample, not for training)
    causal                           boolean     NOT NULL,
    -- per field: the observed value (NULL when no tick), the causal Kalman filter (uses data up to t only:
    -- the ONLY estimate features may use), its standard deviation, and the smoother (display/analysis only).
    price                            double precision,
    price_filtered                   double precision,
    price_filtered_std               double precision,
    price_smoothed                   double precision,
    volume_24_h                      double precision,
    volume_24_h_filtered             double precision,
    volume_24_h_filtered_std         double precision,
    volume_24_h_smoothed             double precision,
    low_24_h                         double precision,
    low_24_h_filtered                double precision,
    low_24_h_filtered_std            double precision,
    low_24_h_smoothed                double precision,
    high_24_h                        double precision,
    high_24_h_filtered               double precision,
    high_24_h_filtered_std           double precision,
    high_24_h_smoothed               double precision,
    low_52_w                         double precision,
    low_52_w_filtered                double precision,
    low_52_w_filtered_std            double precision,
    low_52_w_smoothed                double precision,
    high_52_w                        double precision,
    high_52_w_filtered               double precision,
    high_52_w_filtered_std           double precision,
    high_52_w_smoothed               double precision,
    price_percent_chg_24_h           double precision,
    price_percent_chg_24_h_filtered  double precision,
    price_percent_chg_24_h_filtered_std double precision,
    price_percent_chg_24_h_smoothed  double precision,
    PRIMARY KEY (product_id, time)
);
CREATE INDEX IF NOT EXISTS filled_series_time_idx ON filled_series (time);

-- The local-level model parameters used for each product, field and hour (fitted by EM on the hour before).
CREATE TABLE IF NOT EXISTS kalman_params (
    hour          timestamptz      NOT NULL,
    product_id    text             NOT NULL,
    field         text             NOT NULL,
    q             double precision NOT NULL,  -- state (level) noise variance per second
    r             double precision NOT NULL,  -- observation noise variance
    em_iterations integer          NOT NULL,
    converged     boolean          NOT NULL,
    fitted_on     text             NOT NULL,  -- 'previous_hour' (causal) or 'same_hour' (cold start)
    PRIMARY KEY (hour, product_id, field)
);

CREATE TABLE IF NOT EXISTS indicators (
    product_id           text        NOT NULL,
    time                 timestamptz NOT NULL,
    warm                 boolean     NOT NULL,  -- enough real history for every feature (see cb_assets.series.indicators)
    ret_1s               double precision,
    ret_5s               double precision,
    ret_10s              double precision,
    ret_30s              double precision,
    ret_60s              double precision,
    ret_300s             double precision,
    ret_900s             double precision,
    sma_10s              double precision,
    sma_30s              double precision,
    sma_60s              double precision,
    sma_300s             double precision,
    sma_900s             double precision,
    ema_10s              double precision,
    ema_30s              double precision,
    ema_60s              double precision,
    ema_300s             double precision,
    ema_600s             double precision,
    rsi_60s              double precision,
    rsi_300s             double precision,
    macd                 double precision,
    macd_signal          double precision,
    macd_hist            double precision,
    bb_pctb_300s         double precision,
    bb_width_300s        double precision,
    vol_60s              double precision,
    vol_300s             double precision,
    vol_900s             double precision,
    range_60s            double precision,
    range_300s           double precision,
    range_900s           double precision,
    low_24_h_rel         double precision,
    high_24_h_rel        double precision,
    low_52_w_rel         double precision,
    high_52_w_rel        double precision,
    log_volume_24_h      double precision,
    dlog_volume_60s      double precision,
    dlog_volume_900s     double precision,
    pct_chg_24_h         double precision,
    tod_sin              double precision,
    tod_cos              double precision,
    staleness            double precision,
    tick_rate_60s        double precision,
    tick_rate_300s       double precision,
    PRIMARY KEY (product_id, time)
);
CREATE INDEX IF NOT EXISTS indicators_time_idx ON indicators (time);
