-- 004: model families, the gate's per-output decisions, operator actions and the fine-tuning switch.
-- A version is one of: a network alone (every version before this migration), a linear model alone, or
-- the composite (linear model + residual network + per-output gate) in one artifact. Each keeps one id.

ALTER TABLE model_versions
    ADD COLUMN IF NOT EXISTS family text NOT NULL DEFAULT 'network'
        CHECK (family IN ('network', 'linear', 'composite'));
-- Per output: persistence | linear | network, with the test statistics and held-out skills behind it.
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS gate jsonb NOT NULL DEFAULT '{}';
-- The newest hours whose tails judged the version (the gate's held-out windows).
ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS gate_partitions text[] NOT NULL DEFAULT '{}';

-- One fine-tune per newly completed hour and family (a linear refit and a composite may share an hour).
DROP INDEX IF EXISTS model_versions_one_fine_tune_per_hour;
CREATE UNIQUE INDEX IF NOT EXISTS model_versions_one_fine_tune_per_family_hour
    ON model_versions (family, target_hour) WHERE kind = 'fine_tune';

-- Who moved the alias: the gate after a training, or an operator (promote / rollback, reason required).
ALTER TABLE model_alias_history ADD COLUMN IF NOT EXISTS action text NOT NULL DEFAULT 'gate'
    CHECK (action IN ('gate', 'promote', 'rollback'));

-- One row: whether the sensor may request fine-tunes, and why not.
CREATE TABLE IF NOT EXISTS model_control (
    id                 boolean     PRIMARY KEY DEFAULT true CHECK (id),
    fine_tuning_paused boolean     NOT NULL DEFAULT false,
    reason             text        NOT NULL DEFAULT '',
    updated_at         timestamptz NOT NULL DEFAULT now()
);
INSERT INTO model_control (id) VALUES (true) ON CONFLICT (id) DO NOTHING;
