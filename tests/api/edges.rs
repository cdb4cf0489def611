//! Edge cases of the lifecycle and of input that reviews found: each would otherwise answer
//! wrongly, lose information, or let a client break verification.

use crate::scenarios::{
    complete_step, expect, expect_error, new_pt004_run, pt004_server, resolve_gate, run_logs,
    set_status, start_step, step_input, step_output, ADMIN, AGENT, APPROVER, WORKFLOW_ID,
};
use crate::support::{run_cli, Client, Server};
use serde_json::{json, Value};

/// Stops the server cleanly and checks that its database verifies.
fn stop_and_verify(server: &mut Server) {
    assert_eq!(server.terminate(), Some(0));
    let (code, stdout, _) = run_cli(&["verify", "--db", server.db.to_str().unwrap()]);
    assert_eq!(code, 0, "expected the database to verify: {stdout}");
}

/// A PT-004 run of agent-7 with `observe` started, and the run as it then reads.
fn run_with_observe_started(c: &mut Client) -> (String, Value) {
    let run_id = new_pt004_run(c, "edge");
    start_step(c, &run_id, "observe", &step_input("observe", "low"));
    let before = c.get(&format!("/workflows/runs/{run_id}")).json();
    (run_id, before)
}

/// The run reads as `before` did, and its log holds `count` refusals, all of `actor`.
fn assert_refused_and_unchanged(
    c: &mut Client,
    run_id: &str,
    before: &Value,
    actor: &str,
    count: usize,
) {
    let after = c.get(&format!("/workflows/runs/{run_id}")).json();
    assert_eq!(&after, before, "expected the run unchanged by the refusals");
    let refusals: Vec<Value> = run_logs(c, run_id)
        .into_iter()
        .filter(|e| e["action"] == "request.refused")
        .collect();
    assert_eq!(
        refusals.len(),
        count,
        "expected the refusals logged: {refusals:?}"
    );
    assert!(refusals.iter().all(|e| e["actor"] == actor), "{refusals:?}");
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!(1), |inner, _| json!([inner]))
}

#[test]
fn a_body_nested_too_deeply_is_refused_and_verification_stays_intact() {
    let (mut server, mut c) = pt004_server();
    let deep = json!({"workflow_id": WORKFLOW_ID, "input": nested(126), "actor": AGENT});
    let refused = c.post("/workflows/runs", &deep);
    assert_eq!(
        refused.status, 400,
        "expected a 400 for 126 levels of nesting"
    );
    assert_eq!(refused.error_code(), "too_deep");

    // The deepest body accepted still leaves room for the engine's own wrapping of it.
    let run = expect(
        c.post(
            "/workflows/runs",
            &json!({"workflow_id": WORKFLOW_ID, "input": nested(62), "actor": AGENT}),
        ),
        201,
        "a run with deeply nested input",
    );
    let run_id = run["run_id"].as_str().unwrap().to_string();
    let body =
        json!({"step_id": "observe", "input": {"risk": "low", "deep": nested(60)}, "actor": AGENT});
    expect(
        c.post(&format!("/workflows/runs/{run_id}/steps"), &body),
        201,
        "a deep step input",
    );
    let refused = json!({"step_id": "act", "input": nested(62), "actor": AGENT});
    assert_eq!(
        c.post(&format!("/workflows/runs/{run_id}/steps"), &refused)
            .status,
        409
    );
    stop_and_verify(&mut server);
}

#[test]
fn a_pending_run_cannot_be_set_running_by_hand() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "edge");
    let refused = expect_error(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        409,
        "invalid_transition",
        "PENDING -> RUNNING",
    );
    assert_eq!(refused["details"]["current_status"], "PENDING");
    assert_eq!(
        refused["details"]["allowed"],
        json!(["FAILED", "CANCELLED"]),
        "{refused}"
    );
    let logs = run_logs(&mut c, &run_id);
    assert!(
        logs.iter().any(|e| e["action"] == "request.refused"),
        "expected the refusal recorded"
    );
    let run = c.get(&format!("/workflows/runs/{run_id}")).json();
    assert_eq!(run["status"], "PENDING");
}

#[test]
fn a_cancel_keeps_the_reason_it_was_given() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "edge");
    let body = json!({"status": "CANCELLED", "reason": "operator stop: ticket 42", "actor": ADMIN});
    expect(
        c.patch(&format!("/workflows/runs/{run_id}/status"), &body),
        200,
        "cancel",
    );
    let logs = run_logs(&mut c, &run_id);
    let cancelled = logs
        .iter()
        .find(|e| e["action"] == "run.cancelled")
        .expect("run.cancelled");
    assert_eq!(cancelled["reason"], "operator stop: ticket 42");
}

#[test]
fn rejecting_a_gate_on_a_started_attempt_fails_that_attempt_with_run_ended() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "edge");
    start_step(&mut c, &run_id, "observe", &step_input("observe", "low"));
    let gate = expect(
        c.post(
            &format!("/workflows/runs/{run_id}/gates"),
            &json!({"step_id": "observe", "reason": "look first", "actor": AGENT}),
        ),
        201,
        "explicit gate",
    );
    let gate_id = gate["gate_id"].as_str().unwrap();
    let done = expect(
        resolve_gate(&mut c, &run_id, gate_id, "reject", APPROVER),
        200,
        "reject",
    );
    assert_eq!(done["run"]["failure"]["code"], "gate_rejected");
    let run = c.get(&format!("/workflows/runs/{run_id}")).json();
    let attempt = &run["steps"][0];
    assert_eq!(
        attempt["status"], "FAILED",
        "contract section 3: a started attempt fails when its run ends: {run}"
    );
    assert_eq!(
        attempt["error"],
        json!({"code": "run_ended", "reason": "FAILED"})
    );
}

#[test]
fn a_resume_refused_by_a_pending_gate_names_what_the_run_may_still_do() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "edge");
    start_step(&mut c, &run_id, "observe", &step_input("observe", "low"));
    complete_step(&mut c, &run_id, "observe", &step_output("observe"));
    let flagged = c.post(
        &format!("/workflows/runs/{run_id}/steps"),
        &json!({"step_id": "decide", "input": {"risk": "high"}, "actor": AGENT}),
    );
    assert_eq!(flagged.status, 201);
    let refused = expect_error(
        set_status(&mut c, &run_id, "RUNNING", ADMIN),
        409,
        "gates_unresolved",
        "resume",
    );
    // Not RUNNING: that is the change refused until the gate is resolved.
    assert_eq!(
        refused["details"]["allowed"],
        json!(["FAILED", "CANCELLED"]),
        "{refused}"
    );
}

#[test]
fn a_body_that_names_a_member_twice_is_refused_and_writes_nothing() {
    let (_server, mut c) = pt004_server();
    // The test client makes agent-7's token on first use (an audit entry): do that first.
    let warm_up = c.post(
        "/workflows/runs",
        &json!({"workflow_id": "none", "input": {}, "actor": AGENT}),
    );
    assert_eq!(warm_up.status, 404);
    let before = c.get("/audit?limit=1").json()["head"].clone();
    // A run whose input is `input`, sent as written (a JSON encoder would drop the duplicate).
    let mut create_raw = |input: &str| {
        let body =
            format!(r#"{{"workflow_id": "{WORKFLOW_ID}", "input": {input}, "actor": "{AGENT}"}}"#);
        let headers = [("Content-Type", "application/json")];
        c.send("POST", "/workflows/runs", &headers, body.as_bytes())
    };
    let refused = create_raw(r#"{"risk": "low", "risk": "critical"}"#);
    assert_eq!(refused.status, 400, "I-JSON forbids a member named twice");
    assert_eq!(refused.error_code(), "duplicate_key");
    let error = &refused.json()["error"];
    assert_eq!(
        error["details"]["path"], "input.risk",
        "the member named twice: {error}"
    );
    let refused = create_raw(r#"{"list": [1, {"a": 1, "b": {}, "a": 2}]}"#);
    let error = &refused.json()["error"];
    assert_eq!(refused.status, 400, "{error}");
    assert_eq!(error["code"], "duplicate_key", "{error}");
    assert_eq!(error["details"]["path"], "input.list[1].a", "{error}");
    assert_eq!(
        c.get("/audit?limit=1").json()["head"],
        before,
        "expected nothing written"
    );
}

#[test]
fn a_declared_failure_names_the_step_open_at_the_time_and_verifies() {
    let (mut server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "edge");
    start_step(&mut c, &run_id, "observe", &step_input("observe", "low"));
    let failed = expect(set_status(&mut c, &run_id, "FAILED", ADMIN), 200, "declare");
    assert_eq!(failed["failure"]["code"], "declared", "{failed}");
    assert_eq!(failed["failure"]["step_id"], "observe", "{failed}");
    expect(set_status(&mut c, &run_id, "RUNNING", ADMIN), 200, "retry");
    // Declared again with no attempt open: no step is named.
    let failed = expect(set_status(&mut c, &run_id, "FAILED", ADMIN), 200, "again");
    assert_eq!(failed["failure"]["step_id"], Value::Null, "{failed}");
    stop_and_verify(&mut server);
}

#[test]
fn numbers_are_answered_in_the_form_they_are_stored_and_integers_may_be_written_as_decimals() {
    let (_server, mut c) = pt004_server();
    let json_header = [("Content-Type", "application/json")];
    let policy = br#"{"tier": "T1", "default_effect": "allow", "actor": "admin",
        "rules": [{"rule_id": "big", "effect": "flag", "when": {"path": "input.amount", "gt": 1.50e3}}]}"#;
    let put = expect(
        c.send("PUT", "/policies/numbers", &json_header, policy),
        201,
        "a policy with a number written as 1.50e3",
    );
    assert_eq!(put["rules"][0]["when"]["gt"].to_string(), "1500");
    let read = expect(c.get("/policies/numbers"), 200, "the policy read back");
    assert_eq!(
        read["rules"][0]["when"].to_string(),
        put["rules"][0]["when"].to_string()
    );

    // `2.0` is the integer 2 under JCS, so a field that wants an integer takes it as 2.
    let definition = br#"{"policy_id": "numbers", "actor": "admin",
        "steps": [{"step_id": "only", "step_type": "OBSERVE", "max_attempts": 2.0}]}"#;
    let put = expect(
        c.send(
            "PUT",
            "/workflows/definitions/numbers",
            &json_header,
            definition,
        ),
        201,
        "a definition with max_attempts 2.0",
    );
    assert_eq!(put["steps"][0]["max_attempts"].to_string(), "2");
    let refused = br#"{"policy_id": "numbers", "actor": "admin",
        "steps": [{"step_id": "only", "step_type": "OBSERVE", "max_attempts": 2.5}]}"#;
    let resp = c.send(
        "PUT",
        "/workflows/definitions/numbers",
        &json_header,
        refused,
    );
    assert_eq!(resp.status, 422, "expected max_attempts 2.5 refused");
    assert_eq!(resp.error_code(), "invalid_definition");
}

#[test]
fn only_the_agent_that_requested_an_attempt_may_finish_it() {
    let (mut server, mut c) = pt004_server();
    let (run_id, before) = run_with_observe_started(&mut c);

    // agent-8 holds an agent token, but the policy decided on agent-7's request.
    let path = format!("/workflows/runs/{run_id}/steps/observe");
    let by_another =
        json!({"status": "COMPLETED", "output": {"by": "agent-8"}, "actor": "agent-8"});
    let refused = expect_error(
        c.patch(&path, &by_another),
        403,
        "not_attempt_actor",
        "agent-8 completes agent-7's attempt",
    );
    assert!(
        refused["message"].as_str().unwrap_or("").contains(AGENT),
        "expected the message to name the attempt's actor: {refused}"
    );
    let failed_by_another = json!({"status": "FAILED", "error": {"code": "x"}, "actor": "agent-8"});
    expect_error(
        c.patch(&path, &failed_by_another),
        403,
        "not_attempt_actor",
        "agent-8 fails agent-7's attempt",
    );

    // Nothing of the run changed; each refusal is on the record.
    assert_refused_and_unchanged(&mut c, &run_id, &before, "agent-8", 2);

    complete_step(&mut c, &run_id, "observe", &step_output("observe"));
    stop_and_verify(&mut server);
}

#[test]
fn only_the_runs_creator_or_its_attempts_actor_may_request_a_gate() {
    let (mut server, mut c) = pt004_server();
    let (run_id, before) = run_with_observe_started(&mut c);

    // A gate left to expire would fail agent-7's run for good.
    let path = format!("/workflows/runs/{run_id}/gates");
    let by_another =
        json!({"step_id": "observe", "reason": "x", "expires_in_s": 1, "actor": "agent-8"});
    expect_error(
        c.post(&path, &by_another),
        403,
        "not_run_actor",
        "agent-8 gates agent-7's run",
    );
    assert_refused_and_unchanged(&mut c, &run_id, &before, "agent-8", 1);

    // The run's own agent may.
    let own = json!({"step_id": "observe", "reason": "look first", "actor": AGENT});
    expect(c.post(&path, &own), 201, "agent-7 gates its own run");

    // So may the actor of the open attempt the gate binds to, though the run is not its own.
    let agent_8 = json!({"agent_id": "agent-8", "status": "active", "capabilities": [], "tier": "T2", "actor": ADMIN});
    expect(
        c.put("/registry/agents/agent-8", &agent_8),
        200,
        "register agent-8",
    );
    let other_run = new_pt004_run(&mut c, "edge-2");
    let step =
        json!({"step_id": "observe", "input": step_input("observe", "low"), "actor": "agent-8"});
    let started = expect(
        c.post(&format!("/workflows/runs/{other_run}/steps"), &step),
        201,
        "agent-8 starts a step of agent-7's run",
    );
    assert_eq!(started["step"]["status"], "STARTED", "{started}");
    let gate = json!({"step_id": "observe", "reason": "my attempt", "actor": "agent-8"});
    expect(
        c.post(&format!("/workflows/runs/{other_run}/gates"), &gate),
        201,
        "agent-8 gates the attempt it requested",
    );
    stop_and_verify(&mut server);
}

#[test]
fn an_absent_input_is_null_and_hashes_as_h_null() {
    let (_server, mut c) = pt004_server();
    let h_null = crate::scenarios::h(&Value::Null);
    let run = expect(
        c.post(
            "/workflows/runs",
            &json!({"workflow_id": WORKFLOW_ID, "actor": AGENT}),
        ),
        201,
        "a run without input",
    );
    assert_eq!(run["input"], Value::Null, "{run}");
    assert_eq!(run["input_hash"], h_null.as_str(), "contract §5: H(null)");
    let run_id = run["run_id"].as_str().unwrap();
    let step = expect(
        c.post(
            &format!("/workflows/runs/{run_id}/steps"),
            &json!({"step_id": "observe", "actor": AGENT}),
        ),
        201,
        "a step without input",
    );
    assert_eq!(step["step"]["input_hash"], h_null.as_str(), "{step}");
}

#[test]
fn a_refused_request_naming_a_gate_that_is_not_there_leaves_the_file_verifiable() {
    let (mut server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "edge");
    // Refused by role before the gate is looked up, and recorded with what was asked.
    let body = json!({"decision": "approve", "actor": AGENT});
    expect_error(
        c.patch(&format!("/workflows/runs/{run_id}/gates/nosuchgate"), &body),
        403,
        "forbidden_role",
        "an agent resolves a gate",
    );
    let refused = run_logs(&mut c, &run_id)
        .into_iter()
        .find(|e| e["action"] == "request.refused")
        .expect("the refusal recorded");
    assert_eq!(refused["subject"], "gate:nosuchgate");
    stop_and_verify(&mut server);
    let out = crate::support::TempDir::new();
    let folder = out.path().join("run");
    let db = server.db.to_str().unwrap().to_string();
    let (code, _, err) = run_cli(&[
        "export",
        "--db",
        &db,
        "--run",
        &run_id,
        "--out",
        folder.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let (code, out, _) = run_cli(&["verify", "--receipts", folder.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
}
