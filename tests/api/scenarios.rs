//! The three PT-004 scenarios over HTTP (A: all allow, B: flag → gate → approve → resume,
//! C: deny → fail closed), and the fixtures the other test modules share: the PT-004 documents,
//! small request helpers that assert what they expect, and an independent RFC 8785 JCS with
//! `h(x)`, written here from the RFC and not taken from the server's code.

use crate::support::{Client, Response, Server};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub(crate) const AGENT: &str = "agent-7";
pub(crate) const APPROVER: &str = "approver-1";
pub(crate) const ADMIN: &str = "admin";
pub(crate) const POLICY_ID: &str = "pt004_governance";
pub(crate) const WORKFLOW_ID: &str = "pt004_execution_spine";
/// The PT-004 steps in definition order: (step_id, step_type).
pub(crate) const PT004_STEPS: [(&str, &str); 5] = [
    ("observe", "OBSERVE"),
    ("decide", "DECIDE"),
    ("gate", "GATE"),
    ("act", "ACT"),
    ("transform", "TRANSFORM"),
];
pub(crate) const DENY_REASON: &str = "critical-risk actions are forbidden";
pub(crate) const FLAG_REASON: &str = "high-risk actions need a human";
pub(crate) const ALLOW_REASON: &str = "registered active agent";

// ---------------------------------------------------------------------------------------------
// The PT-004 documents.

/// The contract's example policy, exactly, with tier T2 (no `actor`: that is added when sent).
pub(crate) fn pt004_policy() -> Value {
    json!({
        "policy_id": POLICY_ID, "tier": "T2", "default_effect": "deny",
        "rules": [
            {"rule_id": "deny-critical", "effect": "deny", "reason": DENY_REASON,
             "when": {"path": "input.risk", "eq": "critical"}},
            {"rule_id": "flag-high", "effect": "flag", "reason": FLAG_REASON,
             "when": {"any": [{"path": "input.risk", "eq": "high"},
                              {"path": "input.amount", "gt": 10000}]}},
            {"rule_id": "allow-registered", "effect": "allow", "reason": ALLOW_REASON,
             "when": {"path": "agent.status", "eq": "active"}}
        ]
    })
}

/// The PT-004 workflow; steps name only id and type, so fedcore fills in the defaults
/// (`max_attempts` 3, `policy_id` null).
pub(crate) fn pt004_definition() -> Value {
    let steps: Vec<Value> = PT004_STEPS
        .iter()
        .map(|(id, ty)| json!({"step_id": id, "step_type": ty}))
        .collect();
    json!({"workflow_id": WORKFLOW_ID, "policy_id": POLICY_ID, "steps": steps})
}

pub(crate) fn agent_7() -> Value {
    json!({"agent_id": AGENT, "status": "active", "capabilities": ["observe", "deploy"], "tier": "T2"})
}

/// The input of a PT-004 run.
pub(crate) fn run_input(scenario: &str) -> Value {
    json!({"ticket": "PT-004", "scenario": scenario})
}

/// The input the scenarios send with a step; `decide` carries the scenario's risk.
pub(crate) fn step_input(step_id: &str, decide_risk: &str) -> Value {
    let risk = if step_id == "decide" {
        decide_risk
    } else {
        "low"
    };
    json!({"risk": risk, "step": step_id})
}

/// The output the scenarios report when a step completes.
pub(crate) fn step_output(step_id: &str) -> Value {
    json!({"step": step_id, "ok": true, "items": [1, 2, 3]})
}

/// `doc` with `"actor": actor` added (every PUT, POST and PATCH body accepts it).
pub(crate) fn with_actor(doc: &Value, actor: &str) -> Value {
    let mut doc = doc.clone();
    doc["actor"] = json!(actor);
    doc
}

// ---------------------------------------------------------------------------------------------
// Request helpers. Each asserts the status it expects and says so when it fails.

/// Asserts `resp.status == status` and returns the JSON body.
pub(crate) fn expect(resp: Response, status: u16, what: &str) -> Value {
    assert_eq!(
        resp.status,
        status,
        "{what}: expected HTTP {status}, got {} with body {}",
        resp.status,
        String::from_utf8_lossy(&resp.body)
    );
    resp.json()
}

/// Asserts a contract error `{"error":{"code","message",…}}` with this status and code, and
/// returns the `error` object.
pub(crate) fn expect_error(resp: Response, status: u16, code: &str, what: &str) -> Value {
    let body = expect(resp, status, what);
    assert_error_shape(&body, what);
    assert_eq!(
        body["error"]["code"], code,
        "{what}: expected error code {code:?}, body {body}"
    );
    body["error"].clone()
}

/// Asserts that `body` is `{"error":{"code":"…","message":"…"}}` with optional object `details`.
pub(crate) fn assert_error_shape(body: &Value, what: &str) {
    if let Some(problem) = error_shape_problem(body) {
        panic!("{what}: {problem}");
    }
}

/// What is wrong with an error body, if anything.
pub(crate) fn error_shape_problem(body: &Value) -> Option<String> {
    let only_error = body
        .as_object()
        .is_some_and(|top| top.len() == 1 && top.contains_key("error"));
    let error = &body["error"];
    if !only_error {
        Some(format!(
            "expected {{\"error\":{{…}}}} as the whole body, got {body}"
        ))
    } else if !error["code"].is_string() {
        Some(format!("expected error.code to be a string, got {body}"))
    } else if error["message"].as_str().is_none_or(str::is_empty) {
        Some(format!("expected a non-empty error.message, got {body}"))
    } else if !error
        .get("details")
        .is_none_or(|d| d.is_object() || d.is_null())
    {
        Some(format!(
            "expected error.details to be an object when present, got {body}"
        ))
    } else {
        None
    }
}

/// Asserts `v` is a 64-char lowercase hex hash.
pub(crate) fn assert_hash(v: &Value, what: &str) {
    let ok = v.as_str().is_some_and(|s| {
        s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    assert!(ok, "{what}: expected a 64-char lowercase hex hash, got {v}");
}

/// The string value of `v[key]`, or a panic that says which one was missing.
pub(crate) fn text(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("expected a string at {key:?} in {v}"))
        .to_string()
}

pub(crate) fn put_policy(c: &mut Client, doc: &Value) -> Value {
    let id = text(doc, "policy_id");
    expect(
        c.put(&format!("/policies/{id}"), &with_actor(doc, ADMIN)),
        201,
        "PUT policy",
    )
}

pub(crate) fn put_definition(c: &mut Client, doc: &Value) -> Value {
    let id = text(doc, "workflow_id");
    let path = format!("/workflows/definitions/{id}");
    expect(c.put(&path, &with_actor(doc, ADMIN)), 201, "PUT definition")
}

pub(crate) fn put_agent(c: &mut Client, doc: &Value) -> Value {
    let id = text(doc, "agent_id");
    expect(
        c.put(&format!("/registry/agents/{id}"), &with_actor(doc, ADMIN)),
        200,
        "PUT agent",
    )
}

/// Registers agent-7 (active), the PT-004 policy and the PT-004 workflow.
pub(crate) fn setup_pt004(c: &mut Client) {
    put_agent(c, &agent_7());
    let policy = put_policy(c, &pt004_policy());
    assert_eq!(
        policy["version"], 1,
        "expected the first policy PUT to store version 1: {policy}"
    );
    let definition = put_definition(c, &pt004_definition());
    assert_eq!(
        definition["version"], 1,
        "expected the first definition PUT to store version 1: {definition}"
    );
}

/// A fresh server with the PT-004 agent, policy and workflow registered, and a client.
pub(crate) fn pt004_server() -> (Server, Client) {
    let server = Server::start();
    let mut c = server.client();
    setup_pt004(&mut c);
    (server, c)
}

/// Creates a run and returns it (expects 201 and status PENDING).
pub(crate) fn create_run(c: &mut Client, workflow_id: &str, input: &Value, actor: &str) -> Value {
    let body = json!({"workflow_id": workflow_id, "input": input, "actor": actor});
    let run = expect(
        c.post("/workflows/runs", &body),
        201,
        "POST /workflows/runs",
    );
    assert_eq!(
        run["status"], "PENDING",
        "expected a new run to be PENDING: {run}"
    );
    run
}

/// Creates a PT-004 run as agent-7 and returns its run_id.
pub(crate) fn new_pt004_run(c: &mut Client, scenario: &str) -> String {
    text(
        &create_run(c, WORKFLOW_ID, &run_input(scenario), AGENT),
        "run_id",
    )
}

pub(crate) fn get_run(c: &mut Client, run_id: &str) -> Value {
    expect(c.get(&format!("/workflows/runs/{run_id}")), 200, "GET run")
}

pub(crate) fn request_step(
    c: &mut Client,
    run_id: &str,
    step_id: &str,
    input: &Value,
    actor: &str,
) -> Response {
    let body = json!({"step_id": step_id, "input": input, "actor": actor});
    c.post(&format!("/workflows/runs/{run_id}/steps"), &body)
}

/// Requests a step that the policy allows; expects 201, decision allow, attempt STARTED.
/// Returns `{"step","decision","run","gate"}`.
pub(crate) fn start_step(c: &mut Client, run_id: &str, step_id: &str, input: &Value) -> Value {
    let what = format!("POST step {step_id}");
    let body = expect(request_step(c, run_id, step_id, input, AGENT), 201, &what);
    assert_eq!(
        body["decision"]["effect"], "allow",
        "{what}: expected decision allow: {body}"
    );
    assert_eq!(
        body["step"]["status"], "STARTED",
        "{what}: expected the attempt STARTED: {body}"
    );
    assert_eq!(
        body["gate"],
        Value::Null,
        "{what}: expected no gate on allow: {body}"
    );
    body
}

/// Finishes the open attempt of `step_id` as COMPLETED; returns `{"step","run"}`.
pub(crate) fn complete_step(c: &mut Client, run_id: &str, step_id: &str, output: &Value) -> Value {
    let body = json!({"status": "COMPLETED", "output": output, "actor": AGENT});
    let resp = c.patch(&format!("/workflows/runs/{run_id}/steps/{step_id}"), &body);
    let done = expect(resp, 200, &format!("PATCH step {step_id} COMPLETED"));
    assert_eq!(
        done["step"]["status"], "COMPLETED",
        "expected step {step_id} COMPLETED: {done}"
    );
    done
}

/// Finishes the open attempt of `step_id` as FAILED; returns `{"step","run"}`.
pub(crate) fn fail_step(c: &mut Client, run_id: &str, step_id: &str, error: &Value) -> Value {
    let body = json!({"status": "FAILED", "error": error, "actor": AGENT});
    let resp = c.patch(&format!("/workflows/runs/{run_id}/steps/{step_id}"), &body);
    let done = expect(resp, 200, &format!("PATCH step {step_id} FAILED"));
    assert_eq!(
        done["step"]["status"], "FAILED",
        "expected step {step_id} FAILED: {done}"
    );
    done
}

pub(crate) fn set_status(c: &mut Client, run_id: &str, status: &str, actor: &str) -> Response {
    let body = json!({"status": status, "reason": format!("test sets {status}"), "actor": actor});
    c.patch(&format!("/workflows/runs/{run_id}/status"), &body)
}

pub(crate) fn resolve_gate(
    c: &mut Client,
    run_id: &str,
    gate_id: &str,
    decision: &str,
    actor: &str,
) -> Response {
    let body = json!({"decision": decision, "comment": format!("{actor} says {decision}"), "actor": actor});
    c.patch(&format!("/workflows/runs/{run_id}/gates/{gate_id}"), &body)
}

/// The audit entries of one run, by seq (`GET …/logs`).
pub(crate) fn run_logs(c: &mut Client, run_id: &str) -> Vec<Value> {
    let body = expect(
        c.get(&format!("/workflows/runs/{run_id}/logs")),
        200,
        "GET logs",
    );
    body["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("expected entries in {body}"))
        .clone()
}

/// The audit head `(seq, entry_hash)` from `GET /audit`.
pub(crate) fn audit_head(c: &mut Client) -> (u64, String) {
    let body = expect(c.get("/audit?after_seq=0&limit=1"), 200, "GET /audit");
    let seq = body["head"]["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected head.seq in {body}"));
    (seq, text(&body["head"], "entry_hash"))
}

/// The audit entries after `seq` (at most 1000).
pub(crate) fn audit_after(c: &mut Client, seq: u64) -> Vec<Value> {
    let body = expect(
        c.get(&format!("/audit?after_seq={seq}&limit=1000")),
        200,
        "GET /audit",
    );
    body["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("expected entries in {body}"))
        .clone()
}

/// Asserts that exactly one audit entry was added after `seq`: a `request.refused` entry of
/// `run_id` by `actor`.
pub(crate) fn assert_one_refusal_since(
    c: &mut Client,
    seq: u64,
    run_id: &str,
    actor: &str,
    what: &str,
) {
    let added = audit_after(c, seq);
    assert_eq!(
        added.len(),
        1,
        "{what}: expected exactly one new audit entry (request.refused), got {added:?}"
    );
    let entry = &added[0];
    assert_eq!(
        entry["action"], "request.refused",
        "{what}: expected action request.refused: {entry}"
    );
    assert_eq!(
        entry["run_id"], run_id,
        "{what}: expected the refusal to name the run: {entry}"
    );
    assert_eq!(
        entry["actor"], actor,
        "{what}: expected the refusal to name the actor: {entry}"
    );
}

/// Creates a PT-004 run by `created_by`, completes `observe`, and requests `decide` as agent-7
/// with high risk, so the run is PAUSED with one PENDING gate. Returns (run_id, gate_id).
pub(crate) fn flagged_run(c: &mut Client, created_by: &str) -> (String, String) {
    let run_id = text(
        &create_run(c, WORKFLOW_ID, &run_input("B"), created_by),
        "run_id",
    );
    start_step(c, &run_id, "observe", &step_input("observe", "high"));
    complete_step(c, &run_id, "observe", &step_output("observe"));
    let resp = request_step(c, &run_id, "decide", &step_input("decide", "high"), AGENT);
    let body = expect(resp, 201, "POST step decide (high risk)");
    assert_eq!(
        body["decision"]["effect"], "flag",
        "expected a high-risk step to be flagged: {body}"
    );
    assert_eq!(
        body["run"]["status"], "PAUSED",
        "expected a flag to pause the run: {body}"
    );
    (run_id, text(&body["gate"], "gate_id"))
}

/// Requests and completes each of `steps` with the scenario inputs and outputs.
pub(crate) fn run_steps(c: &mut Client, run_id: &str, steps: &[&str]) -> Value {
    let mut last = Value::Null;
    for step_id in steps {
        start_step(c, run_id, step_id, &step_input(step_id, "low"));
        last = complete_step(c, run_id, step_id, &step_output(step_id));
    }
    last
}

// ---------------------------------------------------------------------------------------------
// The independent JCS (RFC 8785) and H(x).

/// `H(x)`: lowercase hex SHA-256 of the JCS bytes of `value`.
pub(crate) fn h(value: &Value) -> String {
    sha256_hex(jcs(value).as_bytes())
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// RFC 8785 canonical JSON text of `value`.
pub(crate) fn jcs(value: &Value) -> String {
    let mut out = String::new();
    write_jcs(value, &mut out);
    out
}

fn write_jcs(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => {
            let x = n
                .as_f64()
                .unwrap_or_else(|| panic!("number {n} is not a double"));
            out.push_str(&ecmascript_number(x));
        }
        Value::String(s) => write_jcs_string(s, out),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_jcs(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            // RFC 8785 §3.2.3: sort property names by their UTF-16 code units.
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_by(|a, b| a.encode_utf16().cmp(b.encode_utf16()));
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_jcs_string(key, out);
                out.push(':');
                write_jcs(&map[key.as_str()], out);
            }
            out.push('}');
        }
    }
}

/// A string as ECMAScript's JSON.stringify writes it (RFC 8785 §3.2.2.2).
fn write_jcs_string(s: &str, out: &mut String) {
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// ECMAScript `Number::toString` of a finite double (RFC 8785 §3.2.2.3).
pub(crate) fn ecmascript_number(x: f64) -> String {
    assert!(x.is_finite(), "JCS has no form for {x}");
    if x == 0.0 {
        return "0".to_string(); // Also minus zero.
    }
    let sign = if x < 0.0 { "-" } else { "" };
    // Rust's `{:e}` writes the shortest digits that round-trip, closest to the value: the same
    // digits ECMAScript picks. Only the layout differs.
    let (digits, exponent) = scientific_digits(&format!("{:e}", x.abs()));
    let digits = break_tie_to_even(x.abs(), digits, exponent);
    let k = digits.len() as i32;
    let n = exponent + 1;
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let e = if e < 0 {
            format!("-{}", -e)
        } else {
            format!("+{e}")
        };
        if k == 1 {
            format!("{digits}e{e}")
        } else {
            format!("{}.{}e{e}", &digits[..1], &digits[1..])
        }
    };
    format!("{sign}{body}")
}

/// Splits Rust's `{:e}` output (`d.ddde±x`) into its digits and decimal exponent.
fn scientific_digits(sci: &str) -> (String, i32) {
    let (mantissa, exponent) = sci.split_once('e').expect("exponent in {:e} output");
    let digits = mantissa.chars().filter(|c| *c != '.').collect();
    (digits, exponent.parse().expect("integer exponent"))
}

/// When the double lies exactly halfway between two shortest digit strings, ECMAScript picks
/// the even one (RFC 8785 Appendix B: 1424953923781206.25 prints as …206.2); Rust rounds up.
fn break_tie_to_even(x: f64, digits: String, exponent: i32) -> String {
    let k = digits.len();
    if !digits.ends_with(['1', '3', '5', '7', '9']) || k > 17 {
        return digits;
    }
    // Rust prints the exact decimal expansion when given a precision; 800 digits cover any double.
    let (exact, exact_exponent) = scientific_digits(&format!("{:.800e}", x));
    let exact = exact.trim_end_matches('0');
    if exact_exponent != exponent || exact.len() != k + 1 || !exact.ends_with('5') {
        return digits;
    }
    let lower = &exact[..k];
    let upper = (lower.parse::<u64>().expect("at most 17 digits") + 1).to_string();
    let other = if digits == lower {
        upper
    } else {
        lower.to_string()
    };
    let round_trips = format!("0.{other}e{}", exponent + 1).parse::<f64>() == Ok(x);
    if other.len() == k && round_trips {
        other
    } else {
        digits
    }
}

// ---------------------------------------------------------------------------------------------
// The scenarios, shared with receipts.rs, which recomputes their hashes.

/// Scenario A: every decision allow, no gate, run COMPLETED. Returns the run_id.
pub(crate) fn run_scenario_a(c: &mut Client) -> String {
    let run_id = new_pt004_run(c, "A");
    for (index, (step_id, step_type)) in PT004_STEPS.iter().enumerate() {
        let what = format!("scenario A, step {step_id}");
        let body = start_step(c, &run_id, step_id, &step_input(step_id, "low"));
        let (step, decision) = (&body["step"], &body["decision"]);
        assert_eq!(
            step["step_type"], *step_type,
            "{what}: expected step_type {step_type}: {step}"
        );
        assert_eq!(
            step["step_index"], index,
            "{what}: expected step_index {index}: {step}"
        );
        assert_eq!(step["attempt"], 1, "{what}: expected attempt 1: {step}");
        assert_eq!(
            step["actor"], AGENT,
            "{what}: expected the step actor {AGENT}: {step}"
        );
        assert_eq!(
            decision["rules_triggered"],
            json!(["allow-registered"]),
            "{what}: {decision}"
        );
        assert_eq!(
            decision["reason"], ALLOW_REASON,
            "{what}: expected the allow reason: {decision}"
        );
        assert_eq!(decision["policy_id"], POLICY_ID, "{what}: {decision}");
        assert_eq!(
            decision["tier"], "T2",
            "{what}: expected tier T2: {decision}"
        );
        assert_eq!(
            body["run"]["status"], "RUNNING",
            "{what}: expected the run RUNNING: {body}"
        );
        let done = complete_step(c, &run_id, step_id, &step_output(step_id));
        assert_hash(
            &done["step"]["output_hash"],
            &format!("{what}: output_hash"),
        );
        assert_hash(
            &done["step"]["receipt_hash"],
            &format!("{what}: step receipt_hash"),
        );
    }
    let run = get_run(c, &run_id);
    assert_eq!(
        run["status"], "COMPLETED",
        "scenario A: expected the run COMPLETED: {run}"
    );
    assert_hash(&run["receipt_hash"], "scenario A: run receipt_hash");
    assert!(
        run["ended_at"].is_string(),
        "scenario A: expected ended_at set: {run}"
    );
    assert_eq!(
        run["failure"],
        Value::Null,
        "scenario A: expected no failure: {run}"
    );
    assert_eq!(
        run["gates"],
        json!([]),
        "scenario A: expected no gate: {run}"
    );
    let decisions = run["decisions"].as_array().expect("decisions");
    assert_eq!(
        decisions.len(),
        5,
        "scenario A: expected five decisions: {run}"
    );
    assert!(
        decisions.iter().all(|d| d["effect"] == "allow"),
        "scenario A: expected every decision allow: {run}"
    );
    run_id
}

/// Scenario B: decide is flagged, the run pauses on a gate that approver-1 approves; resume;
/// the rest completes. Returns the run_id.
pub(crate) fn run_scenario_b(c: &mut Client) -> String {
    let run_id = new_pt004_run(c, "B");
    run_steps(c, &run_id, &["observe"]);

    let resp = request_step(c, &run_id, "decide", &step_input("decide", "high"), AGENT);
    let body = expect(
        resp,
        201,
        "scenario B: a flagged step request is still recorded",
    );
    let (step, decision, gate) = (&body["step"], &body["decision"], &body["gate"]);
    assert_eq!(
        decision["effect"], "flag",
        "scenario B: expected decision flag: {decision}"
    );
    assert_eq!(
        decision["rules_triggered"],
        json!(["flag-high", "allow-registered"]),
        "scenario B: {decision}"
    );
    assert_eq!(
        decision["reason"], FLAG_REASON,
        "scenario B: expected the flag reason: {decision}"
    );
    assert_eq!(
        step["status"], "AWAITING_APPROVAL",
        "scenario B: expected the attempt to await approval: {step}"
    );
    assert_eq!(
        body["run"]["status"], "PAUSED",
        "scenario B: expected the run PAUSED: {body}"
    );
    assert_eq!(
        gate["status"], "PENDING",
        "scenario B: expected a PENDING gate: {gate}"
    );
    assert_eq!(
        gate["requested_by"], AGENT,
        "scenario B: expected the gate requested by the step's actor: {gate}"
    );
    assert_eq!(
        gate["step_id"], "decide",
        "scenario B: expected the gate bound to decide: {gate}"
    );
    assert_eq!(
        gate["attempt"], 1,
        "scenario B: expected the gate bound to attempt 1: {gate}"
    );
    assert_eq!(
        gate["decision_id"], decision["decision_id"],
        "scenario B: expected the gate to name the decision"
    );
    assert_eq!(
        gate["receipt_hash"],
        Value::Null,
        "scenario B: expected no receipt on a PENDING gate: {gate}"
    );
    let gate_id = text(gate, "gate_id");

    let resolved = expect(
        resolve_gate(c, &run_id, &gate_id, "approve", APPROVER),
        200,
        "scenario B: approve",
    );
    assert_eq!(
        resolved["gate"]["status"], "APPROVED",
        "scenario B: expected the gate APPROVED: {resolved}"
    );
    assert_eq!(
        resolved["gate"]["resolved_by"], APPROVER,
        "scenario B: expected resolved_by approver-1: {resolved}"
    );
    assert_hash(
        &resolved["gate"]["receipt_hash"],
        "scenario B: gate receipt_hash",
    );
    assert_eq!(
        resolved["run"]["status"], "PAUSED",
        "scenario B: expected the run still PAUSED after approval: {resolved}"
    );

    let run = expect(
        set_status(c, &run_id, "RUNNING", ADMIN),
        200,
        "scenario B: resume",
    );
    assert_eq!(
        run["status"], "RUNNING",
        "scenario B: expected the resumed run RUNNING: {run}"
    );
    let run = get_run(c, &run_id);
    let decide = find_attempt(&run, "decide", 1);
    assert_eq!(
        decide["status"], "STARTED",
        "scenario B: expected resume to start the approved attempt: {decide}"
    );

    complete_step(c, &run_id, "decide", &step_output("decide"));
    run_steps(c, &run_id, &["gate", "act", "transform"]);
    let run = get_run(c, &run_id);
    assert_eq!(
        run["status"], "COMPLETED",
        "scenario B: expected the run COMPLETED: {run}"
    );
    assert_hash(&run["receipt_hash"], "scenario B: run receipt_hash");
    assert!(
        run["ended_at"].is_string(),
        "scenario B: expected ended_at set: {run}"
    );
    assert_eq!(
        run["gates"].as_array().map(Vec::len),
        Some(1),
        "scenario B: expected one gate: {run}"
    );
    run_id
}

/// Scenario C: decide is denied, the run fails closed, a further step and a retry are refused,
/// and the logs show the denial. Returns the run_id.
pub(crate) fn run_scenario_c(c: &mut Client) -> String {
    let run_id = new_pt004_run(c, "C");
    run_steps(c, &run_id, &["observe"]);

    let resp = request_step(
        c,
        &run_id,
        "decide",
        &step_input("decide", "critical"),
        AGENT,
    );
    let body = expect(
        resp,
        201,
        "scenario C: a denied step request is still recorded",
    );
    let (step, decision, run) = (&body["step"], &body["decision"], &body["run"]);
    assert_eq!(
        decision["effect"], "deny",
        "scenario C: expected decision deny: {decision}"
    );
    assert_eq!(
        decision["rules_triggered"],
        json!(["deny-critical", "allow-registered"]),
        "scenario C: {decision}"
    );
    assert_eq!(
        decision["reason"], DENY_REASON,
        "scenario C: expected the deny reason: {decision}"
    );
    assert_eq!(
        step["status"], "DENIED",
        "scenario C: expected the attempt DENIED: {step}"
    );
    assert_eq!(
        body["gate"],
        Value::Null,
        "scenario C: expected no gate on deny: {body}"
    );
    assert_eq!(
        run["status"], "FAILED",
        "scenario C: expected the run FAILED: {run}"
    );
    assert_eq!(
        run["failure"]["code"], "policy_denied",
        "scenario C: expected failure policy_denied: {run}"
    );
    assert_eq!(
        run["failure"]["step_id"], "decide",
        "scenario C: expected the failure to name decide: {run}"
    );
    assert_hash(&run["receipt_hash"], "scenario C: run receipt_hash");

    let resp = request_step(c, &run_id, "gate", &step_input("gate", "low"), AGENT);
    expect_error(
        resp,
        409,
        "run_not_active",
        "scenario C: a step after a deny",
    );

    let logs = run_logs(c, &run_id);
    let denial = logs
        .iter()
        .find(|e| e["action"] == "policy.evaluated" && e["decision"] == "deny");
    let denial = denial.unwrap_or_else(|| {
        panic!("scenario C: expected a policy.evaluated deny entry in {logs:?}")
    });
    assert_eq!(
        denial["reason"], DENY_REASON,
        "scenario C: expected the log to show the denial reason: {denial}"
    );

    expect_error(
        set_status(c, &run_id, "RUNNING", ADMIN),
        409,
        "invalid_transition",
        "scenario C: retry after deny",
    );
    let after = get_run(c, &run_id);
    assert_eq!(
        after["status"], "FAILED",
        "scenario C: expected the run to stay FAILED: {after}"
    );
    assert_eq!(
        after["receipt_hash"], run["receipt_hash"],
        "scenario C: expected the receipt unchanged"
    );
    run_id
}

/// The attempt `attempt` of `step_id` in a run fetched with GET.
pub(crate) fn find_attempt<'a>(run: &'a Value, step_id: &str, attempt: u64) -> &'a Value {
    let steps = run["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("expected steps in {run}"));
    steps
        .iter()
        .find(|s| s["step_id"] == step_id && s["attempt"] == attempt)
        .unwrap_or_else(|| panic!("expected attempt {attempt} of {step_id} in {run}"))
}

#[test]
fn scenario_a_allows_every_step_and_completes_without_a_gate() {
    let (_server, mut c) = pt004_server();
    run_scenario_a(&mut c);
}

#[test]
fn scenario_b_pauses_on_a_flag_until_a_second_actor_approves_and_then_completes() {
    let (_server, mut c) = pt004_server();
    run_scenario_b(&mut c);
}

#[test]
fn scenario_c_fails_closed_on_a_deny_and_refuses_further_steps_and_retry() {
    let (_server, mut c) = pt004_server();
    run_scenario_c(&mut c);
}
