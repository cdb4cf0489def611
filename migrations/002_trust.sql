-- fedcore schema, migration 2: who acts (tokens), client retries (idempotency keys), and gates
-- that need more than one approver (quorum). Applied after schema.sql (migration 1); never edit
-- a migration that has shipped, append a new one.

-- Bearer tokens. The token itself is shown once and never stored: only its SHA-256. A token is
-- never deleted, only revoked, so the audit trail can always name who held it.
CREATE TABLE tokens (
    token_id   TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    role       TEXT NOT NULL CHECK (role IN ('agent', 'approver', 'admin', 'auditor')),
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at TEXT,
    revoked_by TEXT
);
CREATE INDEX tokens_by_name ON tokens(name);
CREATE TRIGGER tokens_no_delete BEFORE DELETE ON tokens
BEGIN SELECT RAISE(ABORT, 'tokens are never deleted; revoke them'); END;
CREATE TRIGGER tokens_revoked_no_update BEFORE UPDATE ON tokens
WHEN OLD.revoked_at IS NOT NULL
BEGIN SELECT RAISE(ABORT, 'a revoked token is immutable: UPDATE refused'); END;

-- Idempotency keys: the first response to (actor, key) is kept and replayed for the same
-- request; another request under the same key is refused. Old keys may be pruned.
CREATE TABLE idempotency (
    actor        TEXT NOT NULL,
    key          TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status       INTEGER NOT NULL,
    response     BLOB NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (actor, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_by_age ON idempotency(created_at);

-- Quorum gates: a gate is APPROVED only when `approvals_required` distinct approvers approved.
ALTER TABLE gates ADD COLUMN approvals_required INTEGER NOT NULL DEFAULT 1;
CREATE TABLE gate_approvals (
    gate_id     TEXT NOT NULL REFERENCES gates(gate_id),
    approver    TEXT NOT NULL,
    approved_at TEXT NOT NULL,
    comment     TEXT,
    PRIMARY KEY (gate_id, approver)
) WITHOUT ROWID;
CREATE TRIGGER gate_approvals_no_update BEFORE UPDATE ON gate_approvals
BEGIN SELECT RAISE(ABORT, 'gate_approvals is append-only: UPDATE refused'); END;
CREATE TRIGGER gate_approvals_no_delete BEFORE DELETE ON gate_approvals
BEGIN SELECT RAISE(ABORT, 'gate_approvals is append-only: DELETE refused'); END;
