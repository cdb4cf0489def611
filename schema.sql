-- fedcore schema, migration 1 (later migrations are in migrations/, applied in order). Column names equal the contract's JSON field names.
-- Timestamps are TEXT in RFC 3339 UTC with microseconds; JSON values are TEXT holding JSON.
-- The triggers at the end make the evidence append-only (contract §6); `fedcore verify` checks
-- that they exist.

PRAGMA application_id = 1178944579; -- 'FEDC': marks the file as a fedcore database

CREATE TABLE evidence (
    hash TEXT PRIMARY KEY,          -- H(value) = sha256 of body
    body BLOB NOT NULL              -- the JCS bytes of the value
) WITHOUT ROWID;

CREATE TABLE policies (
    policy_id      TEXT NOT NULL,
    version        INTEGER NOT NULL,
    tier           TEXT NOT NULL,
    default_effect TEXT NOT NULL,
    rules          TEXT NOT NULL,
    policy_hash    TEXT NOT NULL REFERENCES evidence(hash),
    created_at     TEXT NOT NULL,
    created_by     TEXT NOT NULL,
    PRIMARY KEY (policy_id, version)
);

CREATE TABLE workflows (
    workflow_id     TEXT NOT NULL,
    version         INTEGER NOT NULL,
    policy_id       TEXT NOT NULL,
    steps           TEXT NOT NULL,
    definition_hash TEXT NOT NULL REFERENCES evidence(hash),
    created_at      TEXT NOT NULL,
    created_by      TEXT NOT NULL,
    PRIMARY KEY (workflow_id, version)
);

CREATE TABLE agents (
    agent_id     TEXT PRIMARY KEY,
    status       TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    tier         TEXT,
    updated_at   TEXT NOT NULL,
    updated_by   TEXT NOT NULL
);

CREATE TABLE runs (
    run_id           TEXT PRIMARY KEY,
    workflow_id      TEXT NOT NULL,
    workflow_version INTEGER NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('PENDING','RUNNING','PAUSED','COMPLETED','FAILED','CANCELLED')),
    created_by       TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL,
    ended_at         TEXT,
    input_hash       TEXT NOT NULL REFERENCES evidence(hash),
    next_step_id     TEXT,
    failure          TEXT,
    genesis_hash     TEXT NOT NULL REFERENCES evidence(hash),
    receipt_hash     TEXT REFERENCES evidence(hash),
    attempt_base     INTEGER NOT NULL DEFAULT 0,
    FOREIGN KEY (workflow_id, workflow_version) REFERENCES workflows(workflow_id, version)
);
CREATE INDEX runs_by_status ON runs(status, run_id);
CREATE INDEX runs_by_workflow ON runs(workflow_id, run_id);

CREATE TABLE decisions (
    creation_order  INTEGER PRIMARY KEY, -- the order decisions were made in (stable under VACUUM)
    decision_id     TEXT NOT NULL UNIQUE,
    run_id          TEXT NOT NULL REFERENCES runs(run_id),
    step_id         TEXT NOT NULL,
    attempt         INTEGER NOT NULL,
    effect          TEXT NOT NULL CHECK (effect IN ('allow','deny','flag')),
    reason          TEXT NOT NULL,
    policy_id       TEXT NOT NULL,
    policy_version  INTEGER NOT NULL,
    policy_hash     TEXT NOT NULL,
    tier            TEXT NOT NULL,
    rules_triggered TEXT NOT NULL,
    input_hash      TEXT NOT NULL,
    actor           TEXT NOT NULL,
    decided_at      TEXT NOT NULL,
    decision_hash   TEXT NOT NULL REFERENCES evidence(hash),
    UNIQUE (run_id, step_id, attempt)
);

CREATE TABLE steps (
    creation_order    INTEGER PRIMARY KEY, -- the order attempts were created in (stable under VACUUM)
    run_id            TEXT NOT NULL REFERENCES runs(run_id),
    step_id           TEXT NOT NULL,
    step_type         TEXT NOT NULL,
    step_index        INTEGER NOT NULL,
    attempt           INTEGER NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('AWAITING_APPROVAL','STARTED','COMPLETED','FAILED','DENIED','REJECTED')),
    actor             TEXT NOT NULL,
    started_at        TEXT NOT NULL,
    ended_at          TEXT,
    input_hash        TEXT NOT NULL REFERENCES evidence(hash),
    output_hash       TEXT REFERENCES evidence(hash),
    error             TEXT,
    decision_id       TEXT NOT NULL REFERENCES decisions(decision_id),
    decision_hash     TEXT NOT NULL,
    prev_receipt_hash TEXT NOT NULL,
    receipt_hash      TEXT REFERENCES evidence(hash),
    UNIQUE (run_id, step_id, attempt)
);
-- Attempts of a run in the order they were created, which is the order they finish in because
-- at most one attempt of a run is open at a time (an index holds its table's integer key, so this
-- one serves `WHERE run_id = ? ORDER BY creation_order`).
CREATE INDEX steps_by_run ON steps(run_id);
CREATE INDEX decisions_by_run ON decisions(run_id);

CREATE TABLE gates (
    creation_order INTEGER PRIMARY KEY, -- the order gates were requested in (stable under VACUUM)
    gate_id      TEXT NOT NULL UNIQUE,
    run_id       TEXT NOT NULL REFERENCES runs(run_id),
    step_id      TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('PENDING','APPROVED','REJECTED','EXPIRED','CANCELLED')),
    reason       TEXT NOT NULL,
    decision_id  TEXT REFERENCES decisions(decision_id),
    requested_by TEXT NOT NULL,
    requested_at TEXT NOT NULL,
    expires_at   TEXT,
    resolved_by  TEXT,
    resolved_at  TEXT,
    comment      TEXT,
    receipt_hash TEXT REFERENCES evidence(hash)
);
CREATE INDEX gates_by_run ON gates(run_id);
CREATE INDEX gates_pending_expiry ON gates(expires_at) WHERE status = 'PENDING' AND expires_at IS NOT NULL;

CREATE TABLE audit_log (
    seq               INTEGER PRIMARY KEY,
    run_id            TEXT,
    at                TEXT NOT NULL,
    actor             TEXT NOT NULL,
    action            TEXT NOT NULL,
    subject           TEXT NOT NULL,
    from_status       TEXT,
    to_status         TEXT,
    decision          TEXT,
    reason            TEXT,
    message           TEXT NOT NULL,
    evidence_pack_ref TEXT,
    payload_hash      TEXT NOT NULL,
    prev_hash         TEXT NOT NULL,
    entry_hash        TEXT NOT NULL UNIQUE
);
CREATE INDEX audit_by_run ON audit_log(run_id, seq) WHERE run_id IS NOT NULL;

-- Immutability (contract §6). Append-only tables refuse every UPDATE and DELETE.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: UPDATE refused'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END;
CREATE TRIGGER decisions_no_update BEFORE UPDATE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions is append-only: UPDATE refused'); END;
CREATE TRIGGER decisions_no_delete BEFORE DELETE ON decisions
BEGIN SELECT RAISE(ABORT, 'decisions is append-only: DELETE refused'); END;
CREATE TRIGGER evidence_no_update BEFORE UPDATE ON evidence
BEGIN SELECT RAISE(ABORT, 'evidence is append-only: UPDATE refused'); END;
CREATE TRIGGER evidence_no_delete BEFORE DELETE ON evidence
BEGIN SELECT RAISE(ABORT, 'evidence is append-only: DELETE refused'); END;

-- Runs, steps and gates are never deleted, and never changed once final.
CREATE TRIGGER runs_no_delete BEFORE DELETE ON runs
BEGIN SELECT RAISE(ABORT, 'runs are never deleted'); END;
CREATE TRIGGER steps_no_delete BEFORE DELETE ON steps
BEGIN SELECT RAISE(ABORT, 'steps are never deleted'); END;
CREATE TRIGGER gates_no_delete BEFORE DELETE ON gates
BEGIN SELECT RAISE(ABORT, 'gates are never deleted'); END;
CREATE TRIGGER runs_final_no_update BEFORE UPDATE ON runs
WHEN OLD.status IN ('COMPLETED', 'CANCELLED')
  OR (OLD.status = 'FAILED'
      AND json_extract(OLD.failure, '$.code') IN ('policy_denied', 'gate_rejected', 'gate_expired'))
BEGIN SELECT RAISE(ABORT, 'a final run is immutable: UPDATE refused'); END;
CREATE TRIGGER steps_final_no_update BEFORE UPDATE ON steps
WHEN OLD.status IN ('COMPLETED', 'FAILED', 'DENIED', 'REJECTED')
BEGIN SELECT RAISE(ABORT, 'a final step attempt is immutable: UPDATE refused'); END;
CREATE TRIGGER gates_final_no_update BEFORE UPDATE ON gates
WHEN OLD.status <> 'PENDING'
BEGIN SELECT RAISE(ABORT, 'a resolved gate is immutable: UPDATE refused'); END;

-- Policy and definition versions are evidence too: never changed, never deleted.
CREATE TRIGGER policies_no_update BEFORE UPDATE ON policies
BEGIN SELECT RAISE(ABORT, 'policy versions are immutable: UPDATE refused'); END;
CREATE TRIGGER policies_no_delete BEFORE DELETE ON policies
BEGIN SELECT RAISE(ABORT, 'policy versions are immutable: DELETE refused'); END;
CREATE TRIGGER workflows_no_update BEFORE UPDATE ON workflows
BEGIN SELECT RAISE(ABORT, 'definition versions are immutable: UPDATE refused'); END;
CREATE TRIGGER workflows_no_delete BEFORE DELETE ON workflows
BEGIN SELECT RAISE(ABORT, 'definition versions are immutable: DELETE refused'); END;
