//! `Idempotency-Key`: a client that retries a POST or PATCH gets the first answer again and
//! nothing is written twice; reusing a key for another request is refused.

use crate::scenarios::{
    audit_head, new_pt004_run, pt004_server, run_logs, step_input, ADMIN, AGENT, WORKFLOW_ID,
};
use crate::support::{Client, Response};
use serde_json::{json, Value};

fn send_keyed(c: &mut Client, method: &str, path: &str, key: &str, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap();
    c.send(
        method,
        path,
        &[
            ("Content-Type", "application/json"),
            ("Idempotency-Key", key),
        ],
        &bytes,
    )
}

fn run_count(c: &mut Client) -> usize {
    c.get("/workflows/runs?limit=1000").json()["runs"]
        .as_array()
        .map_or(0, Vec::len)
}

#[test]
fn a_retried_run_creation_replays_the_first_answer_and_creates_nothing_more() {
    let (_server, mut c) = pt004_server();
    let body = json!({"workflow_id": WORKFLOW_ID, "input": {"n": 1}, "actor": AGENT});
    let first = send_keyed(&mut c, "POST", "/workflows/runs", "create-1", &body);
    assert_eq!(first.status, 201);
    let head = audit_head(&mut c);
    let again = send_keyed(&mut c, "POST", "/workflows/runs", "create-1", &body);
    assert_eq!(again.status, 201, "expected the first status replayed");
    assert_eq!(
        again.body, first.body,
        "expected the first answer byte for byte"
    );
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(
        audit_head(&mut c),
        head,
        "expected nothing written by the replay"
    );
    assert_eq!(run_count(&mut c), 1, "expected one run");

    // Without the redundant `actor` (the token names it), it is the same request.
    let bearer = c.bearer_for(AGENT);
    let without_actor = json!({"workflow_id": WORKFLOW_ID, "input": {"n": 1}});
    let headers = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "create-1"),
        ("Authorization", bearer.as_str()),
    ];
    let bytes = serde_json::to_vec(&without_actor).unwrap();
    let again = c.send("POST", "/workflows/runs", &headers, &bytes);
    assert_eq!(again.status, 201, "expected the first answer replayed");
    assert_eq!(again.body, first.body);
    assert_eq!(run_count(&mut c), 1, "expected one run");
}

#[test]
fn a_key_reused_for_another_request_is_refused_and_writes_nothing() {
    let (_server, mut c) = pt004_server();
    let body = json!({"workflow_id": WORKFLOW_ID, "input": {"n": 1}, "actor": AGENT});
    assert_eq!(
        send_keyed(&mut c, "POST", "/workflows/runs", "k", &body).status,
        201
    );
    let head = audit_head(&mut c);
    let other = json!({"workflow_id": WORKFLOW_ID, "input": {"n": 2}, "actor": AGENT});
    let refused = send_keyed(&mut c, "POST", "/workflows/runs", "k", &other);
    assert_eq!(refused.status, 422);
    assert_eq!(refused.error_code(), "idempotency_key_reused");
    assert_eq!(audit_head(&mut c), head);
    assert_eq!(run_count(&mut c), 1);

    // Keys are per actor: another actor may use the same key for its own request.
    let theirs = json!({"workflow_id": WORKFLOW_ID, "input": {"n": 2}, "actor": "agent-8"});
    assert_eq!(
        send_keyed(&mut c, "POST", "/workflows/runs", "k", &theirs).status,
        201
    );
    assert_eq!(run_count(&mut c), 2);
}

#[test]
fn a_retried_step_request_records_one_attempt_and_one_decision() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "idem");
    let path = format!("/workflows/runs/{run_id}/steps");
    let body = json!({"step_id": "observe", "input": step_input("observe", "low"), "actor": AGENT});
    let first = send_keyed(&mut c, "POST", &path, "step-1", &body);
    assert_eq!(first.status, 201);
    let again = send_keyed(&mut c, "POST", &path, "step-1", &body);
    assert_eq!(
        (again.status, again.body.clone()),
        (201, first.body.clone())
    );
    let run = c.get(&format!("/workflows/runs/{run_id}")).json();
    assert_eq!(run["steps"].as_array().map(Vec::len), Some(1), "{run}");
    assert_eq!(run["decisions"].as_array().map(Vec::len), Some(1), "{run}");

    // Without the key the same request is a new one, refused because the attempt is open.
    assert_eq!(c.post(&path, &body).status, 409);
}

#[test]
fn a_refusal_is_replayed_without_a_second_refusal_entry() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "idem");
    let path = format!("/workflows/runs/{run_id}/status");
    let body = json!({"status": "PAUSED", "actor": ADMIN});
    let first = send_keyed(&mut c, "PATCH", &path, "pause-1", &body);
    assert_eq!(first.status, 409, "a PENDING run cannot pause");
    let again = send_keyed(&mut c, "PATCH", &path, "pause-1", &body);
    assert_eq!(
        (again.status, again.body.clone()),
        (409, first.body.clone())
    );
    let refusals = run_logs(&mut c, &run_id)
        .iter()
        .filter(|e| e["action"] == "request.refused")
        .count();
    assert_eq!(refusals, 1, "expected the refusal recorded once");
}

#[test]
fn a_malformed_idempotency_key_is_a_400() {
    let (_server, mut c) = pt004_server();
    let body = json!({"workflow_id": WORKFLOW_ID, "actor": AGENT});
    for key in ["has space", &"k".repeat(256)] {
        let answer = send_keyed(&mut c, "POST", "/workflows/runs", key, &body);
        assert_eq!(answer.status, 400, "key {key:?}");
        assert_eq!(answer.error_code(), "invalid_idempotency_key");
    }
    // Two keys: which one a retry would send cannot be told, so neither is taken.
    let bytes = serde_json::to_vec(&body).unwrap();
    let headers = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "k-1"),
        ("Idempotency-Key", "k-2"),
    ];
    let answer = c.send("POST", "/workflows/runs", &headers, &bytes);
    assert_eq!(answer.status, 400, "two keys");
    assert_eq!(answer.error_code(), "invalid_idempotency_key");
    assert_eq!(run_count(&mut c), 0);
}

#[test]
fn a_token_creation_refuses_a_key_it_could_not_replay_and_makes_no_token() {
    let (_server, mut c) = pt004_server();
    let before = c.get("/audit?limit=1").json()["head"].clone();
    let resp = send_keyed(
        &mut c,
        "POST",
        "/tokens",
        "tok-1",
        &json!({"name": "bob", "role": "admin", "actor": ADMIN}),
    );
    assert_eq!(resp.status, 400, "expected the key refused");
    assert_eq!(resp.error_code(), "invalid_idempotency_key");
    assert_eq!(resp.json()["error"]["details"]["path"], "Idempotency-Key");
    assert_eq!(
        c.get("/audit?limit=1").json()["head"],
        before,
        "expected no token made"
    );
}
