-- fedcore schema, migration 3: signatures. The server's Ed25519 public key, a signature over
-- every workflow receipt, and signed checkpoints of the audit head (C2SP signed notes). The
-- private key never enters the database. Everything here is append-only.

-- The key that signs. `first_seq` is the first audit seq written while it was recorded: every
-- workflow receipt carried by that entry or a later one is signed. `signature` signs the text
-- "fedcore signing key\n<key_name>\nfirst_seq <first_seq>\n", so that `first_seq` cannot be
-- moved to leave receipts unsigned. One key per database; `serve` refuses a key file that
-- differs from the key recorded here.
CREATE TABLE signing_keys (
    key_id     TEXT PRIMARY KEY,
    key_name   TEXT NOT NULL,
    public_key TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    first_seq  INTEGER NOT NULL,
    signature  TEXT NOT NULL
);
CREATE TRIGGER signing_keys_no_update BEFORE UPDATE ON signing_keys
BEGIN SELECT RAISE(ABORT, 'signing_keys is append-only: UPDATE refused'); END;
CREATE TRIGGER signing_keys_no_delete BEFORE DELETE ON signing_keys
BEGIN SELECT RAISE(ABORT, 'signing_keys is append-only: DELETE refused'); END;

-- A signature over the 32 raw bytes of a receipt hash, written in the receipt's transaction.
CREATE TABLE signatures (
    hash      TEXT PRIMARY KEY,
    key_id    TEXT NOT NULL REFERENCES signing_keys(key_id),
    signature TEXT NOT NULL,
    signed_at TEXT NOT NULL
) WITHOUT ROWID;
CREATE TRIGGER signatures_no_update BEFORE UPDATE ON signatures
BEGIN SELECT RAISE(ABORT, 'signatures is append-only: UPDATE refused'); END;
CREATE TRIGGER signatures_no_delete BEFORE DELETE ON signatures
BEGIN SELECT RAISE(ABORT, 'signatures is append-only: DELETE refused'); END;

-- A signed checkpoint of the audit log at `seq` (whose entry_hash it states), written in the
-- transaction of the entries it covers: the note is the exact signed note text.
CREATE TABLE checkpoints (
    seq        INTEGER PRIMARY KEY,
    entry_hash TEXT NOT NULL,
    at         TEXT NOT NULL,
    key_id     TEXT NOT NULL REFERENCES signing_keys(key_id),
    note       TEXT NOT NULL
);
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints is append-only: UPDATE refused'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'checkpoints is append-only: DELETE refused'); END;
