-- 001: the Kafka-fed raw layer. Everything downstream (assets, the retraining sensor) reads these tables.

CREATE TABLE IF NOT EXISTS raw_ticks (
    product_id             text             NOT NULL,
    -- The envelope timestamp of the ticker_batch frame (the only clock a ticker has), floored to the
    -- microsecond: PostgreSQL keeps µs; the Kafka message keeps the original nanosecond string.
    time                   timestamptz      NOT NULL,
    price                  double precision NOT NULL,
    volume_24_h            double precision NOT NULL,
    low_24_h               double precision NOT NULL,
    high_24_h              double precision NOT NULL,
    low_52_w               double precision NOT NULL,
    high_52_w              double precision NOT NULL,
    price_percent_chg_24_h double precision NOT NULL,
    -- ticker_batch frames omit the book in production; the ticker channel has it.
    best_bid               double precision,
    best_ask               double precision,
    -- When the sink committed the row (the ingestion clock the retraining sensor's high-water mark uses).
    received_at            timestamptz      NOT NULL DEFAULT now(),
    source                 text             NOT NULL,
    kafka_partition        integer,
    kafka_offset           bigint,
    -- Tickers carry full state, not deltas, so (product, time) identifies a tick: replays and redeliveries
    -- collapse onto the same row.
    PRIMARY KEY (product_id, time)
);

-- Serves "all rows of one UTC hour" (every asset partition reads exactly that range).
CREATE INDEX IF NOT EXISTS raw_ticks_time_idx ON raw_ticks (time);
-- Serves the sensor's high-water mark: max(received_at) and "rows ingested since the cursor".
CREATE INDEX IF NOT EXISTS raw_ticks_received_at_idx ON raw_ticks (received_at);

-- Messages the sink could not accept: the reason and the original bytes, so nothing is lost silently.
CREATE TABLE IF NOT EXISTS raw_ticks_rejected (
    id              bigserial   PRIMARY KEY,
    received_at     timestamptz NOT NULL DEFAULT now(),
    source          text        NOT NULL,
    reason          text        NOT NULL,
    payload         bytea       NOT NULL,
    -- Best-effort context, NULL when the payload did not say.
    product_id      text,
    tick_time       timestamptz,
    kafka_topic     text,
    kafka_partition integer,
    kafka_offset    bigint
);
-- A redelivered bad message (sink restarted before committing offsets) must not be recorded twice.
CREATE UNIQUE INDEX IF NOT EXISTS raw_ticks_rejected_kafka_uq
    ON raw_ticks_rejected (kafka_topic, kafka_partition, kafka_offset);
CREATE INDEX IF NOT EXISTS raw_ticks_rejected_tick_time_idx ON raw_ticks_rejected (tick_time);
CREATE INDEX IF NOT EXISTS raw_ticks_rejected_received_at_idx ON raw_ticks_rejected (received_at);

-- Stretches of frames the live feed missed (a jump in sequence_num), so the resampler can treat them as missing
-- rather than as a quiet market.
CREATE TABLE IF NOT EXISTS feed_gaps (
    id              bigserial   PRIMARY KEY,
    connection_id   text        NOT NULL,
    from_seq        bigint      NOT NULL,  -- last sequence number received before the gap
    to_seq          bigint      NOT NULL,  -- first sequence number received after it
    detected_at     timestamptz NOT NULL DEFAULT now(),  -- wall time
    before_time     timestamptz,           -- envelope time of the frame before the gap
    after_time      timestamptz,           -- envelope time of the frame after it
    source          text        NOT NULL DEFAULT 'live',
    UNIQUE (connection_id, from_seq, to_seq)
);
CREATE INDEX IF NOT EXISTS feed_gaps_after_time_idx ON feed_gaps (after_time);

-- TimescaleDB where the server has it (chunks by time, compression later); plain PostgreSQL otherwise.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            PERFORM create_hypertable('raw_ticks', 'time', if_not_exists => TRUE, migrate_data => TRUE);
        EXCEPTION WHEN others THEN
            RAISE NOTICE 'timescaledb is available but could not be enabled (%); raw_ticks stays a plain table',
                SQLERRM;
        END;
    END IF;
END
$$;
