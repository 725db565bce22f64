-- 003: the model registry. Every training of price_model registers a version (promoted or not, with why);
-- the alias `champion` names the version that serves forecasts and that the next fine-tune starts from.

CREATE TABLE IF NOT EXISTS model_versions (
    id                bigserial   PRIMARY KEY,
    parent_id         bigint      REFERENCES model_versions (id),
    created_at        timestamptz NOT NULL DEFAULT now(),
    kind              text        NOT NULL CHECK (kind IN ('initial', 'fine_tune')),
    partitions        text[]      NOT NULL,             -- hours whose windows it was trained on
    replay_partitions text[]      NOT NULL DEFAULT '{}', -- older hours sampled to limit forgetting
    target_hour       text,                              -- the newly completed hour a fine-tune learned
    metrics           jsonb       NOT NULL DEFAULT '{}', -- held-out scores (see cb_assets.model.evaluate)
    artifact_path     text        NOT NULL,              -- the .keras file
    code_version      text        NOT NULL,
    status            text        NOT NULL CHECK (status IN ('promoted', 'rejected')),
    decision_reason   text        NOT NULL,
    dagster_run_id    text
);
-- A newly completed hour is fine-tuned on at most once, whatever happens to sensor cursors.
CREATE UNIQUE INDEX IF NOT EXISTS model_versions_one_fine_tune_per_hour
    ON model_versions (target_hour) WHERE kind = 'fine_tune';

CREATE TABLE IF NOT EXISTS model_aliases (
    alias      text        PRIMARY KEY,
    version_id bigint      NOT NULL REFERENCES model_versions (id),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS model_alias_history (
    id                  bigserial   PRIMARY KEY,
    alias               text        NOT NULL,
    version_id          bigint      NOT NULL REFERENCES model_versions (id),
    previous_version_id bigint      REFERENCES model_versions (id),
    changed_at          timestamptz NOT NULL DEFAULT now(),
    reason              text        NOT NULL
);

-- Prequential scores: each model scored on an hour before it was trained on it.
CREATE TABLE IF NOT EXISTS model_evaluations (
    id            bigserial   PRIMARY KEY,
    version_id    bigint      REFERENCES model_versions (id),
    partition_key text        NOT NULL,
    role          text        NOT NULL,  -- champion | challenger | ridge | persistence
    scope         text        NOT NULL,  -- full_hour | holdout
    evaluated_at  timestamptz NOT NULL DEFAULT now(),
    score         double precision,
    metrics       jsonb       NOT NULL
);
CREATE INDEX IF NOT EXISTS model_evaluations_partition_idx ON model_evaluations (partition_key);
