//! Signatures: the key file, signed workflow receipts, C2SP checkpoints, `verify --pubkey` on a
//! database and on an exported folder, and forgeries re-signed with another key.

use crate::scenarios::{
    complete_step, new_pt004_run, pt004_server, start_step, step_input, step_output, PT004_STEPS,
};
use crate::support::{files_in, run_cli, Server, TempDir};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use rusqlite::Connection;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

fn key_path(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}.key", db.display()))
}

/// The first line `key show` prints: `<name>+<key id>+<base64(0x01 || public key)>`.
fn shown_key(db: &Path) -> String {
    let (code, stdout, stderr) = run_cli(&["key", "show", "--db", db.to_str().unwrap()]);
    assert_eq!(code, 0, "key show: {stdout} {stderr}");
    stdout.lines().next().unwrap().to_string()
}

/// A verifier key of another Ed25519 key, in the format `key show` prints, and that key.
fn other_key(name: &str) -> (String, SigningKey) {
    let key = SigningKey::from_bytes(&[42u8; 32]);
    let public = key.verifying_key();
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', 1]);
    hasher.update(public.as_bytes());
    let key_id = hex::encode(&hasher.finalize()[..4]);
    let mut bytes = vec![1u8];
    bytes.extend_from_slice(public.as_bytes());
    (format!("{name}+{key_id}+{}", BASE64.encode(bytes)), key)
}

fn verifying_key(shown: &str) -> VerifyingKey {
    let encoded = shown.splitn(3, '+').nth(2).unwrap();
    let bytes = BASE64.decode(encoded).unwrap();
    assert_eq!(bytes[0], 1, "Ed25519 algorithm byte");
    VerifyingKey::from_bytes(&bytes[1..].try_into().unwrap()).unwrap()
}

/// A database with one completed run, and the server stopped (so a shutdown checkpoint exists).
fn completed_database() -> (TempDir, PathBuf, String) {
    let (mut server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "signed");
    for (step_id, _) in PT004_STEPS {
        start_step(&mut c, &run_id, step_id, &step_input(step_id, "low"));
        complete_step(&mut c, &run_id, step_id, &step_output(step_id));
    }
    assert_eq!(server.terminate(), Some(0));
    let dir = TempDir::new();
    let db = dir.path().join("signed.db");
    std::fs::copy(&server.db, &db).unwrap();
    std::fs::copy(key_path(&server.db), key_path(&db)).unwrap();
    (dir, db, run_id)
}

#[test]
fn the_key_file_is_created_0600_once_reused_and_its_public_key_recorded() {
    let dir = TempDir::new();
    let db = dir.path().join("k.db");
    let mut server = Server::start_on(&db, &[]);
    let key_file = key_path(&db);
    let first = std::fs::read_to_string(&key_file).expect("a key file beside the database");
    assert!(first.starts_with("PRIVATE+KEY+fedcore-"), "{first}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "expected the key file private");
    }
    assert_eq!(server.terminate(), Some(0));
    let shown = shown_key(&db);
    let mut again = Server::start_on(&db, &[]);
    assert_eq!(again.terminate(), Some(0));
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), first, "reused");
    assert_eq!(shown_key(&db), shown);
    // The database records the same key: shown from the database alone when the file is gone.
    std::fs::rename(&key_file, dir.path().join("elsewhere.key")).unwrap();
    assert_eq!(shown_key(&db), shown);
    let conn = Connection::open(&db).unwrap();
    let recorded: String = conn
        .query_row("SELECT public_key FROM signing_keys", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        recorded,
        hex::encode(verifying_key(&shown).as_bytes()),
        "expected the public key recorded in the database"
    );
}

#[test]
fn every_ended_run_is_signed_and_checkpointed_at_its_end_and_at_shutdown() {
    let (_dir, db, run_id) = completed_database();
    let public = verifying_key(&shown_key(&db));
    let conn = Connection::open(&db).unwrap();
    let (receipt_hash, signature): (String, String) = conn
        .query_row(
            "SELECT r.receipt_hash, s.signature FROM runs r JOIN signatures s ON s.hash = r.receipt_hash
             WHERE r.run_id = ?1",
            [&run_id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("a signature of the workflow receipt");
    let message = hex::decode(&receipt_hash).unwrap();
    let signature = Signature::from_slice(&hex::decode(signature).unwrap()).unwrap();
    public
        .verify(&message, &signature)
        .expect("the receipt signature verifies over the 32 raw bytes of the receipt hash");

    // A checkpoint at the entry that ended the run, and one at the head written at shutdown.
    let end_seq: i64 = conn
        .query_row(
            "SELECT seq FROM audit_log WHERE action = 'run.completed' AND run_id = ?1",
            [&run_id],
            |r| r.get(0),
        )
        .unwrap();
    let checkpointed = |seq: i64| -> i64 {
        conn.query_row(
            "SELECT count(*) FROM checkpoints WHERE seq = ?1",
            [seq],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(checkpointed(end_seq), 1, "a checkpoint at the run's end");

    // Then a write that ends no run, and a shutdown: the head gets its checkpoint.
    let mut server = Server::start_on(&db, &[]);
    let mut c = server.client();
    let agent = json!({"agent_id": "late", "status": "active", "capabilities": [], "tier": "T1", "actor": "admin"});
    assert_eq!(c.put("/registry/agents/late", &agent).status, 200);
    assert_eq!(server.terminate(), Some(0));
    let (head_seq, head_hash): (i64, String) = conn
        .query_row(
            "SELECT seq, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(head_seq > end_seq);
    assert_eq!(
        checkpointed(head_seq),
        1,
        "a checkpoint written at shutdown"
    );

    // `fedcore checkpoint` prints it as a C2SP signed note.
    let (code, note, stderr) = run_cli(&["checkpoint", "--db", db.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let (text, signatures) = note
        .split_once("\n\n")
        .expect("a blank line before signatures");
    let text = format!("{text}\n");
    let lines: Vec<&str> = text.lines().collect();
    let shown = shown_key(&db);
    let name = shown.split('+').next().unwrap();
    assert_eq!(lines[0], format!("fedcore/{name}"), "origin");
    assert_eq!(lines[1], head_seq.to_string(), "tree size = audit seq");
    assert_eq!(
        BASE64.decode(lines[2]).unwrap(),
        hex::decode(&head_hash).unwrap(),
        "root hash = entry_hash"
    );
    assert!(lines[3].starts_with("time "), "{note}");
    let line = signatures.lines().next().unwrap();
    let rest = line.strip_prefix("\u{2014} ").expect("an em dash");
    let (signer, encoded) = rest.split_once(' ').unwrap();
    assert_eq!(signer, name);
    let signed = BASE64.decode(encoded).unwrap();
    assert_eq!(hex::encode(&signed[..4]), shown.split('+').nth(1).unwrap());
    let signature = Signature::from_slice(&signed[4..]).unwrap();
    public
        .verify(text.as_bytes(), &signature)
        .expect("the note's signature verifies over its text");
}

fn verify(db: &Path, extra: &[&str]) -> (i32, String) {
    let mut args = vec!["verify", "--db", db.to_str().unwrap()];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = run_cli(&args);
    (code, format!("{stdout}{stderr}"))
}

#[test]
fn verify_with_the_right_key_passes_and_with_another_names_the_mismatch() {
    let (dir, db, _) = completed_database();
    let shown = shown_key(&db);
    let (code, out) = verify(&db, &["--pubkey", &shown]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verified under --pubkey"), "{out}");
    let (code, out) = verify(&db, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("internal consistency only"), "{out}");
    // The key may also be given as a file holding `key show`'s output.
    let file = dir.path().join("server.pub");
    std::fs::write(&file, format!("{shown}\n")).unwrap();
    assert_eq!(verify(&db, &["--pubkey", file.to_str().unwrap()]).0, 0);

    let (other, _) = other_key("someone-else");
    let (code, out) = verify(&db, &["--pubkey", &other]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BROKEN: signing_keys"), "{out}");
    assert!(out.contains("key mismatch"), "{out}");
}

/// Drops the triggers of the signing tables, as someone altering a copy would.
fn unlock_signing_tables(conn: &Connection) {
    for table in ["signing_keys", "signatures", "checkpoints"] {
        for op in ["update", "delete"] {
            conn.execute_batch(&format!("DROP TRIGGER {table}_no_{op}"))
                .unwrap();
        }
    }
}

#[test]
fn a_database_re_signed_with_another_key_is_rejected_by_verify_pubkey() {
    let (_dir, db, _) = completed_database();
    let original = shown_key(&db);
    let (forged_key, key) = other_key("fedcore-forged");
    let conn = Connection::open(&db).unwrap();
    unlock_signing_tables(&conn);
    let key_id = forged_key.split('+').nth(1).unwrap().to_string();
    let first_seq: i64 = conn
        .query_row("SELECT first_seq FROM signing_keys", [], |r| r.get(0))
        .unwrap();
    let statement = format!("fedcore signing key\nfedcore-forged\nfirst_seq {first_seq}\n");
    conn.execute_batch("PRAGMA foreign_keys = OFF").unwrap();
    conn.execute("DELETE FROM signing_keys", []).unwrap();
    conn.execute(
        "INSERT INTO signing_keys VALUES (?1, 'fedcore-forged', ?2, '2026-01-01T00:00:00.000000Z', ?3, ?4)",
        rusqlite::params![
            key_id,
            hex::encode(key.verifying_key().as_bytes()),
            first_seq,
            hex::encode(key.sign(statement.as_bytes()).to_bytes())
        ],
    )
    .unwrap();
    // Every receipt signature re-made with the forger's key; the checkpoints dropped.
    let hashes: Vec<String> = conn
        .prepare("SELECT hash FROM signatures")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    for hash in hashes {
        let signature = key.sign(&hex::decode(&hash).unwrap());
        conn.execute(
            "UPDATE signatures SET key_id = ?1, signature = ?2 WHERE hash = ?3",
            rusqlite::params![key_id, hex::encode(signature.to_bytes()), hash],
        )
        .unwrap();
    }
    conn.execute("DELETE FROM checkpoints", []).unwrap();
    drop(conn);

    let (code, out) = verify(&db, &["--pubkey", &original]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("key mismatch"), "{out}");
}

#[test]
fn a_receipt_altered_and_re_signed_with_another_key_is_named() {
    let (_dir, db, run_id) = completed_database();
    let original = shown_key(&db);
    let (_, key) = other_key("fedcore-forged");
    let conn = Connection::open(&db).unwrap();
    unlock_signing_tables(&conn);
    let receipt: String = conn
        .query_row(
            "SELECT receipt_hash FROM runs WHERE run_id = ?1",
            [&run_id],
            |r| r.get(0),
        )
        .unwrap();
    let signature = key.sign(&hex::decode(&receipt).unwrap());
    conn.execute(
        "UPDATE signatures SET signature = ?1 WHERE hash = ?2",
        rusqlite::params![hex::encode(signature.to_bytes()), receipt],
    )
    .unwrap();
    drop(conn);
    for extra in [vec![], vec!["--pubkey", original.as_str()]] {
        let (code, out) = verify(&db, &extra);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("BROKEN: signatures {receipt} signature")),
            "{out}"
        );
    }
}

#[test]
fn serve_refuses_a_key_file_other_than_the_one_the_database_records() {
    let (dir, db, _) = completed_database();
    // Another database's key, which exists.
    let other_db = dir.path().join("other.db");
    let (code, _, stderr) = run_cli(&[
        "token",
        "create",
        "--name",
        "x",
        "--role",
        "agent",
        "--db",
        other_db.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let other = dir.path().join("other.db.key");
    assert!(other.exists());
    let serve_with = |key: &Path| {
        run_cli(&[
            "serve",
            "--db",
            db.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--key",
            key.to_str().unwrap(),
        ])
    };
    let (code, _, stderr) = serve_with(&other);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");

    // A key file that does not exist is not made: it could never sign for this database.
    let missing = dir.path().join("missing.key");
    let (code, _, stderr) = serve_with(&missing);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("refusing to make another"), "{stderr}");
    assert!(
        !missing.exists(),
        "expected no key file made at {}",
        missing.display()
    );
}

#[test]
fn token_commands_sign_with_the_key_given_and_make_none_beside_a_signed_database() {
    let (dir, db, _) = completed_database();
    let db_text = db.to_str().unwrap();
    // The key kept away from the database, as README advises.
    let kept = dir.path().join("kept.key");
    std::fs::rename(
        dir.path()
            .join(format!("{}.key", db.file_name().unwrap().to_str().unwrap())),
        &kept,
    )
    .expect("move the key away");
    let create = |extra: &[&str]| {
        let mut args = vec![
            "token", "create", "--name", "later", "--role", "agent", "--db", db_text,
        ];
        args.extend_from_slice(extra);
        run_cli(&args)
    };
    let (code, _, stderr) = create(&[]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("refusing to make another"), "{stderr}");
    assert_eq!(
        files_in(dir.path())
            .iter()
            .filter(|f| f.ends_with(".key"))
            .count(),
        1
    );

    let (code, stdout, stderr) = create(&["--key", kept.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("fc_"), "{stdout}");

    // Listing only reads: on a path with no database it makes nothing.
    let typo = dir.path().join("typo.db");
    let (code, _, stderr) = run_cli(&["token", "list", "--db", typo.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(!typo.exists());
    assert!(!dir.path().join("typo.db.key").exists());
    let (code, stdout, _) = run_cli(&["token", "list", "--db", db_text]);
    assert_eq!(code, 0);
    assert!(stdout.contains("later\tagent"), "{stdout}");
}

#[test]
fn an_exported_run_carries_its_signature_and_verifies_with_the_public_key() {
    let (dir, db, run_id) = completed_database();
    let shown = shown_key(&db);
    let folder = dir.path().join("export");
    let (code, _, stderr) = run_cli(&[
        "export",
        "--db",
        db.to_str().unwrap(),
        "--run",
        &run_id,
        "--out",
        folder.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(folder.join("receipts/workflow.sig.json").is_file());
    let check = |key: &str| {
        let (code, stdout, stderr) = run_cli(&[
            "verify",
            "--receipts",
            folder.to_str().unwrap(),
            "--pubkey",
            key,
        ]);
        (code, format!("{stdout}{stderr}"))
    };
    let (code, out) = check(&shown);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("signed by"), "{out}");
    let (other, _) = other_key("someone-else");
    let (code, out) = check(&other);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("key mismatch"), "{out}");
}
