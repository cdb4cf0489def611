//! Independent recomputation of every hash fedcore answers: input, output and decision hashes,
//! genesis, step, gate and workflow receipts, policy and definition hashes, and the whole audit
//! chain with its evidence blobs. The hashing here uses the test's own JCS (scenarios.rs), never
//! the server's, so a wrong canonical form or a wrong receipt field shows up as a mismatch.

use crate::scenarios::{
    assert_hash, complete_step, ecmascript_number, expect, flagged_run, get_run, h, jcs,
    new_pt004_run, pt004_definition, pt004_policy, pt004_server, put_definition, put_policy,
    run_logs, run_scenario_a, run_scenario_b, run_scenario_c, run_steps, set_status, sha256_hex,
    start_step, step_input, step_output, text, ADMIN, AGENT, POLICY_ID, WORKFLOW_ID,
};
use crate::support::{Client, Server};
use serde_json::{json, Map, Value};

/// What the test sent for an attempt of a step: `(input, output when it completed)`.
type Sent<'a> = &'a dyn Fn(&str, u64) -> (Value, Value);

/// `v` without `key`.
fn without(v: &Value, key: &str) -> Value {
    let mut object = v
        .as_object()
        .unwrap_or_else(|| panic!("expected an object, got {v}"))
        .clone();
    object.remove(key);
    Value::Object(object)
}

/// `{"kind": kind, key: v[key] for each key}`; every key must be present in `v` (null counts).
fn receipt_of(v: &Value, kind: &str, keys: &[&str]) -> Value {
    let mut object = Map::new();
    object.insert("kind".to_string(), json!(kind));
    for key in keys {
        let field = v
            .get(*key)
            .unwrap_or_else(|| panic!("expected field {key:?} in {v}"));
        object.insert(key.to_string(), field.clone());
    }
    Value::Object(object)
}

const STEP_RECEIPT_FIELDS: [&str; 12] = [
    "run_id",
    "step_id",
    "step_type",
    "attempt",
    "status",
    "actor",
    "started_at",
    "ended_at",
    "input_hash",
    "output_hash",
    "decision_hash",
    "prev_receipt_hash",
];
const GATE_RECEIPT_FIELDS: [&str; 12] = [
    "gate_id",
    "run_id",
    "step_id",
    "attempt",
    "status",
    "reason",
    "decision_id",
    "requested_by",
    "requested_at",
    "resolved_by",
    "resolved_at",
    "comment",
];

/// `policy_hash` per contract §2, from the document as sent (rules default `reason` "").
fn expected_policy_hash(doc: &Value, version: u64) -> String {
    let rules: Vec<Value> = doc["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|rule| {
            let mut rule = rule.clone();
            if rule.get("reason").is_none() {
                rule["reason"] = json!("");
            }
            rule
        })
        .collect();
    h(
        &json!({"policy_id": doc["policy_id"], "version": version, "tier": doc["tier"],
              "default_effect": doc.get("default_effect").cloned().unwrap_or(json!("deny")), "rules": rules}),
    )
}

/// The steps of a definition written out with all four fields (`max_attempts` 3, `policy_id` null).
fn steps_with_defaults(doc: &Value) -> Value {
    let steps: Vec<Value> = doc["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| {
            json!({"step_id": s["step_id"], "step_type": s["step_type"],
                   "max_attempts": s.get("max_attempts").cloned().unwrap_or(json!(3)),
                   "policy_id": s.get("policy_id").cloned().unwrap_or(Value::Null)})
        })
        .collect();
    Value::Array(steps)
}

/// `definition_hash` per contract §2, from the document as sent.
fn expected_definition_hash(doc: &Value, version: u64) -> String {
    h(
        &json!({"workflow_id": doc["workflow_id"], "version": version, "policy_id": doc["policy_id"],
              "steps": steps_with_defaults(doc)}),
    )
}

/// Recomputes every hash of one run from what the API answers and what the test sent, and
/// returns the run.
fn verify_run(c: &mut Client, run_id: &str, sent: Sent) -> Value {
    let run = get_run(c, run_id);
    assert_eq!(
        run["input_hash"],
        h(&run["input"]),
        "run input_hash: expected H(run.input)"
    );

    let path = format!(
        "/workflows/definitions/{}?version={}",
        text(&run, "workflow_id"),
        run["workflow_version"]
    );
    let definition = expect(c.get(&path), 200, "GET the run's definition version");
    let mut genesis = receipt_of(
        &run,
        "run",
        &[
            "run_id",
            "workflow_id",
            "workflow_version",
            "created_by",
            "created_at",
            "input_hash",
        ],
    );
    genesis["definition_hash"] = definition["definition_hash"].clone();
    assert_eq!(
        run["genesis_hash"],
        h(&genesis),
        "genesis_hash: expected H({genesis})"
    );

    let decisions = run["decisions"].as_array().expect("decisions").clone();
    let mut prev = text(&run, "genesis_hash");
    let mut step_receipts = Vec::new();
    for step in run["steps"].as_array().expect("steps") {
        let step_id = text(step, "step_id");
        let attempt = step["attempt"].as_u64().expect("attempt");
        let what = format!("step {step_id}#{attempt}");
        let (input, output) = sent(&step_id, attempt);
        assert_eq!(
            step["input_hash"],
            h(&input),
            "{what}: expected input_hash = H(input sent)"
        );
        verify_decision(c, step, &decisions, &what);
        assert_eq!(
            step["prev_receipt_hash"],
            prev.as_str(),
            "{what}: expected prev_receipt_hash to chain"
        );

        let expected_output_hash = match step["status"].as_str() {
            Some("COMPLETED") => h(&output),
            Some("FAILED") => h(&json!({"error": step["error"]})),
            Some("DENIED" | "REJECTED") => h(&Value::Null),
            _ => {
                assert_eq!(
                    step["output_hash"],
                    Value::Null,
                    "{what}: expected no output_hash while open"
                );
                assert_eq!(
                    step["receipt_hash"],
                    Value::Null,
                    "{what}: expected no receipt while open"
                );
                continue;
            }
        };
        assert_eq!(
            step["output_hash"], expected_output_hash,
            "{what}: output_hash"
        );
        let receipt = receipt_of(step, "step", &STEP_RECEIPT_FIELDS);
        assert_eq!(
            step["receipt_hash"],
            h(&receipt),
            "{what}: expected receipt_hash = H({receipt})"
        );
        prev = text(step, "receipt_hash");
        step_receipts.push(prev.clone());
    }

    let mut gate_receipts = Vec::new();
    for gate in run["gates"].as_array().expect("gates") {
        let what = format!("gate {}", gate["gate_id"]);
        if gate["status"] == "PENDING" {
            assert_eq!(
                gate["receipt_hash"],
                Value::Null,
                "{what}: expected no receipt while PENDING"
            );
            continue;
        }
        let receipt = receipt_of(gate, "gate", &GATE_RECEIPT_FIELDS);
        assert_eq!(
            gate["receipt_hash"],
            h(&receipt),
            "{what}: expected receipt_hash = H({receipt})"
        );
        gate_receipts.push(text(gate, "receipt_hash"));
    }

    let answer = expect(
        c.get(&format!("/workflows/runs/{run_id}/receipt")),
        200,
        "GET receipt",
    );
    let mut expected = receipt_of(
        &run,
        "workflow",
        &[
            "run_id",
            "workflow_id",
            "workflow_version",
            "status",
            "ended_at",
            "genesis_hash",
        ],
    );
    expected["step_receipts"] = json!(step_receipts);
    expected["gate_receipts"] = json!(gate_receipts);
    assert_eq!(
        answer["receipt"], expected,
        "expected the workflow receipt object recomputed from the run"
    );
    assert_eq!(
        answer["receipt_hash"],
        h(&answer["receipt"]),
        "expected receipt_hash = H(receipt)"
    );
    assert_eq!(
        answer["receipt_hash"], run["receipt_hash"],
        "expected GET /receipt to agree with run.receipt_hash"
    );
    run
}

/// Checks the decision of one attempt: its own hash, and what it binds (input, policy version).
fn verify_decision(c: &mut Client, step: &Value, decisions: &[Value], what: &str) {
    let decision = decisions
        .iter()
        .find(|d| d["decision_id"] == step["decision_id"])
        .unwrap_or_else(|| {
            panic!(
                "{what}: expected its decision {} among {decisions:?}",
                step["decision_id"]
            )
        });
    assert_eq!(
        decision["decision_hash"],
        h(&without(decision, "decision_hash")),
        "{what}: decision_hash"
    );
    assert_eq!(
        step["decision_hash"], decision["decision_hash"],
        "{what}: expected the attempt to carry decision_hash"
    );
    assert_eq!(
        decision["input_hash"], step["input_hash"],
        "{what}: expected the decision to bind the input"
    );
    assert_eq!(
        decision["step_id"], step["step_id"],
        "{what}: decision step_id"
    );
    assert_eq!(
        decision["attempt"], step["attempt"],
        "{what}: decision attempt"
    );
    let path = format!(
        "/policies/{}?version={}",
        text(decision, "policy_id"),
        decision["policy_version"]
    );
    let policy = expect(c.get(&path), 200, "GET the decision's policy version");
    assert_eq!(
        decision["policy_hash"], policy["policy_hash"],
        "{what}: expected the decision to name its policy's hash"
    );
    assert_eq!(
        decision["tier"], policy["tier"],
        "{what}: expected the decision to carry the policy's tier"
    );
}

/// Reads the whole audit log in pages of 7 and checks the chain and every evidence blob.
/// Returns all entries.
fn verify_audit_chain(c: &mut Client) -> Vec<Value> {
    let mut entries: Vec<Value> = Vec::new();
    let head = loop {
        let after = entries
            .last()
            .map_or(0, |e| e["seq"].as_u64().expect("seq"));
        let page = expect(
            c.get(&format!("/audit?after_seq={after}&limit=7")),
            200,
            "GET /audit page",
        );
        let rows = page["entries"]
            .as_array()
            .unwrap_or_else(|| panic!("expected entries in {page}"));
        assert!(
            rows.len() <= 7,
            "expected at most limit=7 entries per page, got {}",
            rows.len()
        );
        if rows.is_empty() {
            break page["head"].clone();
        }
        entries.extend(rows.iter().cloned());
    };
    assert!(!entries.is_empty(), "expected a non-empty audit log");

    let mut prev = "0".repeat(64);
    for (i, entry) in entries.iter().enumerate() {
        let what = format!("audit seq {}", entry["seq"]);
        assert_eq!(
            entry["seq"],
            i as u64 + 1,
            "{what}: expected contiguous seq from 1"
        );
        assert_eq!(
            entry["prev_hash"],
            prev.as_str(),
            "{what}: expected prev_hash to link to the previous entry"
        );
        assert_eq!(
            entry["entry_hash"],
            h(&without(entry, "entry_hash")),
            "{what}: expected entry_hash = H(entry)"
        );
        match &entry["evidence_pack_ref"] {
            Value::Null => assert_eq!(
                entry["payload_hash"],
                h(&Value::Null),
                "{what}: expected payload_hash H(null)"
            ),
            Value::String(reference) => {
                let hash = reference.strip_prefix("sha256:").unwrap_or_else(|| {
                    panic!("{what}: expected evidence_pack_ref sha256:<hash>, got {reference}")
                });
                assert_eq!(
                    entry["payload_hash"], hash,
                    "{what}: expected payload_hash to name the evidence"
                );
                verify_evidence(c, hash, &what);
            }
            other => panic!("{what}: expected evidence_pack_ref a string or null, got {other}"),
        }
        prev = text(entry, "entry_hash");
    }
    let last = entries.last().expect("entries");
    assert_eq!(
        head["seq"], last["seq"],
        "expected the head to be the last entry"
    );
    assert_eq!(
        head["entry_hash"], last["entry_hash"],
        "expected the head hash to be the last entry's"
    );
    entries
}

/// GET /evidence/{hash}: the bytes hash to `hash` and are the JCS form of themselves.
fn verify_evidence(c: &mut Client, hash: &str, what: &str) -> Value {
    let resp = c.get(&format!("/evidence/{hash}"));
    assert_eq!(
        resp.status, 200,
        "{what}: expected evidence {hash} to be served"
    );
    assert_eq!(
        sha256_hex(&resp.body),
        hash,
        "{what}: expected the evidence bytes to hash to {hash}"
    );
    let value: Value = serde_json::from_slice(&resp.body)
        .unwrap_or_else(|e| panic!("{what}: evidence is not JSON: {e}"));
    assert_eq!(
        jcs(&value).as_bytes(),
        &resp.body[..],
        "{what}: expected the evidence bytes in JCS form"
    );
    value
}

/// Ties the run's audit entries to its objects: logs = audit entries of the run, and each
/// entry's evidence is the object the DECISIONS list names (genesis, decision, receipts).
fn verify_log_bindings(c: &mut Client, run: &Value, all_entries: &[Value]) {
    let run_id = text(run, "run_id");
    let logs = run_logs(c, &run_id);
    let of_run: Vec<Value> = all_entries
        .iter()
        .filter(|e| e["run_id"] == run_id.as_str())
        .cloned()
        .collect();
    assert_eq!(
        logs, of_run,
        "expected GET /logs to be exactly the run's audit entries by seq"
    );

    let attempt_of = |subject: &str| -> Value {
        let (step_id, attempt) = subject
            .strip_prefix("step:")
            .and_then(|s| s.rsplit_once('#'))
            .unwrap_or_else(|| panic!("expected subject step:<id>#<n>, got {subject}"));
        let attempt: u64 = attempt.parse().expect("attempt number in subject");
        let steps = run["steps"].as_array().expect("steps");
        steps
            .iter()
            .find(|s| s["step_id"] == step_id && s["attempt"] == attempt)
            .cloned()
            .expect("attempt of subject")
    };
    let mut ends = Vec::new();
    let (mut evaluated, mut finished) = (0, 0);
    for entry in &logs {
        let what = format!("{} (seq {})", entry["action"], entry["seq"]);
        let subject = text(entry, "subject");
        let payload = &entry["payload_hash"];
        match entry["action"].as_str().unwrap_or_default() {
            "run.created" => assert_eq!(
                *payload, run["genesis_hash"],
                "{what}: expected the genesis object as evidence"
            ),
            "policy.evaluated" => {
                evaluated += 1;
                assert_eq!(
                    *payload,
                    attempt_of(&subject)["decision_hash"],
                    "{what}: expected the decision as evidence"
                );
            }
            "step.completed" | "step.failed" | "step.denied" | "step.rejected" => {
                finished += 1;
                assert_eq!(
                    *payload,
                    attempt_of(&subject)["receipt_hash"],
                    "{what}: expected the step receipt as evidence"
                );
            }
            "gate.resolved" | "gate.cancelled" | "gate.expired" => {
                let gate_id = subject
                    .strip_prefix("gate:")
                    .unwrap_or_else(|| panic!("{what}: subject gate:<id>"));
                let gate = run["gates"]
                    .as_array()
                    .expect("gates")
                    .iter()
                    .find(|g| g["gate_id"] == gate_id)
                    .cloned();
                let gate =
                    gate.unwrap_or_else(|| panic!("{what}: expected gate {gate_id} in the run"));
                assert_eq!(
                    *payload, gate["receipt_hash"],
                    "{what}: expected the gate receipt as evidence"
                );
            }
            "run.completed" | "run.failed" | "run.cancelled" => {
                assert_eq!(
                    subject,
                    format!("run:{run_id}"),
                    "{what}: expected subject run:<run_id>"
                );
                let receipt = verify_evidence(c, payload.as_str().expect("payload_hash"), &what);
                assert_eq!(
                    receipt["kind"], "workflow",
                    "{what}: expected a workflow receipt as evidence: {receipt}"
                );
                ends.push(payload.clone());
            }
            _ => {}
        }
    }
    let n_steps = run["steps"].as_array().expect("steps").len();
    let n_finished = run["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .filter(|s| !s["receipt_hash"].is_null())
        .count();
    assert_eq!(
        evaluated, n_steps,
        "expected one policy.evaluated entry per attempt"
    );
    assert_eq!(
        finished, n_finished,
        "expected one finishing entry per finished attempt"
    );
    assert_eq!(
        ends.last(),
        Some(&run["receipt_hash"]),
        "expected the last run-ending entry to carry run.receipt_hash"
    );
}

fn verify_everything(c: &mut Client, run_id: &str, sent: Sent) -> Vec<Value> {
    let run = verify_run(c, run_id, sent);
    let entries = verify_audit_chain(c);
    verify_log_bindings(c, &run, &entries);
    entries
}

#[test]
fn the_independent_jcs_agrees_with_the_rfc_8785_examples() {
    // RFC 8785 §3.2.2 (serialization of primitives).
    let input: Value = serde_json::from_str(
        r#"{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],
            "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/",
            "literals": [null, true, false]}"#,
    )
    .expect("RFC example parses");
    let expected = r#"{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}"#;
    assert_eq!(jcs(&input), expected, "expected the RFC 8785 §3.2.2 output");

    // RFC 8785 §3.2.3 (sorting by UTF-16 code units).
    let input: Value = serde_json::from_str(
        r#"{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh",
            "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control",
            "\u00f6": "Latin Small Letter O With Diaeresis"}"#,
    )
    .expect("RFC example parses");
    let canonical = jcs(&input);
    let values = [
        "Carriage Return",
        "One",
        "Control",
        "Latin Small Letter O With Diaeresis",
        "Euro Sign",
        "Emoji: Grinning Face",
        "Hebrew Letter Dalet With Dagesh",
    ];
    let positions: Vec<usize> = values
        .iter()
        .map(|v| {
            canonical
                .find(v)
                .unwrap_or_else(|| panic!("{v} in {canonical}"))
        })
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "expected the RFC 8785 §3.2.3 order, got {canonical}"
    );

    // RFC 8785 Appendix B (IEEE 754 bit patterns and their ECMAScript form).
    let table: [(u64, &str); 24] = [
        (0x0000000000000000, "0"),
        (0x8000000000000000, "0"),
        (0x0000000000000001, "5e-324"),
        (0x8000000000000001, "-5e-324"),
        (0x7fefffffffffffff, "1.7976931348623157e+308"),
        (0xffefffffffffffff, "-1.7976931348623157e+308"),
        (0x4340000000000000, "9007199254740992"),
        (0xc340000000000000, "-9007199254740992"),
        (0x4430000000000000, "295147905179352830000"),
        (0x44b52d02c7e14af5, "9.999999999999997e+22"),
        (0x44b52d02c7e14af6, "1e+23"),
        (0x44b52d02c7e14af7, "1.0000000000000001e+23"),
        (0x444b1ae4d6e2ef4e, "999999999999999700000"),
        (0x444b1ae4d6e2ef4f, "999999999999999900000"),
        (0x444b1ae4d6e2ef50, "1e+21"),
        (0x3eb0c6f7a0b5ed8c, "9.999999999999997e-7"),
        (0x3eb0c6f7a0b5ed8d, "0.000001"),
        (0x41b3de4355555553, "333333333.3333332"),
        (0x41b3de4355555554, "333333333.33333325"),
        (0x41b3de4355555555, "333333333.3333333"),
        (0x41b3de4355555556, "333333333.3333334"),
        (0x41b3de4355555557, "333333333.33333343"),
        (0xbecbf647612f3696, "-0.0000033333333333333333"),
        (0x43143ff3c1cb0959, "1424953923781206.2"),
    ];
    for (bits, expected) in table {
        assert_eq!(
            ecmascript_number(f64::from_bits(bits)),
            expected,
            "expected {bits:016x} to print as {expected}"
        );
    }
}

#[test]
fn policy_and_definition_hashes_recompute_from_the_documents() {
    let server = Server::start();
    let mut c = server.client();
    let policy = put_policy(&mut c, &pt004_policy());
    assert_eq!(
        policy["policy_hash"],
        expected_policy_hash(&pt004_policy(), 1),
        "PT-004 policy_hash"
    );
    let fetched = expect(c.get(&format!("/policies/{POLICY_ID}")), 200, "GET policy");
    assert_eq!(
        fetched["policy_hash"], policy["policy_hash"],
        "expected GET to answer the stored policy_hash"
    );

    let bare = json!({"policy_id": "bare", "tier": "T1",
        "rules": [{"rule_id": "r", "effect": "allow", "when": {"path": "actor", "exists": true}}]});
    let stored = put_policy(&mut c, &bare);
    assert_eq!(
        stored["policy_hash"],
        expected_policy_hash(&bare, 1),
        "policy_hash with default reason and effect"
    );

    let definition = put_definition(&mut c, &pt004_definition());
    assert_eq!(
        definition["definition_hash"],
        expected_definition_hash(&pt004_definition(), 1),
        "PT-004 definition_hash"
    );
    let fetched = expect(
        c.get(&format!("/workflows/definitions/{WORKFLOW_ID}")),
        200,
        "GET definition",
    );
    assert_eq!(
        fetched["definition_hash"], definition["definition_hash"],
        "expected GET to answer the stored hash"
    );
    assert_eq!(
        fetched["steps"],
        steps_with_defaults(&pt004_definition()),
        "expected steps with all four fields"
    );

    let explicit = json!({"workflow_id": "explicit", "policy_id": POLICY_ID, "steps": [
        {"step_id": "one", "step_type": "ACT", "max_attempts": 5, "policy_id": "bare"}]});
    let stored = put_definition(&mut c, &explicit);
    assert_eq!(
        stored["definition_hash"],
        expected_definition_hash(&explicit, 1),
        "definition_hash with explicit fields"
    );
    let again = put_definition(&mut c, &explicit);
    assert_eq!(
        again["definition_hash"],
        expected_definition_hash(&explicit, 2),
        "expected version 2 in the hashed object"
    );
}

#[test]
fn scenario_a_hashes_and_receipts_recompute_independently() {
    let (_server, mut c) = pt004_server();
    let run_id = run_scenario_a(&mut c);
    verify_everything(&mut c, &run_id, &|step_id, _| {
        (step_input(step_id, "low"), step_output(step_id))
    });
}

#[test]
fn scenario_b_hashes_and_receipts_recompute_independently_including_the_gate() {
    let (_server, mut c) = pt004_server();
    let run_id = run_scenario_b(&mut c);
    let run = verify_run(&mut c, &run_id, &|step_id, _| {
        (step_input(step_id, "high"), step_output(step_id))
    });
    assert_hash(&run["gates"][0]["receipt_hash"], "scenario B gate receipt");
    let entries = verify_audit_chain(&mut c);
    verify_log_bindings(&mut c, &run, &entries);
}

#[test]
fn scenario_c_hashes_and_receipts_recompute_independently_including_the_denial() {
    let (_server, mut c) = pt004_server();
    let run_id = run_scenario_c(&mut c);
    let entries = verify_everything(&mut c, &run_id, &|step_id, _| {
        (step_input(step_id, "critical"), step_output(step_id))
    });
    let refusals = entries
        .iter()
        .filter(|e| e["action"] == "request.refused" && e["run_id"] == run_id.as_str())
        .count();
    assert_eq!(
        refusals, 2,
        "expected the refused step and the refused retry in the chain"
    );
}

#[test]
fn a_cancelled_run_with_a_waiting_attempt_has_verifiable_receipts() {
    let (_server, mut c) = pt004_server();
    let (run_id, _gate_id) = flagged_run(&mut c, AGENT);
    expect(
        set_status(&mut c, &run_id, "CANCELLED", ADMIN),
        200,
        "cancel",
    );
    verify_everything(&mut c, &run_id, &|step_id, _| {
        (step_input(step_id, "high"), step_output(step_id))
    });
}

#[test]
fn a_retried_run_keeps_one_receipt_chain_across_both_ends() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "retry");
    start_step(&mut c, &run_id, "observe", &step_input("observe", "low"));
    let failed = expect(
        set_status(&mut c, &run_id, "FAILED", ADMIN),
        200,
        "declare a failure with an open attempt",
    );
    let first_receipt = text(&failed, "receipt_hash");
    expect(set_status(&mut c, &run_id, "RUNNING", ADMIN), 200, "retry");
    start_step(&mut c, &run_id, "observe", &step_input("observe", "low"));
    complete_step(&mut c, &run_id, "observe", &step_output("observe"));
    run_steps(&mut c, &run_id, &["decide", "gate", "act", "transform"]);

    let entries = verify_everything(&mut c, &run_id, &|step_id, _| {
        (step_input(step_id, "low"), step_output(step_id))
    });
    let run = get_run(&mut c, &run_id);
    let first = find_error_attempt(&run);
    assert_eq!(
        first["error"],
        json!({"code": "run_ended", "reason": "FAILED"}),
        "expected the open attempt ended by the failure"
    );

    let old = verify_evidence(&mut c, &first_receipt, "the first workflow receipt");
    assert_eq!(
        h(&old),
        first_receipt,
        "expected the old receipt's evidence to hash to it"
    );
    assert_eq!(
        old["status"], "FAILED",
        "expected the old receipt to record the FAILED end: {old}"
    );
    let new = expect(
        c.get(&format!("/workflows/runs/{run_id}/receipt")),
        200,
        "GET receipt",
    )["receipt"]
        .clone();
    let old_steps = old["step_receipts"].as_array().expect("old step_receipts");
    let new_steps = new["step_receipts"].as_array().expect("new step_receipts");
    assert!(
        new_steps.starts_with(old_steps),
        "expected the new receipt to extend the old step chain: {old} / {new}"
    );
    assert_eq!(
        new_steps.len(),
        6,
        "expected six finished attempts in the new receipt: {new}"
    );
    let old_end = entries
        .iter()
        .filter(|e| e["action"] == "run.failed" && e["payload_hash"] == first_receipt.as_str())
        .count();
    assert_eq!(
        old_end, 1,
        "expected the old receipt to stay findable as a run.failed entry"
    );
}

fn find_error_attempt(run: &Value) -> Value {
    let steps = run["steps"].as_array().expect("steps");
    steps
        .iter()
        .find(|s| s["status"] == "FAILED")
        .cloned()
        .unwrap_or_else(|| panic!("expected a FAILED attempt in {run}"))
}

#[test]
fn non_ascii_keys_and_number_forms_hash_as_rfc_8785_says() {
    let (_server, mut c) = pt004_server();
    let input_text = r#"{"z": 1, "é": 1.5, "€": 1e3, "ключ-шестнадцать": -0,
        "\ud83d\ude00": [0.000001, 1e-7, 123.456e2, 9007199254740991, -9007199254740991, 4.50],
        "\ufb33": {"b": true, "a": null}, "\r": "tab\there \u001f \"quoted\" back\\slash \/",
        "a": "\u2028 ünïcödé"}"#;
    let input: Value = serde_json::from_str(input_text).expect("test input parses");
    let canonical = "{\"\\r\":\"tab\\there \\u001f \\\"quoted\\\" back\\\\slash /\",\"a\":\"\u{2028} ünïcödé\",\"z\":1,\
        \"é\":1.5,\"ключ-шестнадцать\":0,\"€\":1000,\
        \"\u{1F600}\":[0.000001,1e-7,12345.6,9007199254740991,-9007199254740991,4.5],\"\u{FB33}\":{\"a\":null,\"b\":true}}";
    assert_eq!(
        jcs(&input),
        canonical,
        "expected the test's own JCS of the input"
    );

    let body =
        format!(r#"{{"workflow_id": "{WORKFLOW_ID}", "actor": "{AGENT}", "input": {input_text}}}"#);
    let resp = c.send(
        "POST",
        "/workflows/runs",
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let run = expect(
        resp,
        201,
        "POST a run with non-ASCII keys and varied number forms",
    );
    let expected = h(&input);
    assert_eq!(
        run["input_hash"],
        expected.as_str(),
        "expected run input_hash = H(JCS(input))"
    );
    let blob = c.get(&format!("/evidence/{expected}"));
    assert_eq!(blob.status, 200, "expected the input stored as evidence");
    assert_eq!(
        String::from_utf8_lossy(&blob.body),
        canonical,
        "expected the evidence bytes to be the JCS form"
    );
    // The answer shows every number as it is stored, hashed and later read (`4.50` as `4.5`,
    // `-0` as `0`, `1e3` as `1000`), not as it was sent.
    let stored: Value = serde_json::from_str(canonical).expect("the canonical text parses");
    assert_eq!(
        run["input"].to_string(),
        stored.to_string(),
        "expected the 201 answer's input in the stored form"
    );

    let run_id = text(&run, "run_id");
    let read = c.get(&format!("/workflows/runs/{run_id}")).json();
    assert_eq!(
        read["input"].to_string(),
        run["input"].to_string(),
        "expected GET to show the input as the 201 answer did"
    );
    let body = format!(r#"{{"step_id": "observe", "actor": "{AGENT}", "input": {input_text}}}"#);
    let path = format!("/workflows/runs/{run_id}/steps");
    let resp = c.send(
        "POST",
        &path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let step = expect(resp, 201, "POST a step with the same input");
    assert_eq!(
        step["step"]["input_hash"],
        expected.as_str(),
        "expected step input_hash = H(JCS(input))"
    );
    assert_eq!(
        step["decision"]["input_hash"],
        expected.as_str(),
        "expected decision input_hash = H(JCS(input))"
    );
}
