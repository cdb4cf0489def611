//! `fedcore verify` on real databases. Each test builds one over HTTP (a completed run, a flagged
//! run approved by a second actor, a denied run, a run whose first attempt failed, a run cancelled
//! while a flagged attempt waited, then two entries after a head written down), stops the
//! server, and checks a copy of the file: untouched, then edited with SQLite the way an attacker
//! would, after dropping the triggers that refuse such edits. Each edit must be named in `--json`
//! output, exit 1.

use crate::support::{files_in, run_cli, verify_json, Client, Server, TempDir};
use rusqlite::{params, Connection};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

const AGENT: &str = "agent-7";
const APPROVER: &str = "approver-1";
const ADMIN: &str = "admin";
const WORKFLOW: &str = "spine";
const STEPS: [&str; 3] = ["observe", "decide", "act"];

/// A stopped server's database and what was built in it.
struct Built {
    dir: TempDir,
    db: PathBuf,
    completed_run: String,
    flagged_run: String,
    denied_run: String,
    retried_run: String,
    cancelled_run: String,
    /// The decision that denied `decide` in `denied_run`.
    deny_decision: String,
    /// The head written down before the last two entries (a refused request, an agent change).
    head_before_tail: String,
    /// The head of the whole log.
    head: String,
}

impl Built {
    /// A copy of the database to tamper with.
    /// A copy of the database beside the original, with its signing key, so that a server can
    /// be started on the copy as on the original.
    fn copy(&self, name: &str) -> PathBuf {
        let copy = self.dir.path().join(format!("{name}.db"));
        std::fs::copy(&self.db, &copy).expect("copy the database");
        let key = |db: &std::path::Path| {
            let mut path = db.as_os_str().to_owned();
            path.push(".key");
            PathBuf::from(path)
        };
        if key(&self.db).exists() {
            std::fs::copy(key(&self.db), key(&copy)).expect("copy the signing key");
        }
        copy
    }
}

fn build_database() -> Built {
    let dir = TempDir::new();
    let db = dir.path().join("fedcore.db");
    let mut server = Server::start_on(&db, &[]);
    let mut client = server.client();
    let c = &mut client;

    expect(
        c.put(
            &format!("/registry/agents/{AGENT}"),
            &json!({
                "status": "active", "capabilities": ["observe"], "tier": "T2", "actor": ADMIN,
            }),
        ),
        200,
        "register the agent",
    );
    expect(c.put("/policies/gov", &json!({
        "tier": "T2", "default_effect": "deny", "actor": ADMIN,
        "rules": [
            {"rule_id": "deny-critical", "effect": "deny", "reason": "critical-risk actions are forbidden",
             "when": {"path": "input.risk", "eq": "critical"}},
            {"rule_id": "flag-high", "effect": "flag", "reason": "high-risk actions need a human",
             "when": {"path": "input.risk", "eq": "high"}},
            {"rule_id": "allow-registered", "effect": "allow", "reason": "registered active agent",
             "when": {"path": "agent.status", "eq": "active"}}]
    })), 201, "store the policy");
    let steps: Vec<Value> = STEPS
        .iter()
        .zip(["OBSERVE", "DECIDE", "ACT"])
        .map(|(id, ty)| json!({"step_id": id, "step_type": ty}))
        .collect();
    expect(
        c.put(
            &format!("/workflows/definitions/{WORKFLOW}"),
            &json!({
                "policy_id": "gov", "steps": steps, "actor": ADMIN,
            }),
        ),
        201,
        "store the definition",
    );

    let completed_run = create_run(c);
    for step in STEPS {
        request_step(c, &completed_run, step, "low");
        complete_step(c, &completed_run, step);
    }

    let flagged_run = create_run(c);
    request_step(c, &flagged_run, "observe", "low");
    complete_step(c, &flagged_run, "observe");
    let flagged = request_step(c, &flagged_run, "decide", "high");
    assert_eq!(flagged["decision"]["effect"], "flag", "{flagged}");
    let gate_id = flagged["gate"]["gate_id"]
        .as_str()
        .expect("a gate")
        .to_string();
    let approval = json!({"decision": "approve", "comment": "looked at it", "actor": APPROVER});
    expect(
        c.patch(
            &format!("/workflows/runs/{flagged_run}/gates/{gate_id}"),
            &approval,
        ),
        200,
        "approve",
    );
    set_status(c, &flagged_run, "RUNNING");
    complete_step(c, &flagged_run, "decide");
    request_step(c, &flagged_run, "act", "low");
    complete_step(c, &flagged_run, "act");

    let denied_run = create_run(c);
    request_step(c, &denied_run, "observe", "low");
    complete_step(c, &denied_run, "observe");
    let denied = request_step(c, &denied_run, "decide", "critical");
    assert_eq!(denied["run"]["status"], "FAILED", "{denied}");
    let deny_decision = denied["decision"]["decision_id"]
        .as_str()
        .expect("id")
        .to_string();

    let retried_run = create_run(c);
    request_step(c, &retried_run, "observe", "low");
    let failure = json!({"status": "FAILED", "error": {"code": "timeout"}, "actor": AGENT});
    expect(
        c.patch(
            &format!("/workflows/runs/{retried_run}/steps/observe"),
            &failure,
        ),
        200,
        "fail",
    );
    for step in STEPS {
        request_step(c, &retried_run, step, "low");
        complete_step(c, &retried_run, step);
    }

    // Cancelled while a flagged attempt waits: the gate is cancelled, the attempt rejected.
    let cancelled_run = create_run(c);
    request_step(c, &cancelled_run, "observe", "low");
    complete_step(c, &cancelled_run, "observe");
    let waiting = request_step(c, &cancelled_run, "decide", "high");
    assert_eq!(waiting["step"]["status"], "AWAITING_APPROVAL", "{waiting}");
    set_status(c, &cancelled_run, "CANCELLED");

    // A token made and revoked, so the tokens table holds a revocation to tie to the log.
    expect(
        c.post(
            "/tokens",
            &json!({"name": "retired", "role": "agent", "actor": ADMIN}),
        ),
        201,
        "create a token",
    );
    expect(
        c.request("DELETE", "/tokens/retired", None),
        200,
        "revoke it",
    );

    let head_before_tail = audit_head(c);
    let refused = c.post(
        &format!("/workflows/runs/{denied_run}/steps"),
        &json!({"step_id": "act", "input": {}, "actor": AGENT}),
    );
    assert_eq!(refused.status, 409, "a step on a failed run is refused");
    expect(
        c.put(
            &format!("/registry/agents/{APPROVER}"),
            &json!({
                "status": "active", "capabilities": [], "actor": ADMIN,
            }),
        ),
        200,
        "register the approver",
    );
    let head = audit_head(c);
    assert_eq!(server.terminate(), Some(0), "the server stops cleanly");

    Built {
        dir,
        db,
        completed_run,
        flagged_run,
        denied_run,
        retried_run,
        cancelled_run,
        deny_decision,
        head_before_tail,
        head,
    }
}

// ---------------------------------------------------------------------------------------------
// An intact database, and files that cannot be checked.

#[test]
fn an_untouched_database_is_intact_and_verify_prints_its_head() {
    let built = build_database();
    let db = built.db.to_str().expect("utf-8 path");
    let (code, out, err) = run_cli(&["verify", "--db", db]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains(&format!("audit head: {}", built.head)),
        "{out}"
    );
    assert!(out.trim_end().ends_with("intact"), "{out}");

    let (code, report) = verify_json(&built.db, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["ok"], true);
    assert_eq!(report["failure"], Value::Null);
    let head = format!(
        "{}:{}",
        report["head"]["seq"],
        text(&report["head"]["entry_hash"])
    );
    assert_eq!(head, built.head);
    let counts = &report["counts"];
    assert_eq!(counts["runs"], 5, "{counts}");
    assert_eq!(counts["workflow_receipts"], 5, "{counts}");
    assert_eq!(counts["gates"], 2, "{counts}");
    assert_eq!(counts["policies"], 1, "{counts}");
    assert_eq!(counts["definitions"], 1, "{counts}");
    assert_eq!(
        counts["triggers"], 26,
        "16 of contract section 6, 4 of migration 2 and 6 of migration 3: {counts}"
    );
    // completed 3 + flagged 3 + denied 2 + retried 4 + cancelled 2
    assert_eq!(counts["steps"], 14, "{counts}");
    assert_eq!(counts["decisions"], 14, "{counts}");
    assert_eq!(counts["audit_entries"], report["head"]["seq"], "{counts}");
    assert_eq!(counts["replayed_decisions"], Value::Null, "{counts}");
}

#[test]
fn an_untouched_database_still_holds_the_head_written_down_and_replays_every_decision() {
    let built = build_database();
    for head in [&built.head, &built.head_before_tail] {
        let (code, report) = verify_json(&built.db, &["--expect-head", head]);
        assert_eq!(code, 0, "{report}");
    }
    let (code, report) = verify_json(&built.db, &["--replay"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(report["counts"]["replayed_decisions"], 14, "{report}");
}

#[test]
fn verifying_the_database_changes_nothing_and_leaves_nothing_beside_it() {
    let built = build_database();
    let before = std::fs::read(&built.db).expect("read");
    let files_before = files_in(built.dir.path());
    let (code, report) = verify_json(&built.db, &["--replay"]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(std::fs::read(&built.db).expect("read"), before);
    assert_eq!(files_in(built.dir.path()), files_before);
}

#[test]
fn a_database_in_use_by_a_running_server_can_be_verified() {
    let dir = TempDir::new();
    let db = dir.path().join("live.db");
    let server = Server::start_on(&db, &[]);
    let mut client = server.client();
    let body = json!({"status": "active", "capabilities": [], "actor": ADMIN});
    expect(
        client.put(&format!("/registry/agents/{AGENT}"), &body),
        200,
        "register",
    );
    let head = audit_head(&mut client);
    let (code, report) = verify_json(&db, &["--expect-head", &head]);
    assert_eq!(code, 0, "{report}");
    // The admin token's creation, then the registration.
    assert_eq!(report["counts"]["audit_entries"], 2, "{report}");
    expect(client.get("/health"), 200, "the server still answers");
}

#[test]
fn a_database_that_does_not_exist_cannot_be_checked_and_is_not_created() {
    let dir = TempDir::new();
    let missing = dir.path().join("missing.db");
    let (code, out, err) = run_cli(&["verify", "--db", missing.to_str().expect("utf-8")]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("does not exist"), "{err}");
    assert!(!missing.exists(), "verify created the file");
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("list").collect();
    assert!(left.is_empty(), "verify left files behind: {left:?}");
}

#[test]
fn a_file_that_is_not_a_fedcore_database_cannot_be_checked_and_is_left_alone() {
    let dir = TempDir::new();
    let text_file = dir.path().join("notes.db");
    std::fs::write(&text_file, "not a database at all\n").expect("write");
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, "").expect("write");
    let foreign = dir.path().join("foreign.db");
    Connection::open(&foreign)
        .and_then(|c| c.execute_batch("CREATE TABLE t (x)"))
        .expect("a foreign SQLite database");
    for file in [&text_file, &empty, &foreign] {
        let before = std::fs::read(file).expect("read");
        let (code, out, err) = run_cli(&["verify", "--db", file.to_str().expect("utf-8")]);
        assert_eq!(
            code,
            2,
            "{}: stdout:\n{out}\nstderr:\n{err}",
            file.display()
        );
        assert!(err.contains("not a fedcore database"), "{err}");
        assert_eq!(
            std::fs::read(file).expect("read"),
            before,
            "{}",
            file.display()
        );
    }
}

#[test]
fn a_malformed_expected_head_is_a_usage_error() {
    let built = build_database();
    let db = built.db.to_str().expect("utf-8");
    let (code, _, err) = run_cli(&["verify", "--db", db, "--expect-head", "12"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("SEQ:HASH"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Tampering, each found and named.

#[test]
fn an_edited_audit_reason_is_named_by_its_seq() {
    let built = build_database();
    let copy = built.copy("reason");
    let conn = attacker_opens(&copy);
    let seq: i64 = conn
        .query_row(
            "SELECT seq FROM audit_log WHERE run_id = ?1 AND action = 'policy.evaluated'
             AND decision = 'deny'",
            [&built.denied_run],
            |r| r.get(0),
        )
        .expect("the denial is in the log");
    conn.execute(
        "UPDATE audit_log SET reason = 'looked fine' WHERE seq = ?1",
        [seq],
    )
    .expect("edit");
    drop(conn);
    let failure = expect_broken(&copy, &[]);
    assert_named(&failure, "audit_log", &seq.to_string(), "entry_hash");

    let (code, out, _) = run_cli(&["verify", "--db", copy.to_str().expect("utf-8")]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("BROKEN: audit_log {seq} entry_hash: ")),
        "{out}"
    );
    assert!(
        out.contains(&format!("  found    {}", text(&failure["found"]))),
        "{out}"
    );
}

#[test]
fn an_edited_evidence_body_is_named_by_its_hash() {
    let built = build_database();
    let copy = built.copy("evidence");
    let conn = attacker_opens(&copy);
    let input_hash: String = conn
        .query_row(
            "SELECT input_hash FROM runs WHERE run_id = ?1",
            [&built.completed_run],
            |r| r.get(0),
        )
        .expect("the run");
    conn.execute(
        "UPDATE evidence SET body = ?2 WHERE hash = ?1",
        params![input_hash, br#"{"n":2}"#.to_vec()],
    )
    .expect("edit");
    drop(conn);
    let failure = expect_broken(&copy, &[]);
    assert_named(&failure, "evidence", &input_hash, "body");
}

#[test]
fn an_edited_decision_effect_is_named_by_its_decision() {
    let built = build_database();
    let copy = built.copy("decision");
    let conn = attacker_opens(&copy);
    conn.execute(
        "UPDATE decisions SET effect = 'allow' WHERE decision_id = ?1",
        [&built.deny_decision],
    )
    .expect("edit");
    drop(conn);
    let failure = expect_broken(&copy, &[]);
    assert_named(&failure, "decisions", &built.deny_decision, "decision_hash");
}

#[test]
fn a_deleted_audit_entry_leaves_a_gap_named_by_its_seq() {
    let built = build_database();
    let copy = built.copy("deleted");
    let conn = attacker_opens(&copy);
    let middle = head_seq(&built.head) / 2;
    conn.execute("DELETE FROM audit_log WHERE seq = ?1", [middle])
        .expect("delete");
    drop(conn);
    let failure = expect_broken(&copy, &[]);
    assert_named(&failure, "audit_log", &middle.to_string(), "seq");
    assert_eq!(failure["found"], (middle + 1).to_string(), "{failure}");
}

#[test]
fn two_audit_entries_swapped_are_named_at_the_first_of_them() {
    let built = build_database();
    let copy = built.copy("swapped");
    let conn = attacker_opens(&copy);
    let first = head_seq(&built.head) / 2;
    swap_entries(&conn, first, first + 1);
    drop(conn);
    let failure = expect_broken(&copy, &[]);
    assert_named(&failure, "audit_log", &first.to_string(), "entry_hash");
}

#[test]
fn an_entry_appended_again_under_the_next_seq_is_named_by_its_seq() {
    // Nothing in the table makes entry_hash unique (migration 5 dropped that index): a copy of
    // the last entry, appended as the next one and linked to it, goes in. The chain refuses it,
    // because an entry's hash covers its seq and its prev_hash.
    let built = build_database();
    let copy = built.copy("again");
    let conn = attacker_opens(&copy);
    let last = head_seq(&built.head);
    conn.execute(
        "INSERT INTO audit_log (seq, run_id, at, actor, action, subject, from_status, to_status,
           decision, reason, message, evidence_pack_ref, payload_hash, prev_hash, entry_hash)
         SELECT seq + 1, run_id, at, actor, action, subject, from_status, to_status,
           decision, reason, message, evidence_pack_ref, payload_hash, entry_hash, entry_hash
         FROM audit_log WHERE seq = ?1",
        [last],
    )
    .expect("append the copy");
    let distinct: i64 = conn
        .query_row(
            "SELECT count(DISTINCT entry_hash) FROM audit_log",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(distinct, last, "expected two entries with one entry_hash");
    drop(conn);
    let failure = expect_broken(&copy, &[]);
    assert_named(&failure, "audit_log", &(last + 1).to_string(), "entry_hash");
}

#[test]
fn a_truncated_log_is_caught_only_against_the_head_written_down() {
    let built = build_database();
    let copy = built.copy("truncated");
    let conn = attacker_opens(&copy);
    let kept = head_seq(&built.head_before_tail);
    conn.execute("DELETE FROM audit_log WHERE seq > ?1", [kept])
        .expect("truncate");
    // Without the key, the signed checkpoints of the cut tail can only be deleted too.
    conn.execute("DELETE FROM checkpoints WHERE seq > ?1", [kept])
        .expect("delete checkpoints");
    // The cut entries registered the approver: a careful attacker removes that row too.
    conn.execute("DELETE FROM agents WHERE agent_id = ?1", [APPROVER])
        .expect("remove what the cut entries wrote");
    restore_triggers(&conn, &built.db);
    drop(conn);
    // The shorter log is a consistent log: nothing in the file alone betrays the cut.
    let (code, report) = verify_json(&copy, &[]);
    assert_eq!(code, 0, "{report}");
    assert_eq!(
        format!(
            "{}:{}",
            report["head"]["seq"],
            text(&report["head"]["entry_hash"])
        ),
        built.head_before_tail
    );

    let failure = expect_broken(&copy, &["--expect-head", &built.head]);
    assert_named(
        &failure,
        "audit_log",
        &head_seq(&built.head).to_string(),
        "seq",
    );
}

#[test]
fn an_edited_step_receipt_is_named_by_its_attempt() {
    let built = build_database();
    let copy = built.copy("receipt");
    let conn = attacker_opens(&copy);
    let forged = sha256_hex(b"a receipt that was never issued");
    conn.execute(
        "UPDATE steps SET receipt_hash = ?2 WHERE run_id = ?1 AND step_id = 'decide'",
        params![built.flagged_run, forged],
    )
    .expect("edit");
    drop(conn);
    let failure = expect_broken(&copy, &[]);
    let attempt = format!("{}/decide#1", built.flagged_run);
    assert_named(&failure, "steps", &attempt, "receipt_hash");
    assert_eq!(failure["found"], forged, "{failure}");
}

#[test]
fn a_dropped_trigger_is_named() {
    let built = build_database();
    let copy = built.copy("trigger");
    let conn = Connection::open(&copy).expect("open");
    conn.execute_batch("DROP TRIGGER evidence_no_update")
        .expect("drop");
    drop(conn);
    let failure = expect_broken(&copy, &[]);
    assert_named(&failure, "sqlite_master", "evidence_no_update", "trigger");
}

#[test]
fn every_kind_of_run_is_checked_down_to_its_receipts() {
    // Not tampering: one edit per kind of run shows each run's receipts are really recomputed.
    let built = build_database();
    let runs = [
        &built.completed_run,
        &built.flagged_run,
        &built.denied_run,
        &built.retried_run,
        &built.cancelled_run,
    ];
    for run_id in runs {
        let copy = built.copy(&format!("ended-{run_id}"));
        let conn = attacker_opens(&copy);
        conn.execute(
            "UPDATE runs SET ended_at = '2000-01-01T00:00:00.000000Z' WHERE run_id = ?1",
            [run_id],
        )
        .expect("edit");
        drop(conn);
        let failure = expect_broken(&copy, &[]);
        assert_named(&failure, "runs", run_id, "receipt_hash");
    }
}

// ---------------------------------------------------------------------------------------------
// A forgery consistent in every hash: only replaying the decision finds it.

#[test]
fn a_decision_forged_with_every_hash_rewritten_passes_verify_but_not_replay() {
    let built = build_database();
    let copy = built.copy("forged");
    let conn = attacker_opens(&copy);
    forge_allow(&conn, &built.deny_decision, &built.denied_run);
    // The forger cannot sign the rewritten receipts and checkpoints without the key, so strips
    // every signature and the key itself: only `--pubkey` (the key known from elsewhere) and
    // the replay see through that.
    conn.execute_batch(
        "DELETE FROM checkpoints; DELETE FROM signatures; DELETE FROM signing_keys;",
    )
    .expect("strip the signatures");
    restore_triggers(&conn, &built.db);
    drop(conn);

    let (code, report) = verify_json(&copy, &[]);
    assert_eq!(code, 0, "the forgery is consistent in every hash: {report}");

    let failure = expect_broken(&copy, &["--replay"]);
    assert_named(&failure, "decisions", &built.deny_decision, "effect");
    assert_eq!(failure["expected"], "deny", "{failure}");
    assert_eq!(failure["found"], "allow", "{failure}");
}

/// Turns a deny into an allow and rewrites everything that hashes it: the decision and its blob,
/// the attempt's decision and receipt, the run's workflow receipt, the entries carrying them, and
/// the whole audit chain.
fn forge_allow(conn: &Connection, decision_id: &str, run_id: &str) {
    let mut renamed: Vec<(String, String)> = Vec::new();

    let decision: Value = conn
        .query_row(
            "SELECT json_object('decision_id', decision_id, 'run_id', run_id, 'step_id', step_id,
               'attempt', attempt, 'effect', effect, 'reason', reason, 'policy_id', policy_id,
               'policy_version', policy_version, 'policy_hash', policy_hash, 'tier', tier,
               'rules_triggered', json(rules_triggered), 'input_hash', input_hash, 'actor', actor,
               'decided_at', decided_at), decision_hash FROM decisions WHERE decision_id = ?1",
            [decision_id],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )
        .map(|(object, old_hash)| {
            let mut object: Value = serde_json::from_str(&object).expect("json");
            object["effect"] = json!("allow");
            let new_hash = store_blob(conn, &object);
            renamed.push((old_hash, new_hash));
            object
        })
        .expect("the decision");
    let new_decision_hash = renamed[0].1.clone();
    conn.execute(
        "UPDATE decisions SET effect = 'allow', decision_hash = ?2 WHERE decision_id = ?1",
        params![decision_id, new_decision_hash],
    )
    .expect("rewrite the decision");
    conn.execute(
        "UPDATE steps SET decision_hash = ?2 WHERE decision_id = ?1",
        params![decision_id, new_decision_hash],
    )
    .expect("rewrite the attempt's decision");
    assert_eq!(decision["effect"], "allow");

    // The attempts' receipt chain from the genesis, then the workflow receipt.
    let genesis: String = conn
        .query_row(
            "SELECT genesis_hash FROM runs WHERE run_id = ?1",
            [run_id],
            |r| r.get(0),
        )
        .expect("run");
    let mut tip = genesis;
    let mut step_receipts = Vec::new();
    let attempts: Vec<(i64, Value, Option<String>)> = query_all(
        conn,
        "SELECT creation_order, json_object('kind', 'step', 'run_id', run_id, 'step_id', step_id,
           'step_type', step_type, 'attempt', attempt, 'status', status, 'actor', actor,
           'started_at', started_at, 'ended_at', ended_at, 'input_hash', input_hash,
           'output_hash', output_hash, 'decision_hash', decision_hash,
           'prev_receipt_hash', prev_receipt_hash), receipt_hash
         FROM steps WHERE run_id = ?1 ORDER BY creation_order",
        run_id,
    );
    for (order, mut receipt, old) in attempts {
        let Some(old) = old else { continue };
        receipt["prev_receipt_hash"] = json!(tip);
        let new = store_blob(conn, &receipt);
        conn.execute(
            "UPDATE steps SET prev_receipt_hash = ?2, receipt_hash = ?3 WHERE creation_order = ?1",
            params![order, tip, new],
        )
        .expect("rewrite a step receipt");
        renamed.push((old, new.clone()));
        step_receipts.push(new.clone());
        tip = new;
    }
    let gate_receipts: Vec<String> = query_all(
        conn,
        "SELECT creation_order, 'null', receipt_hash FROM gates WHERE run_id = ?1
         AND receipt_hash IS NOT NULL ORDER BY creation_order",
        run_id,
    )
    .into_iter()
    .filter_map(|(_, _, receipt)| receipt)
    .collect();
    let (mut workflow, old): (Value, String) = conn
        .query_row(
            "SELECT json_object('kind', 'workflow', 'run_id', run_id, 'workflow_id', workflow_id,
               'workflow_version', workflow_version, 'status', status, 'ended_at', ended_at,
               'genesis_hash', genesis_hash), receipt_hash FROM runs WHERE run_id = ?1",
            [run_id],
            |r| {
                Ok((
                    serde_json::from_str(&r.get::<_, String>(0)?).expect("json"),
                    r.get(1)?,
                ))
            },
        )
        .expect("run");
    workflow["step_receipts"] = json!(step_receipts);
    workflow["gate_receipts"] = json!(gate_receipts);
    let new = store_blob(conn, &workflow);
    conn.execute(
        "UPDATE runs SET receipt_hash = ?2 WHERE run_id = ?1",
        params![run_id, new],
    )
    .expect("rewrite the workflow receipt");
    renamed.push((old, new));

    // The entries that carry what changed, then the chain.
    for (old, new) in &renamed {
        conn.execute(
            "UPDATE audit_log SET payload_hash = ?2, evidence_pack_ref = 'sha256:' || ?2
             WHERE payload_hash = ?1",
            params![old, new],
        )
        .expect("rewrite a payload");
    }
    conn.execute(
        "UPDATE audit_log SET decision = 'allow' WHERE payload_hash = ?1",
        [&new_decision_hash],
    )
    .expect("rewrite the logged decision");
    rechain(conn);
}

/// Recomputes `prev_hash` and `entry_hash` of every entry, in order.
fn rechain(conn: &Connection) {
    let entries: Vec<(i64, Value)> = {
        let mut stmt = conn
            .prepare(
                "SELECT seq, json_object('seq', seq, 'run_id', run_id, 'at', at, 'actor', actor,
                   'action', action, 'subject', subject, 'from_status', from_status,
                   'to_status', to_status, 'decision', decision, 'reason', reason,
                   'message', message, 'evidence_pack_ref', evidence_pack_ref,
                   'payload_hash', payload_hash) FROM audit_log ORDER BY seq",
            )
            .expect("prepare");
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, String>(1)?)))
            .expect("query");
        rows.map(|row| {
            let (seq, object) = row.expect("row");
            (seq, serde_json::from_str(&object).expect("json"))
        })
        .collect()
    };
    let mut prev = "0".repeat(64);
    for (seq, mut entry) in entries {
        entry["prev_hash"] = json!(prev);
        let entry_hash = sha256_hex(jcs(&entry).as_bytes());
        conn.execute(
            "UPDATE audit_log SET prev_hash = ?2, entry_hash = ?3 WHERE seq = ?1",
            params![seq, prev, entry_hash],
        )
        .expect("rewrite an entry");
        prev = entry_hash;
    }
}

/// Rows of `(creation_order, JSON object, hash)` for one run.
fn query_all(conn: &Connection, sql: &str, run_id: &str) -> Vec<(i64, Value, Option<String>)> {
    let mut stmt = conn.prepare(sql).expect("prepare");
    let rows = stmt
        .query_map([run_id], |r| {
            Ok((r.get(0)?, r.get::<_, String>(1)?, r.get(2)?))
        })
        .expect("query");
    rows.map(|row| {
        let (order, object, hash) = row.expect("row");
        (order, serde_json::from_str(&object).expect("json"), hash)
    })
    .collect()
}

/// Stores `value` as an evidence blob and returns its hash.
fn store_blob(conn: &Connection, value: &Value) -> String {
    let body = jcs(value);
    let hash = sha256_hex(body.as_bytes());
    conn.execute(
        "INSERT OR IGNORE INTO evidence (hash, body) VALUES (?1, ?2)",
        params![hash, body.into_bytes()],
    )
    .expect("store a blob");
    hash
}

/// RFC 8785 for the values forged here: objects, arrays, strings, integers, booleans and null.
/// Keys sort by UTF-16 code units; strings escape as serde_json does, which for these is JCS.
fn jcs(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| format!("{}:{}", jcs(&json!(k)), jcs(&map[k])))
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(jcs).collect();
            format!("[{}]", items.join(","))
        }
        Value::Number(n) => n.as_i64().expect("only integers are forged").to_string(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Lifecycle: what no hash covers. Entries appended after a head written down keep that head, so
// each object must have exactly the entries its state needs, and the run's mutable columns must
// be the ones its attempts, gates and entries give.

#[test]
fn an_appended_entry_rewriting_a_run_outcome_is_named_even_against_the_old_head() {
    let built = build_database();
    let copy = built.copy("append-flip");
    let conn = attacker_opens(&copy);
    let run = &built.denied_run;
    conn.execute(
        "UPDATE runs SET status = 'COMPLETED', failure = NULL, next_step_id = NULL
         WHERE run_id = ?1",
        [run],
    )
    .expect("flip the run");
    let receipt = forge_workflow_receipt(&conn, run);
    let seq = append_entry(
        &conn,
        Some(run),
        "run.completed",
        &format!("run:{run}"),
        Some(("RUNNING", "COMPLETED")),
        Some(&receipt),
    );
    restore_triggers(&conn, &built.db);
    drop(conn);

    for extra in [&[][..], &["--replay"], &["--expect-head", &built.head]] {
        let failure = expect_broken(&copy, extra);
        assert_named(&failure, "audit_log", &seq.to_string(), "action");
    }
}

#[test]
fn a_second_step_request_appended_for_an_attempt_is_named() {
    let built = build_database();
    let copy = built.copy("append-request");
    let conn = attacker_opens(&copy);
    let context = store_blob(&conn, &json!({"input": {"risk": "low"}}));
    let seq = append_entry(
        &conn,
        Some(&built.denied_run),
        "step.requested",
        "step:decide#1",
        None,
        Some(&context),
    );
    restore_triggers(&conn, &built.db);
    drop(conn);
    let failure = expect_broken(&copy, &["--expect-head", &built.head]);
    assert_named(&failure, "audit_log", &seq.to_string(), "action");
}

#[test]
fn a_flagged_attempt_whose_gate_was_deleted_is_named() {
    let built = build_database();
    let copy = built.copy("flag-bypass");
    let conn = attacker_opens(&copy);
    // The gate goes, and with every hash that names it rewritten, only its entries remain.
    let run = &built.flagged_run;
    conn.execute("DELETE FROM gates WHERE run_id = ?1", [run])
        .expect("delete the gate");
    let old: String = conn
        .query_row(
            "SELECT receipt_hash FROM runs WHERE run_id = ?1",
            [run],
            |r| r.get(0),
        )
        .expect("run");
    let new = forge_workflow_receipt(&conn, run);
    conn.execute(
        "UPDATE audit_log SET payload_hash = ?2, evidence_pack_ref = 'sha256:' || ?2
         WHERE payload_hash = ?1",
        params![old, new],
    )
    .expect("rewrite the run's end");
    rechain(&conn);
    let seq: i64 = conn
        .query_row(
            "SELECT seq FROM audit_log WHERE run_id = ?1 AND action = 'gate.requested'",
            [&built.flagged_run],
            |r| r.get(0),
        )
        .expect("the gate was requested");
    restore_triggers(&conn, &built.db);
    drop(conn);
    let failure = expect_broken(&copy, &[]);
    assert_named(&failure, "audit_log", &seq.to_string(), "subject");
}

#[test]
fn edited_run_columns_that_no_hash_covers_are_named() {
    let built = build_database();
    let edits: [(&str, &str, &str, &str); 9] = [
        (
            "step-index",
            "UPDATE steps SET step_index = 2 WHERE run_id = ?1 AND step_id = 'decide'",
            &built.denied_run,
            "step_index",
        ),
        (
            "denied-error",
            "UPDATE steps SET error = '{\"code\":\"x\"}' WHERE run_id = ?1 AND step_id = 'decide'",
            &built.denied_run,
            "error",
        ),
        (
            "next-step",
            "UPDATE runs SET next_step_id = 'act' WHERE run_id = ?1",
            &built.denied_run,
            "next_step_id",
        ),
        (
            "failure-code",
            "UPDATE runs SET failure = json_set(failure, '$.code', 'step_failed')
             WHERE run_id = ?1",
            &built.denied_run,
            "failure",
        ),
        (
            "failure-reason",
            "UPDATE runs SET failure = json_set(failure, '$.reason', 'fine') WHERE run_id = ?1",
            &built.denied_run,
            "failure",
        ),
        (
            "failure-step",
            "UPDATE runs SET failure = json_set(failure, '$.step_id', 'observe')
             WHERE run_id = ?1",
            &built.denied_run,
            "failure",
        ),
        (
            "attempt-base",
            "UPDATE runs SET attempt_base = 7 WHERE run_id = ?1",
            &built.retried_run,
            "attempt_base",
        ),
        (
            "updated-at",
            "UPDATE runs SET updated_at = '2000-01-01T00:00:00.000000Z' WHERE run_id = ?1",
            &built.completed_run,
            "updated_at",
        ),
        (
            "updated-at-as-created",
            "UPDATE runs SET updated_at = created_at WHERE run_id = ?1",
            &built.retried_run,
            "updated_at",
        ),
    ];
    for (name, sql, run, field) in edits {
        let copy = built.copy(name);
        let conn = attacker_opens(&copy);
        conn.execute(sql, [run]).expect("edit the run");
        restore_triggers(&conn, &built.db);
        drop(conn);
        let failure = expect_broken(&copy, &[]);
        let (table, id) = match field {
            "step_index" | "error" => ("steps", format!("{run}/decide#1")),
            _ => ("runs", run.to_string()),
        };
        assert_named(&failure, table, &id, field);
    }
}

#[test]
fn a_step_skipped_by_editing_the_next_step_is_named_after_the_run_completes() {
    let built = build_database();
    let copy = built.copy("skip");
    let mut server = Server::start_on(&copy, &[]);
    let mut client = server.client();
    let run = create_run(&mut client);
    request_step(&mut client, &run, "observe", "low");
    complete_step(&mut client, &run, "observe");
    assert_eq!(server.terminate(), Some(0));

    let conn = attacker_opens(&copy);
    conn.execute(
        "UPDATE runs SET next_step_id = 'act' WHERE run_id = ?1",
        [&run],
    )
    .expect("skip decide");
    restore_triggers(&conn, &built.db);
    drop(conn);
    assert_named(&expect_broken(&copy, &[]), "runs", &run, "next_step_id");

    let mut server = Server::start_on(&copy, &[]);
    let mut client = server.client();
    request_step(&mut client, &run, "act", "low");
    complete_step(&mut client, &run, "act");
    assert_eq!(server.terminate(), Some(0));
    let failure = expect_broken(&copy, &["--expect-head", &built.head]);
    assert_named(&failure, "steps", &format!("{run}/act#1"), "step_id");
}

#[test]
fn the_catalog_is_tied_to_its_entries() {
    let built = build_database();
    let copy = built.copy("catalog-append");
    let conn = attacker_opens(&copy);
    let hash: String = conn
        .query_row(
            "SELECT policy_hash FROM policies WHERE policy_id = 'gov'",
            [],
            |r| r.get(0),
        )
        .expect("policy");
    append_entry(&conn, None, "policy.put", "policy:gov@1", None, Some(&hash));
    restore_triggers(&conn, &built.db);
    drop(conn);
    let failure = expect_broken(&copy, &["--expect-head", &built.head]);
    assert_named(&failure, "policies", "gov@1", "audit");

    let copy = built.copy("agent-edit");
    let conn = attacker_opens(&copy);
    conn.execute(
        "UPDATE agents SET capabilities = '[\"observe\",\"deploy\"]' WHERE agent_id = ?1",
        [AGENT],
    )
    .expect("edit the agent");
    restore_triggers(&conn, &built.db);
    drop(conn);
    assert_named(&expect_broken(&copy, &[]), "agents", AGENT, "row");
}

#[test]
fn checkpoints_removed_after_a_run_end_are_named_at_that_end() {
    let built = build_database();
    let copy = built.copy("checkpoints-removed");
    let conn = attacker_opens(&copy);
    let ends: Vec<i64> = {
        let mut stmt = conn
            .prepare(
                "SELECT seq FROM audit_log WHERE action IN ('run.completed', 'run.failed', \
                 'run.cancelled') ORDER BY seq",
            )
            .expect("prepare");
        let rows = stmt.query_map([], |r| r.get(0)).expect("query");
        rows.map(|r| r.expect("seq")).collect()
    };
    assert!(
        ends.len() >= 2,
        "the database has several run ends: {ends:?}"
    );
    // What a log rewritten after the first run end must do: drop every later checkpoint.
    let removed = conn
        .execute("DELETE FROM checkpoints WHERE seq > ?1", [ends[0]])
        .expect("remove checkpoints");
    assert!(removed > 0);
    restore_triggers(&conn, &built.db);
    drop(conn);
    let last_end = ends.last().expect("an end").to_string();
    let failure = expect_broken(&copy, &[]);
    assert_named(&failure, "audit_log", &last_end, "checkpoint");
}

#[test]
fn a_gates_terms_and_its_quorum_approvals_are_tied_to_their_entries() {
    // A run paused at a quorum gate (two approvals, a deadline) that one approver approved, and
    // the flagged run of the shared database, whose gate was approved and has no deadline.
    let dir = TempDir::new();
    let db = dir.path().join("paused-at-a-quorum-gate.db");
    let mut server = Server::start_on(&db, &[]);
    let mut client = server.client();
    let c = &mut client;
    let agent = json!({"status": "active", "capabilities": [], "tier": "T2", "actor": ADMIN});
    expect(
        c.put(&format!("/registry/agents/{AGENT}"), &agent),
        200,
        "agent",
    );
    let policy = json!({"tier": "T2", "default_effect": "deny", "actor": ADMIN, "rules": [
        {"rule_id": "flag-high", "effect": "flag", "reason": "two people look",
         "approvals_required": 2, "gate_expires_in_s": 3600,
         "when": {"path": "input.risk", "eq": "high"}},
        {"rule_id": "allow", "effect": "allow", "when": {"path": "agent.status", "eq": "active"}}]});
    expect(c.put("/policies/quorum", &policy), 201, "policy");
    let definition = json!({"policy_id": "quorum", "actor": ADMIN,
                            "steps": [{"step_id": "observe", "step_type": "OBSERVE"}]});
    expect(
        c.put("/workflows/definitions/quorum_flow", &definition),
        201,
        "definition",
    );
    let body = json!({"workflow_id": "quorum_flow", "input": {}, "actor": AGENT});
    let run_id = text(&expect(c.post("/workflows/runs", &body), 201, "run")["run_id"]).to_string();
    let flagged = request_step(c, &run_id, "observe", "high");
    let gate_id = text(&flagged["gate"]["gate_id"]).to_string();
    let approval = json!({"decision": "approve", "actor": APPROVER});
    let path = format!("/workflows/runs/{run_id}/gates/{gate_id}");
    let approved = expect(c.patch(&path, &approval), 200, "the first approval");
    assert_eq!(approved["gate"]["status"], "PENDING", "{approved}");
    assert_eq!(server.terminate(), Some(0));
    let (code, report) = verify_json(&db, &[]);
    assert_eq!(code, 0, "the untouched file verifies: {report}");
    // A copy with one row changed (or added) by `edit`, and what verify names in it.
    let tampered = |name: &str, edit: &str| -> Value {
        let copy = dir.path().join(format!("{name}.db"));
        std::fs::copy(&db, &copy).expect("copy");
        let conn = attacker_opens(&copy);
        assert_eq!(conn.execute(edit, []).expect(edit), 1, "{edit}");
        restore_triggers(&conn, &db);
        drop(conn);
        expect_broken(&copy, &[])
    };

    let edits = [
        (
            "approver",
            "UPDATE gate_approvals SET approver = 'approver-9'",
            "approvals",
        ),
        ("quorum", "UPDATE gates SET approvals_required = 3", "audit"),
        ("deadline", "UPDATE gates SET expires_at = NULL", "audit"),
        (
            "requester",
            "UPDATE gates SET requested_by = 'approver-9'",
            "audit",
        ),
        (
            "reason",
            "UPDATE gates SET reason = 'one person looks'",
            "audit",
        ),
    ];
    for (name, edit, field) in edits {
        assert_named(&tampered(name, edit), "gates", &gate_id, field);
    }

    // The open attempt's type, which no receipt covers yet.
    let failure = tampered("step-type", "UPDATE steps SET step_type = 'ACT'");
    let attempt = format!("{run_id}/observe#1");
    assert_named(&failure, "steps", &attempt, "step_type");

    // An approval of a gate that does not exist.
    let failure = tampered(
        "orphan-approval",
        "INSERT INTO gate_approvals (gate_id, approver, approved_at, comment)
         SELECT 'no-such-gate', approver, approved_at, comment FROM gate_approvals",
    );
    let approval = "no-such-gate/approver-1";
    assert_named(&failure, "gate_approvals", approval, "gate_id");

    // A resolved gate's deadline, which its receipt does not cover.
    let built = build_database();
    let copy = built.copy("resolved-gate-deadline");
    let conn = attacker_opens(&copy);
    let gate_id: String = conn
        .query_row(
            "SELECT gate_id FROM gates WHERE run_id = ?1",
            [&built.flagged_run],
            |r| r.get(0),
        )
        .expect("the flagged run's gate");
    conn.execute(
        "UPDATE gates SET expires_at = requested_at WHERE gate_id = ?1",
        [&gate_id],
    )
    .expect("edit");
    restore_triggers(&conn, &built.db);
    drop(conn);
    assert_named(&expect_broken(&copy, &[]), "gates", &gate_id, "audit");
}

#[test]
fn an_entry_added_before_the_first_is_named_where_the_log_should_start() {
    let built = build_database();
    let copy = built.copy("before-the-first");
    let conn = attacker_opens(&copy);
    conn.execute_batch(
        "INSERT INTO audit_log (seq, run_id, at, actor, action, subject, from_status, to_status,
           decision, reason, message, evidence_pack_ref, payload_hash, prev_hash, entry_hash)
         SELECT 0, run_id, at, actor, action, subject, from_status, to_status, decision, reason,
           message, evidence_pack_ref, payload_hash, prev_hash, entry_hash
         FROM audit_log WHERE seq = 1",
    )
    .expect("add an entry before the first");
    restore_triggers(&conn, &built.db);
    drop(conn);
    let failure = expect_broken(&copy, &[]);
    assert_named(&failure, "audit_log", "1", "seq");
    assert_eq!(failure["found"], "0", "{failure}");
    assert!(
        text(&failure["message"]).contains("before seq 1"),
        "the message says where the extra entry is: {failure}"
    );
}

#[test]
fn tokens_are_tied_to_their_entries() {
    let built = build_database();
    let token_of = |conn: &Connection, name: &str| -> String {
        conn.query_row("SELECT token_id FROM tokens WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .expect("the token")
    };

    // A token no entry created, for a name that can then act as an admin.
    let copy = built.copy("token-added");
    let conn = attacker_opens(&copy);
    conn.execute(
        "INSERT INTO tokens (token_id, name, role, token_hash, created_at, created_by)
         SELECT 'forged', 'mallory', 'admin', ?1, created_at, created_by FROM tokens LIMIT 1",
        [sha256_hex(b"a secret the attacker knows")],
    )
    .expect("add a token");
    restore_triggers(&conn, &built.db);
    drop(conn);
    assert_named(&expect_broken(&copy, &[]), "tokens", "forged", "audit");

    // An agent's token promoted to admin, and one whose creator is rewritten.
    for (name, edit, field) in [
        (
            "promoted",
            "UPDATE tokens SET role = 'admin' WHERE name = ?1",
            "audit",
        ),
        (
            "creator",
            "UPDATE tokens SET created_by = 'someone-else' WHERE name = ?1",
            "created_by",
        ),
    ] {
        let copy = built.copy(name);
        let conn = attacker_opens(&copy);
        let token_id = token_of(&conn, AGENT);
        assert_eq!(conn.execute(edit, [AGENT]).expect("edit"), 1);
        restore_triggers(&conn, &built.db);
        drop(conn);
        assert_named(&expect_broken(&copy, &[]), "tokens", &token_id, field);
    }

    // A revoked token made live again: its token.revoked entry names a revocation no row holds.
    let copy = built.copy("token-unrevoked");
    let conn = attacker_opens(&copy);
    let revoked_at: i64 = conn
        .query_row(
            "SELECT seq FROM audit_log WHERE action = 'token.revoked'",
            [],
            |r| r.get(0),
        )
        .expect("the revocation's entry");
    conn.execute(
        "UPDATE tokens SET revoked_at = NULL, revoked_by = NULL WHERE name = 'retired'",
        [],
    )
    .expect("un-revoke");
    restore_triggers(&conn, &built.db);
    drop(conn);
    let failure = expect_broken(&copy, &[]);
    assert_named(
        &failure,
        "audit_log",
        &revoked_at.to_string(),
        "payload_hash",
    );

    // A token deleted: its token.created entry names a row that is gone.
    let copy = built.copy("token-deleted");
    let conn = attacker_opens(&copy);
    let created_at: i64 = conn
        .query_row(
            "SELECT seq FROM audit_log WHERE action = 'token.created' AND subject = 'token:retired'",
            [],
            |r| r.get(0),
        )
        .expect("the creation's entry");
    conn.execute("DELETE FROM tokens WHERE name = 'retired'", [])
        .expect("delete");
    restore_triggers(&conn, &built.db);
    drop(conn);
    let failure = expect_broken(&copy, &[]);
    assert_named(
        &failure,
        "audit_log",
        &created_at.to_string(),
        "payload_hash",
    );
}

#[test]
fn a_schema_version_lowered_to_hide_a_dropped_trigger_is_refused_not_checked_as_the_lower_one() {
    // Checked as version 1, the file would lack no trigger of schema.sql; its objects show the
    // current version, so verify refuses it as changed (could not check) instead.
    let built = build_database();
    let copy = built.copy("downgraded");
    let conn = Connection::open(&copy).expect("open the copy");
    conn.execute_batch("DROP TRIGGER gate_approvals_no_delete; PRAGMA user_version = 1;")
        .expect("drop a trigger of migration 2 and claim schema 1");
    drop(conn);
    let path = copy.to_str().expect("utf-8 path");
    let (code, out, err) = run_cli(&["verify", "--db", path]);
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    let lowered = format!(
        "{path} is not as fedcore left it: its schema objects show schema version {}, but it \
         says schema version 1 (PRAGMA user_version was lowered, or its schema objects changed, \
         after fedcore wrote it)",
        fedcore::store::SCHEMA_VERSION
    );
    assert!(err.contains(&lowered), "{err}");
    assert!(out.is_empty(), "{out}");
}

/// Appends one entry to the chain, as the writer would, and returns its `seq`.
fn append_entry(
    conn: &Connection,
    run_id: Option<&str>,
    action: &str,
    subject: &str,
    statuses: Option<(&str, &str)>,
    evidence: Option<&str>,
) -> i64 {
    let (seq, at, prev): (i64, String, String) = conn
        .query_row(
            "SELECT seq, at, entry_hash FROM audit_log ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .expect("the head");
    let null_hash = sha256_hex(b"null");
    let mut entry = json!({
        "seq": seq + 1, "run_id": run_id, "at": at, "actor": AGENT, "action": action,
        "subject": subject, "from_status": statuses.map(|s| s.0),
        "to_status": statuses.map(|s| s.1), "decision": null, "reason": null,
        "message": format!("{action} {subject}"),
        "evidence_pack_ref": evidence.map(|h| format!("sha256:{h}")),
        "payload_hash": evidence.map_or(null_hash, str::to_string), "prev_hash": prev,
    });
    let entry_hash = sha256_hex(jcs(&entry).as_bytes());
    entry["entry_hash"] = json!(entry_hash);
    let columns = [
        "seq",
        "run_id",
        "at",
        "actor",
        "action",
        "subject",
        "from_status",
        "to_status",
        "decision",
        "reason",
        "message",
        "evidence_pack_ref",
        "payload_hash",
        "prev_hash",
        "entry_hash",
    ];
    let values: Vec<rusqlite::types::Value> = columns
        .iter()
        .map(|c| match &entry[*c] {
            Value::Null => rusqlite::types::Value::Null,
            Value::Number(n) => rusqlite::types::Value::Integer(n.as_i64().expect("seq")),
            v => rusqlite::types::Value::Text(text(v).to_string()),
        })
        .collect();
    conn.execute(
        &format!(
            "INSERT INTO audit_log ({}) VALUES ({})",
            columns.join(", "),
            vec!["?"; columns.len()].join(", ")
        ),
        rusqlite::params_from_iter(values),
    )
    .expect("append an entry");
    seq + 1
}

/// Recomputes the run's workflow receipt from its rows as they are now, stores it on the run and
/// as a blob, and returns it.
fn forge_workflow_receipt(conn: &Connection, run_id: &str) -> String {
    let receipts = |sql: &str| -> Vec<String> {
        query_all(conn, sql, run_id)
            .into_iter()
            .filter_map(|(_, _, receipt)| receipt)
            .collect()
    };
    let step_receipts = receipts(
        "SELECT creation_order, 'null', receipt_hash FROM steps WHERE run_id = ?1
         AND receipt_hash IS NOT NULL ORDER BY creation_order",
    );
    let gate_receipts = receipts(
        "SELECT creation_order, 'null', receipt_hash FROM gates WHERE run_id = ?1
         AND receipt_hash IS NOT NULL ORDER BY creation_order",
    );
    let mut workflow: Value = conn
        .query_row(
            "SELECT json_object('kind', 'workflow', 'run_id', run_id, 'workflow_id', workflow_id,
               'workflow_version', workflow_version, 'status', status, 'ended_at', ended_at,
               'genesis_hash', genesis_hash) FROM runs WHERE run_id = ?1",
            [run_id],
            |r| Ok(serde_json::from_str(&r.get::<_, String>(0)?).expect("json")),
        )
        .expect("run");
    workflow["step_receipts"] = json!(step_receipts);
    workflow["gate_receipts"] = json!(gate_receipts);
    let receipt = store_blob(conn, &workflow);
    conn.execute(
        "UPDATE runs SET receipt_hash = ?2 WHERE run_id = ?1",
        params![run_id, receipt],
    )
    .expect("store the workflow receipt");
    receipt
}

// ---------------------------------------------------------------------------------------------
// The attacker's tools.

/// Opens a copy for writing and drops every trigger, and foreign keys, as someone altering the
/// file would.
fn attacker_opens(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open the copy");
    conn.pragma_update(None, "foreign_keys", "OFF")
        .expect("foreign keys off");
    let names: Vec<String> = {
        let mut stmt = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'trigger'")
            .expect("prepare");
        let rows = stmt.query_map([], |r| r.get(0)).expect("query");
        rows.map(|r| r.expect("name")).collect()
    };
    assert_eq!(names.len(), 26, "the schema's triggers: {names:?}");
    for name in names {
        // Trigger names come from the database itself, not from input.
        conn.execute_batch(&format!("DROP TRIGGER \"{name}\""))
            .expect("drop trigger");
    }
    conn
}

/// Puts the triggers back exactly as `original` has them, hiding that they were ever gone.
fn restore_triggers(conn: &Connection, original: &Path) {
    let source = Connection::open(original).expect("open the original");
    let mut stmt = source
        .prepare("SELECT sql FROM sqlite_master WHERE type = 'trigger'")
        .expect("prepare");
    let sqls: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("sql"))
        .collect();
    for sql in sqls {
        conn.execute_batch(&sql).expect("recreate a trigger");
    }
}

/// Swaps every column but `seq` between two entries.
fn swap_entries(conn: &Connection, a: i64, b: i64) {
    const COLUMNS: &str = "run_id, at, actor, action, subject, from_status, to_status, decision,
        reason, message, evidence_pack_ref, payload_hash, prev_hash, entry_hash";
    let read = |seq: i64| -> Vec<rusqlite::types::Value> {
        conn.query_row(
            &format!("SELECT {COLUMNS} FROM audit_log WHERE seq = ?1"),
            [seq],
            |r| (0..14).map(|i| r.get(i)).collect(),
        )
        .expect("read an entry")
    };
    let (row_a, row_b) = (read(a), read(b));
    let write = |seq: i64, row: &[rusqlite::types::Value]| {
        let mut values: Vec<&dyn rusqlite::ToSql> =
            row.iter().map(|v| v as &dyn rusqlite::ToSql).collect();
        values.push(&seq);
        conn.execute(
            "UPDATE audit_log SET run_id = ?1, at = ?2, actor = ?3, action = ?4, subject = ?5,
               from_status = ?6, to_status = ?7, decision = ?8, reason = ?9, message = ?10,
               evidence_pack_ref = ?11, payload_hash = ?12, prev_hash = ?13, entry_hash = ?14
             WHERE seq = ?15",
            values.as_slice(),
        )
        .expect("write an entry");
    };
    write(a, &row_b);
    write(b, &row_a);
}

// ---------------------------------------------------------------------------------------------
// Running verify and reading its answer.

/// Runs verify, expects exit 1, and returns the named failure.
fn expect_broken(db: &Path, extra: &[&str]) -> Value {
    let (code, report) = verify_json(db, extra);
    assert_eq!(
        code, 1,
        "expected verify to find the database broken: {report}"
    );
    assert_eq!(report["ok"], false, "{report}");
    report["failure"].clone()
}

fn assert_named(failure: &Value, table: &str, id: &str, field: &str) {
    assert_eq!(
        (
            text(&failure["table"]),
            text(&failure["id"]),
            text(&failure["field"])
        ),
        (table, id, field),
        "the failure named another object: {failure}"
    );
    assert!(
        failure["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{failure}"
    );
}

fn head_seq(head: &str) -> i64 {
    head.split_once(':')
        .and_then(|(seq, _)| seq.parse().ok())
        .unwrap_or_else(|| panic!("not a head: {head}"))
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("<not a string>")
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Requests that assert what they expect.

fn expect(resp: crate::support::Response, status: u16, what: &str) -> Value {
    assert_eq!(
        resp.status,
        status,
        "{what}: expected HTTP {status}, got {} {}",
        resp.status,
        String::from_utf8_lossy(&resp.body)
    );
    resp.json()
}

fn create_run(c: &mut Client) -> String {
    let body = json!({"workflow_id": WORKFLOW, "input": {"ticket": "T-1"}, "actor": AGENT});
    let run = expect(c.post("/workflows/runs", &body), 201, "create a run");
    text(&run["run_id"]).to_string()
}

fn request_step(c: &mut Client, run_id: &str, step_id: &str, risk: &str) -> Value {
    let body = json!({"step_id": step_id, "input": {"risk": risk}, "actor": AGENT});
    expect(
        c.post(&format!("/workflows/runs/{run_id}/steps"), &body),
        201,
        "request a step",
    )
}

fn complete_step(c: &mut Client, run_id: &str, step_id: &str) {
    let body = json!({"status": "COMPLETED", "output": {"done": step_id}, "actor": AGENT});
    let path = format!("/workflows/runs/{run_id}/steps/{step_id}");
    expect(c.patch(&path, &body), 200, "complete a step");
}

fn set_status(c: &mut Client, run_id: &str, status: &str) {
    let body = json!({"status": status, "reason": "test", "actor": ADMIN});
    let path = format!("/workflows/runs/{run_id}/status");
    expect(c.patch(&path, &body), 200, "change the run's status");
}

/// `SEQ:HASH` of the log's last entry, as `verify` prints it.
fn audit_head(c: &mut Client) -> String {
    let page = expect(
        c.get("/audit?after_seq=0&limit=1"),
        200,
        "read the audit head",
    );
    format!(
        "{}:{}",
        page["head"]["seq"],
        text(&page["head"]["entry_hash"])
    )
}
