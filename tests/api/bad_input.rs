//! A bad-input matrix over every endpoint. Each row names a request and the error it must get;
//! around each row the test snapshots what a client can observe (audit head, run list, the
//! fixture runs, the PT-004 documents) and checks that nothing changed, except that a refused
//! change on an existing run (403, or 409 on a status, step or gate change) adds exactly one
//! `request.refused` audit entry.

use crate::scenarios::{
    agent_7, audit_after, audit_head, error_shape_problem, expect, expect_error, flagged_run,
    get_run, h, new_pt004_run, pt004_definition, pt004_policy, set_status, setup_pt004, start_step,
    step_input, text, with_actor, ADMIN, AGENT, APPROVER, WORKFLOW_ID,
};
use crate::support::{read_response, role_for, Client, Response, Server};
use serde_json::{json, Value};
use std::io::{BufReader, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

const POLICY_PATH: &str = "/policies/pt004_governance";
const DEFINITION_PATH: &str = "/workflows/definitions/pt004_execution_spine";
const AGENT_PATH: &str = "/registry/agents/agent-7";
const RUNS_PATH: &str = "/workflows/runs";
/// A well-formed UUIDv7 that names no run (nor gate).
const GHOST: &str = "01890a5d-ac96-774b-bcce-b302099a8057";
const BIG: &str = "9007199254740992";

/// The runs every matrix starts from.
struct Fixture {
    /// PENDING, no step requested.
    pending: String,
    /// RUNNING, observe#1 STARTED.
    running: String,
    /// PAUSED on a PENDING gate for decide#1 (requested by agent-7).
    paused: String,
    gate: String,
    /// CANCELLED.
    cancelled: String,
}

impl Fixture {
    fn new(c: &mut Client) -> Fixture {
        setup_pt004(c);
        let pending = new_pt004_run(c, "pending");
        let running = new_pt004_run(c, "running");
        start_step(c, &running, "observe", &step_input("observe", "low"));
        let (paused, gate) = flagged_run(c, AGENT);
        let cancelled = new_pt004_run(c, "cancelled");
        expect(
            set_status(c, &cancelled, "CANCELLED", ADMIN),
            200,
            "cancel the fixture run",
        );
        Fixture {
            pending,
            running,
            paused,
            gate,
            cancelled,
        }
    }

    fn run_ids(&self) -> [&str; 4] {
        [&self.pending, &self.running, &self.paused, &self.cancelled]
    }

    fn run(&self, run_id: &str, rest: &str) -> String {
        format!("/workflows/runs/{run_id}{rest}")
    }
}

/// One row of the matrix.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    code: &'static str,
    /// The expected `error.details.path`, where the contract or DECISIONS name one.
    detail_path: Option<&'static str>,
    /// `(run_id, actor)` when the refusal must be recorded as one `request.refused` entry.
    refused: Option<(String, &'static str)>,
    /// `(name, role)` of the token to send, when it is not the one the body's actor gets.
    token: Option<(&'static str, &'static str)>,
}

impl Case {
    fn new(name: &'static str, method: &'static str, path: impl Into<String>) -> Case {
        Case {
            name,
            method,
            path: path.into(),
            content_type: Some("application/json"),
            body: Vec::new(),
            status: 0,
            code: "",
            detail_path: None,
            refused: None,
            token: None,
        }
    }
    /// Sends the case with a token of `name` in `role`, whatever actor the body names.
    fn with_token(mut self, name: &'static str, role: &'static str) -> Case {
        self.token = Some((name, role));
        self
    }
    fn json(mut self, body: Value) -> Case {
        self.body = serde_json::to_vec(&body).expect("encode");
        self
    }
    fn raw(mut self, body: impl Into<Vec<u8>>) -> Case {
        self.body = body.into();
        self
    }
    fn content_type(mut self, content_type: Option<&'static str>) -> Case {
        self.content_type = content_type;
        self
    }
    fn expect(mut self, status: u16, code: &'static str) -> Case {
        self.status = status;
        self.code = code;
        self
    }
    fn at(mut self, detail_path: &'static str) -> Case {
        self.detail_path = Some(detail_path);
        self
    }
    fn refused(mut self, run_id: &str, actor: &'static str) -> Case {
        self.refused = Some((run_id.to_string(), actor));
        self
    }
}

// ---------------------------------------------------------------------------------------------
// Valid bodies, and ways to spoil them.

fn policy_body() -> Value {
    with_actor(&pt004_policy(), ADMIN)
}
fn definition_body() -> Value {
    with_actor(&pt004_definition(), ADMIN)
}
fn agent_body() -> Value {
    with_actor(&agent_7(), ADMIN)
}
fn run_body() -> Value {
    json!({"workflow_id": WORKFLOW_ID, "input": {"k": 1}, "actor": AGENT})
}
fn step_body(step_id: &str) -> Value {
    json!({"step_id": step_id, "input": {"risk": "low"}, "actor": AGENT})
}
fn status_body(status: &str) -> Value {
    json!({"status": status, "reason": "bad-input test", "actor": ADMIN})
}
fn finish_body() -> Value {
    json!({"status": "COMPLETED", "output": {"ok": true}, "actor": AGENT})
}
fn gate_body() -> Value {
    json!({"step_id": "decide", "reason": "review", "actor": AGENT})
}
fn resolve_body(decision: &str, actor: &str) -> Value {
    json!({"decision": decision, "comment": "bad-input test", "actor": actor})
}

/// `body` changed by `change`.
fn with(mut body: Value, change: impl FnOnce(&mut Value)) -> Value {
    change(&mut body);
    body
}

/// `body` without the top-level `key`.
fn drop_key(body: Value, key: &str) -> Value {
    with(body, |b| {
        b.as_object_mut().expect("object body").remove(key);
    })
}

/// `body` with the top-level `key` set to `value`.
fn set(body: Value, key: &str, value: Value) -> Value {
    with(body, |b| b[key] = value)
}

/// Every mutating endpoint with a valid body for it, against the fixture.
fn mutating_endpoints(fx: &Fixture) -> Vec<(&'static str, &'static str, String, Value)> {
    vec![
        ("PUT policy", "PUT", POLICY_PATH.to_string(), policy_body()),
        (
            "PUT definition",
            "PUT",
            DEFINITION_PATH.to_string(),
            definition_body(),
        ),
        ("PUT agent", "PUT", AGENT_PATH.to_string(), agent_body()),
        ("POST run", "POST", RUNS_PATH.to_string(), run_body()),
        (
            "PATCH status",
            "PATCH",
            fx.run(&fx.running, "/status"),
            status_body("PAUSED"),
        ),
        (
            "POST step",
            "POST",
            fx.run(&fx.pending, "/steps"),
            step_body("observe"),
        ),
        (
            "PATCH step",
            "PATCH",
            fx.run(&fx.running, "/steps/observe"),
            finish_body(),
        ),
        (
            "POST gate",
            "POST",
            fx.run(&fx.running, "/gates"),
            gate_body(),
        ),
        (
            "PATCH gate",
            "PATCH",
            fx.run(&fx.paused, &format!("/gates/{}", fx.gate)),
            resolve_body("approve", APPROVER),
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Running the matrix.

/// What a client can observe of the database.
#[derive(Debug, PartialEq)]
struct Snapshot {
    head: (u64, String),
    runs: Value,
    fixture_runs: Vec<Value>,
    documents: Vec<Value>,
}

fn snapshot(c: &mut Client, fx: &Fixture) -> Snapshot {
    let head = audit_head(c);
    let runs = expect(
        c.get("/workflows/runs?limit=1000"),
        200,
        "snapshot: GET /workflows/runs",
    );
    let fixture_runs = fx.run_ids().iter().map(|id| get_run(c, id)).collect();
    let documents = [POLICY_PATH, DEFINITION_PATH, "/registry/agents"]
        .iter()
        .map(|path| expect(c.get(path), 200, &format!("snapshot: GET {path}")))
        .collect();
    Snapshot {
        head,
        runs,
        fixture_runs,
        documents,
    }
}

/// Sends one case; a body over 1 MiB goes on its own connection (see `send_oversized`).
fn send(c: &mut Client, addr: SocketAddr, case: &Case, authorization: &str) -> Response {
    let mut headers = vec![("Authorization", authorization)];
    if let Some(content_type) = case.content_type {
        headers.push(("Content-Type", content_type));
    }
    if case.body.len() > 1024 * 1024 {
        send_oversized(addr, case.method, &case.path, &headers, &case.body)
    } else {
        c.send(case.method, &case.path, &headers, &case.body)
    }
}

/// Writes a request on a fresh connection from another thread while reading the answer, so a
/// server that answers 413 early and closes does not leave the writer stuck or the answer lost.
fn send_oversized(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(30))).ok();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut bytes = head.into_bytes();
    bytes.extend_from_slice(body);
    let mut writer = stream.try_clone().expect("clone stream");
    let writing = std::thread::spawn(move || {
        let _ = writer.write_all(&bytes);
    });
    let answer = read_response(&mut BufReader::new(
        stream.try_clone().expect("clone stream"),
    ));
    let _ = stream.shutdown(Shutdown::Both);
    let _ = writing.join();
    answer.expect("an answer to an oversized request")
}

/// Runs one case and says what went wrong, if anything.
fn check(c: &mut Client, addr: SocketAddr, fx: &Fixture, case: &Case) -> Result<(), String> {
    // The token is made (an audit entry of its own) before the snapshot, not by the request.
    let authorization = match case.token {
        Some((name, role)) => {
            c.use_role(name, role);
            let bearer = c.bearer_for(name);
            c.use_role(name, role_for(name));
            bearer
        }
        None => c.authorization(&[], &case.body),
    };
    let before = snapshot(c, fx);
    let resp = send(c, addr, case, &authorization);
    let after = snapshot(c, fx);

    let shown = String::from_utf8_lossy(&resp.body)
        .chars()
        .take(300)
        .collect::<String>();
    if resp.status != case.status {
        return Err(format!(
            "expected HTTP {} {}, got {} with body {shown}",
            case.status, case.code, resp.status
        ));
    }
    let body: Value = serde_json::from_slice(&resp.body)
        .map_err(|e| format!("expected a JSON error body, got {shown:?} ({e})"))?;
    if let Some(problem) = error_shape_problem(&body) {
        return Err(problem);
    }
    if body["error"]["code"] != case.code {
        return Err(format!(
            "expected error code {:?}, got {}",
            case.code, body["error"]["code"]
        ));
    }
    if let Some(path) = case.detail_path {
        if body["error"]["details"]["path"] != path {
            return Err(format!(
                "expected error.details.path {path:?}, got {}",
                body["error"]
            ));
        }
    }

    match &case.refused {
        None if after != before => Err(format!(
            "expected nothing written; before {before:?}, after {after:?}"
        )),
        None => Ok(()),
        Some((run_id, actor)) => check_one_refusal(c, &before, &after, run_id, actor),
    }
}

/// A recorded refusal: exactly one new `request.refused` entry, everything else unchanged.
fn check_one_refusal(
    c: &mut Client,
    before: &Snapshot,
    after: &Snapshot,
    run_id: &str,
    actor: &str,
) -> Result<(), String> {
    let added = audit_after(c, before.head.0);
    let one_refusal = added.len() == 1
        && added[0]["action"] == "request.refused"
        && added[0]["run_id"] == run_id
        && added[0]["actor"] == actor;
    if !one_refusal || after.head.0 != before.head.0 + 1 {
        return Err(format!(
            "expected exactly one request.refused entry for run {run_id} by {actor}, got {added:?}"
        ));
    }
    let unchanged = after.runs == before.runs
        && after.fixture_runs == before.fixture_runs
        && after.documents == before.documents;
    if !unchanged {
        return Err(format!(
            "expected nothing but the refusal written; before {before:?}, after {after:?}"
        ));
    }
    Ok(())
}

/// Runs every case on a fresh PT-004 fixture and reports all failing cases by name.
fn run_matrix(cases: impl FnOnce(&Fixture) -> Vec<Case>) {
    let server = Server::start();
    let mut c = server.client();
    let fx = Fixture::new(&mut c);
    let cases = cases(&fx);
    assert!(!cases.is_empty(), "expected a non-empty matrix");
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| {
            check(&mut c, server.addr, &fx, case).err().map(|why| {
                format!(
                    "  case {:?} ({} {}): {why}",
                    case.name, case.method, case.path
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------
// The matrices.

#[test]
fn malformed_mistyped_and_incomplete_bodies_are_400_and_write_nothing() {
    run_matrix(|fx| {
        let mut cases = Vec::new();
        for (name, method, path, body) in mutating_endpoints(fx) {
            cases.push(
                Case::new(name, method, path.clone())
                    .raw(r#"{"oops": "#)
                    .expect(400, "malformed_json"),
            );
            cases.push(
                Case::new(name, method, path.clone())
                    .json(set(body.clone(), "colour", json!("blue")))
                    .expect(400, "unknown_field")
                    .at("colour"),
            );
            // With tokens, a body without `actor` acts as the token's holder; what is refused
            // now is a body naming someone other than the token's holder.
            let holder: &'static str = match body["actor"].as_str() {
                Some(ADMIN) => ADMIN,
                Some(APPROVER) => APPROVER,
                _ => AGENT,
            };
            cases.push(
                Case::new(name, method, path)
                    .json(set(body, "actor", json!("impostor-1")))
                    .with_token(holder, role_for(holder))
                    .expect(403, "actor_mismatch"),
            );
        }
        let running_step = fx.run(&fx.running, "/steps/observe");
        let paused_gate = fx.run(&fx.paused, &format!("/gates/{}", fx.gate));
        let big_input = format!(
            r#"{{"workflow_id": "{WORKFLOW_ID}", "input": {{"n": {BIG}}}, "actor": "{AGENT}"}}"#
        );
        let small_input = format!(
            r#"{{"workflow_id": "{WORKFLOW_ID}", "input": {{"n": -{BIG}}}, "actor": "{AGENT}"}}"#
        );
        // The same value as 2^53+1 written as a decimal: it would hash as 2^53.
        let decimal_input = format!(
            r#"{{"workflow_id": "{WORKFLOW_ID}", "input": {{"n": 9007199254740993.0}}, "actor": "{AGENT}"}}"#
        );
        let exponent_input = format!(
            r#"{{"workflow_id": "{WORKFLOW_ID}", "input": {{"a": [1e16]}}, "actor": "{AGENT}"}}"#
        );
        let huge_input = format!(
            r#"{{"workflow_id": "{WORKFLOW_ID}", "input": {{"n": 1e400}}, "actor": "{AGENT}"}}"#
        );
        let big_step =
            format!(r#"{{"step_id": "observe", "input": {{"n": {BIG}}}, "actor": "{AGENT}"}}"#);
        let big_rule = serde_json::to_string(&policy_body())
            .expect("encode")
            .replace("10000", "9007199254740993");
        cases.extend([
            Case::new("empty body", "POST", RUNS_PATH).expect(400, "malformed_json"),
            Case::new("trailing garbage", "POST", RUNS_PATH)
                .raw(format!("{} {{}}", run_body()))
                .expect(400, "malformed_json"),
            Case::new("invalid UTF-8", "POST", RUNS_PATH)
                .raw(b"{\"workflow_id\": \"pt004_execution_spine\", \"input\": {\"k\": \"\xff\"}, \"actor\": \"agent-7\"}".to_vec())
                .expect(400, "malformed_json"),
            Case::new("run workflow_id: 5", "POST", RUNS_PATH)
                .json(set(run_body(), "workflow_id", json!(5)))
                .expect(400, "wrong_type")
                .at("workflow_id"),
            Case::new("run actor: 5", "POST", RUNS_PATH)
                .json(set(run_body(), "actor", json!(5)))
                .expect(400, "wrong_type")
                .at("actor"),
            Case::new("step step_id: 5", "POST", fx.run(&fx.pending, "/steps"))
                .json(set(step_body("observe"), "step_id", json!(5)))
                .expect(400, "wrong_type")
                .at("step_id"),
            Case::new("status status: 5", "PATCH", fx.run(&fx.running, "/status"))
                .json(set(status_body("PAUSED"), "status", json!(5)))
                .expect(400, "wrong_type")
                .at("status"),
            Case::new("agent status: 5", "PUT", AGENT_PATH)
                .json(set(agent_body(), "status", json!(5)))
                .expect(400, "wrong_type")
                .at("status"),
            Case::new("step failed with fedcore's run_ended", "PATCH", running_step.clone())
                .json(json!({"status": "FAILED", "error": {"code": "run_ended"}, "actor": AGENT}))
                .expect(422, "invalid_value")
                .at("error.code"),
            Case::new("step finish status: true", "PATCH", running_step.clone())
                .json(set(finish_body(), "status", json!(true)))
                .expect(400, "wrong_type")
                .at("status"),
            Case::new("gate expires_in_s: \"soon\"", "POST", fx.run(&fx.running, "/gates"))
                .json(set(gate_body(), "expires_in_s", json!("soon")))
                .expect(400, "wrong_type")
                .at("expires_in_s"),
            Case::new("gate comment: 5", "PATCH", paused_gate.clone())
                .json(set(resolve_body("approve", APPROVER), "comment", json!(5)))
                .expect(400, "wrong_type")
                .at("comment"),
            Case::new("run without workflow_id", "POST", RUNS_PATH)
                .json(drop_key(run_body(), "workflow_id"))
                .expect(400, "missing_field")
                .at("workflow_id"),
            Case::new("step without step_id", "POST", fx.run(&fx.pending, "/steps"))
                .json(drop_key(step_body("observe"), "step_id"))
                .expect(400, "missing_field")
                .at("step_id"),
            Case::new("status without status", "PATCH", fx.run(&fx.running, "/status"))
                .json(drop_key(status_body("PAUSED"), "status"))
                .expect(400, "missing_field")
                .at("status"),
            Case::new("step completed without output", "PATCH", running_step.clone())
                .json(drop_key(finish_body(), "output"))
                .expect(400, "missing_field")
                .at("output"),
            Case::new("step failed without error", "PATCH", running_step.clone())
                .json(json!({"status": "FAILED", "actor": AGENT}))
                .expect(400, "missing_field")
                .at("error"),
            Case::new("step failed with error: \"boom\"", "PATCH", running_step.clone())
                .json(json!({"status": "FAILED", "error": "boom", "actor": AGENT}))
                .expect(400, "wrong_type")
                .at("error"),
            Case::new("step finish without status", "PATCH", running_step)
                .json(drop_key(finish_body(), "status"))
                .expect(400, "missing_field")
                .at("status"),
            Case::new("gate without step_id", "POST", fx.run(&fx.running, "/gates"))
                .json(drop_key(gate_body(), "step_id"))
                .expect(400, "missing_field")
                .at("step_id"),
            Case::new("gate resolution without decision", "PATCH", paused_gate)
                .json(drop_key(resolve_body("approve", APPROVER), "decision"))
                .expect(400, "missing_field")
                .at("decision"),
            Case::new("run input 2^53", "POST", RUNS_PATH).raw(big_input).expect(400, "number_out_of_range").at("input.n"),
            Case::new("run input -2^53", "POST", RUNS_PATH)
                .raw(small_input)
                .expect(400, "number_out_of_range")
                .at("input.n"),
            Case::new("run input 1e400", "POST", RUNS_PATH).raw(huge_input).expect(400, "number_out_of_range"),
            Case::new("run input 2^53+1 as a decimal", "POST", RUNS_PATH)
                .raw(decimal_input)
                .expect(400, "number_out_of_range")
                .at("input.n"),
            Case::new("run input 1e16", "POST", RUNS_PATH)
                .raw(exponent_input)
                .expect(400, "number_out_of_range")
                .at("input.a[0]"),
            Case::new("step input 2^53", "POST", fx.run(&fx.pending, "/steps"))
                .raw(big_step)
                .expect(400, "number_out_of_range")
                .at("input.n"),
            Case::new("policy rule value 2^53+1", "PUT", POLICY_PATH).raw(big_rule).expect(400, "number_out_of_range"),
            Case::new("run list limit=abc", "GET", "/workflows/runs?limit=abc").expect(400, "invalid_query"),
            Case::new("audit limit=abc", "GET", "/audit?limit=abc").expect(400, "invalid_query"),
            Case::new("policy version=abc", "GET", format!("{POLICY_PATH}?version=abc")).expect(400, "invalid_query"),
            Case::new("evidence not-a-hash", "GET", "/evidence/not-a-hash").expect(400, "invalid_hash"),
        ]);
        cases
    });
}

#[test]
fn non_json_and_oversized_bodies_are_415_and_413_and_write_nothing() {
    run_matrix(|fx| {
        // Valid JSON of 2 MiB and more: `body` with one string field padded.
        let two_mib = |body: Value, change: fn(&mut Value, Value)| -> Vec<u8> {
            let padded = with(body, |b| change(b, json!("x".repeat(2 * 1024 * 1024))));
            serde_json::to_vec(&padded).expect("encode")
        };
        vec![
            Case::new("run as text/plain", "POST", RUNS_PATH)
                .json(run_body())
                .content_type(Some("text/plain"))
                .expect(415, "unsupported_media_type"),
            Case::new("run without Content-Type", "POST", RUNS_PATH)
                .json(run_body())
                .content_type(None)
                .expect(415, "unsupported_media_type"),
            Case::new("policy as text/plain", "PUT", POLICY_PATH)
                .json(policy_body())
                .content_type(Some("text/plain"))
                .expect(415, "unsupported_media_type"),
            Case::new("step as text/plain", "POST", fx.run(&fx.pending, "/steps"))
                .json(step_body("observe"))
                .content_type(Some("text/plain"))
                .expect(415, "unsupported_media_type"),
            Case::new(
                "gate resolution as form data",
                "PATCH",
                fx.run(&fx.paused, &format!("/gates/{}", fx.gate)),
            )
            .raw("decision=approve&actor=approver-1")
            .content_type(Some("application/x-www-form-urlencoded"))
            .expect(415, "unsupported_media_type"),
            Case::new("2 MiB run", "POST", RUNS_PATH)
                .raw(two_mib(run_body(), |b, pad| b["input"]["pad"] = pad))
                .expect(413, "body_too_large"),
            Case::new("2 MiB step", "POST", fx.run(&fx.pending, "/steps"))
                .raw(two_mib(step_body("observe"), |b, pad| {
                    b["input"]["pad"] = pad
                }))
                .expect(413, "body_too_large"),
            Case::new("2 MiB policy", "PUT", POLICY_PATH)
                .raw(two_mib(policy_body(), |b, pad| {
                    b["rules"][0]["reason"] = pad
                }))
                .expect(413, "body_too_large"),
        ]
    });
}

#[test]
fn unknown_ids_routes_and_methods_are_404_and_405_and_write_nothing() {
    run_matrix(|fx| {
        let ghost = |rest: &str| format!("/workflows/runs/{GHOST}{rest}");
        vec![
            Case::new("unknown policy", "GET", "/policies/nope").expect(404, "unknown_policy"),
            Case::new(
                "unknown policy version",
                "GET",
                format!("{POLICY_PATH}?version=9"),
            )
            .expect(404, "unknown_policy"),
            Case::new("unknown definition", "GET", "/workflows/definitions/nope")
                .expect(404, "unknown_workflow"),
            Case::new(
                "unknown definition version",
                "GET",
                format!("{DEFINITION_PATH}?version=9"),
            )
            .expect(404, "unknown_workflow"),
            Case::new("unknown agent", "GET", "/registry/agents/nobody")
                .expect(404, "unknown_agent"),
            Case::new("run of an unknown workflow", "POST", RUNS_PATH)
                .json(set(run_body(), "workflow_id", json!("nope")))
                .expect(404, "unknown_workflow"),
            Case::new("GET unknown run", "GET", ghost("")).expect(404, "unknown_run"),
            Case::new("status of unknown run", "PATCH", ghost("/status"))
                .json(status_body("PAUSED"))
                .expect(404, "unknown_run"),
            Case::new("step of unknown run", "POST", ghost("/steps"))
                .json(step_body("observe"))
                .expect(404, "unknown_run"),
            Case::new(
                "step finish of unknown run",
                "PATCH",
                ghost("/steps/observe"),
            )
            .json(finish_body())
            .expect(404, "unknown_run"),
            Case::new("logs of unknown run", "GET", ghost("/logs")).expect(404, "unknown_run"),
            Case::new("gate of unknown run", "POST", ghost("/gates"))
                .json(gate_body())
                .expect(404, "unknown_run"),
            Case::new(
                "gate resolution of unknown run",
                "PATCH",
                ghost(&format!("/gates/{GHOST}")),
            )
            .json(resolve_body("approve", APPROVER))
            .expect(404, "unknown_run"),
            Case::new("receipt of unknown run", "GET", ghost("/receipt"))
                .expect(404, "unknown_run"),
            Case::new(
                "unknown step requested",
                "POST",
                fx.run(&fx.running, "/steps"),
            )
            .json(step_body("nope"))
            .expect(404, "unknown_step"),
            Case::new(
                "unknown step finished",
                "PATCH",
                fx.run(&fx.running, "/steps/nope"),
            )
            .json(finish_body())
            .expect(404, "unknown_step"),
            Case::new(
                "gate on an unknown step",
                "POST",
                fx.run(&fx.running, "/gates"),
            )
            .json(set(gate_body(), "step_id", json!("nope")))
            .expect(404, "unknown_step"),
            Case::new(
                "unknown gate",
                "PATCH",
                fx.run(&fx.paused, &format!("/gates/{GHOST}")),
            )
            .json(resolve_body("approve", APPROVER))
            .expect(404, "unknown_gate"),
            Case::new(
                "receipt of a run that has not ended",
                "GET",
                fx.run(&fx.pending, "/receipt"),
            )
            .expect(404, "no_receipt"),
            Case::new(
                "unknown evidence",
                "GET",
                format!("/evidence/{}", h(&json!("never stored"))),
            )
            .expect(404, "unknown_evidence"),
            Case::new("unknown route", "GET", "/nope").expect(404, "not_found"),
            Case::new("unknown run sub-route", "GET", fx.run(&fx.pending, "/nope"))
                .expect(404, "not_found"),
            Case::new("unknown nested route", "GET", "/policies/a/b").expect(404, "not_found"),
            Case::new("unknown POST route", "POST", "/v2/runs")
                .json(run_body())
                .expect(404, "not_found"),
            Case::new("DELETE a policy", "DELETE", POLICY_PATH).expect(405, "method_not_allowed"),
            Case::new("POST /health", "POST", "/health")
                .json(json!({}))
                .expect(405, "method_not_allowed"),
            Case::new("DELETE a run", "DELETE", fx.run(&fx.pending, ""))
                .expect(405, "method_not_allowed"),
            Case::new("GET a status", "GET", fx.run(&fx.pending, "/status"))
                .expect(405, "method_not_allowed"),
            Case::new("PATCH the run list", "PATCH", RUNS_PATH)
                .json(run_body())
                .expect(405, "method_not_allowed"),
            Case::new("POST a receipt", "POST", fx.run(&fx.pending, "/receipt"))
                .json(json!({}))
                .expect(405, "method_not_allowed"),
            Case::new("PUT /audit", "PUT", "/audit")
                .json(json!({}))
                .expect(405, "method_not_allowed"),
        ]
    });
}

#[test]
fn invalid_policies_definitions_and_values_are_422_at_the_offending_path() {
    run_matrix(|fx| {
        let policy = |change: fn(&mut Value)| with(policy_body(), change);
        let definition = |change: fn(&mut Value)| with(definition_body(), change);
        vec![
            Case::new("policy: bad effect", "PUT", POLICY_PATH)
                .json(policy(|p| p["rules"][0]["effect"] = json!("maybe")))
                .expect(422, "invalid_policy")
                .at("rules[0].effect"),
            Case::new("policy: bad default_effect", "PUT", POLICY_PATH)
                .json(policy(|p| p["default_effect"] = json!("maybe")))
                .expect(422, "invalid_policy")
                .at("default_effect"),
            Case::new("policy: bad operator", "PUT", POLICY_PATH)
                .json(policy(|p| {
                    p["rules"][0]["when"] = json!({"path": "input.risk", "equals": "critical"})
                }))
                .expect(422, "invalid_policy")
                .at("rules[0].when.equals"),
            Case::new("policy: `in` with a non-array", "PUT", POLICY_PATH)
                .json(policy(|p| {
                    p["rules"][0]["when"] = json!({"path": "input.risk", "in": "critical"})
                }))
                .expect(422, "invalid_policy")
                .at("rules[0].when.in"),
            Case::new("policy: nested `in` with a non-array", "PUT", POLICY_PATH)
                .json(policy(|p| {
                    p["rules"][1]["when"]["any"][0] = json!({"path": "input.risk", "in": "high"})
                }))
                .expect(422, "invalid_policy")
                .at("rules[1].when.any[0].in"),
            Case::new("policy: unknown path root", "PUT", POLICY_PATH)
                .json(policy(|p| {
                    p["rules"][0]["when"]["path"] = json!("inptu.risk")
                }))
                .expect(422, "invalid_policy")
                .at("rules[0].when.path"),
            Case::new("policy: version in body", "PUT", POLICY_PATH)
                .json(policy(|p| p["version"] = json!(7)))
                .expect(422, "invalid_policy")
                .at("version"),
            Case::new("policy: policy_id differs from path", "PUT", POLICY_PATH)
                .json(policy(|p| p["policy_id"] = json!("other")))
                .expect(422, "invalid_policy")
                .at("policy_id"),
            Case::new("definition: bad step_type", "PUT", DEFINITION_PATH)
                .json(definition(|d| {
                    d["steps"][1]["step_type"] = json!("DECIDER")
                }))
                .expect(422, "invalid_definition")
                .at("steps[1].step_type"),
            Case::new("definition: unknown policy", "PUT", DEFINITION_PATH)
                .json(definition(|d| d["policy_id"] = json!("no_such_policy")))
                .expect(422, "invalid_definition")
                .at("policy_id"),
            Case::new("definition: unknown step policy", "PUT", DEFINITION_PATH)
                .json(definition(|d| {
                    d["steps"][0]["policy_id"] = json!("no_such_policy")
                }))
                .expect(422, "invalid_definition")
                .at("steps[0].policy_id"),
            Case::new("definition: duplicate step ids", "PUT", DEFINITION_PATH)
                .json(definition(|d| d["steps"][1]["step_id"] = json!("observe")))
                .expect(422, "invalid_definition")
                .at("steps[1].step_id"),
            Case::new("definition: max_attempts 0", "PUT", DEFINITION_PATH)
                .json(definition(|d| d["steps"][0]["max_attempts"] = json!(0)))
                .expect(422, "invalid_definition")
                .at("steps[0].max_attempts"),
            Case::new("definition: version in body", "PUT", DEFINITION_PATH)
                .json(definition(|d| d["version"] = json!(2)))
                .expect(422, "invalid_definition")
                .at("version"),
            Case::new(
                "definition: workflow_id differs from path",
                "PUT",
                DEFINITION_PATH,
            )
            .json(definition(|d| d["workflow_id"] = json!("other")))
            .expect(422, "invalid_definition")
            .at("workflow_id"),
            Case::new("status BOGUS", "PATCH", fx.run(&fx.running, "/status"))
                .json(status_body("BOGUS"))
                .expect(422, "invalid_value")
                .at("status"),
            Case::new(
                "step finish status BOGUS",
                "PATCH",
                fx.run(&fx.running, "/steps/observe"),
            )
            .json(set(finish_body(), "status", json!("BOGUS")))
            .expect(422, "invalid_value")
            .at("status"),
            Case::new(
                "gate decision maybe",
                "PATCH",
                fx.run(&fx.paused, &format!("/gates/{}", fx.gate)),
            )
            .json(resolve_body("maybe", APPROVER))
            .expect(422, "invalid_value")
            .at("decision"),
        ]
    });
}

#[test]
fn refused_changes_on_a_run_record_one_request_refused_entry_and_nothing_else() {
    run_matrix(|fx| {
        vec![
            Case::new(
                "pause a PENDING run",
                "PATCH",
                fx.run(&fx.pending, "/status"),
            )
            .json(status_body("PAUSED"))
            .expect(409, "invalid_transition")
            .refused(&fx.pending, ADMIN),
            Case::new(
                "resume with a PENDING gate",
                "PATCH",
                fx.run(&fx.paused, "/status"),
            )
            .json(status_body("RUNNING"))
            .expect(409, "gates_unresolved")
            .refused(&fx.paused, ADMIN),
            Case::new(
                "resume a CANCELLED run",
                "PATCH",
                fx.run(&fx.cancelled, "/status"),
            )
            .json(status_body("RUNNING"))
            .expect(409, "invalid_transition")
            .refused(&fx.cancelled, ADMIN),
            Case::new("step out of order", "POST", fx.run(&fx.pending, "/steps"))
                .json(step_body("decide"))
                .expect(409, "step_out_of_order")
                .refused(&fx.pending, AGENT),
            Case::new("step on a PAUSED run", "POST", fx.run(&fx.paused, "/steps"))
                .json(step_body("decide"))
                .expect(409, "run_not_active")
                .refused(&fx.paused, AGENT),
            Case::new(
                "step on a CANCELLED run",
                "POST",
                fx.run(&fx.cancelled, "/steps"),
            )
            .json(step_body("observe"))
            .expect(409, "run_not_active")
            .refused(&fx.cancelled, AGENT),
            Case::new("second open attempt", "POST", fx.run(&fx.running, "/steps"))
                .json(step_body("observe"))
                .expect(409, "attempt_open")
                .refused(&fx.running, AGENT),
            Case::new(
                "finish a step with no open attempt",
                "PATCH",
                fx.run(&fx.running, "/steps/decide"),
            )
            .json(finish_body())
            .expect(409, "no_open_attempt")
            .refused(&fx.running, AGENT),
            Case::new(
                "gate on a PENDING run",
                "POST",
                fx.run(&fx.pending, "/gates"),
            )
            .json(set(gate_body(), "step_id", json!("observe")))
            .expect(409, "run_not_active")
            .refused(&fx.pending, AGENT),
            Case::new(
                "self-approval",
                "PATCH",
                fx.run(&fx.paused, &format!("/gates/{}", fx.gate)),
            )
            .json(resolve_body("approve", AGENT))
            .with_token(AGENT, "approver")
            .expect(403, "self_approval")
            .refused(&fx.paused, AGENT),
        ]
    });
}

// ---------------------------------------------------------------------------------------------
// Actors and numbers that are fine.

/// With tokens the actor is the token's holder; `X-Actor` may still name it (the client picks
/// the token of the name it states), and naming anyone else is 403 `actor_mismatch`.
#[test]
fn the_x_actor_header_names_the_actor_and_must_be_the_token_holder() {
    let server = Server::start();
    let mut c = server.client();
    setup_pt004(&mut c);
    let json_as = |actor| [("Content-Type", "application/json"), ("X-Actor", actor)];

    let policy = serde_json::to_vec(&json!({"policy_id": "by_header", "tier": "T1", "rules": []}))
        .expect("encode");
    let resp = c.send(
        "PUT",
        "/policies/by_header",
        &json_as("admin-by-header"),
        &policy,
    );
    expect(resp, 201, "PUT a policy naming its actor in X-Actor");
    let (seq, _) = audit_head(&mut c);
    let last = &audit_after(&mut c, seq - 1)[0];
    assert_eq!(
        last["action"], "policy.put",
        "expected the PUT's audit entry last: {last}"
    );
    assert_eq!(
        last["actor"], "admin-by-header",
        "expected the audit entry to name the X-Actor: {last}"
    );

    let run =
        serde_json::to_vec(&json!({"workflow_id": WORKFLOW_ID, "input": {}})).expect("encode");
    let resp = c.send("POST", RUNS_PATH, &json_as(AGENT), &run);
    let run = expect(resp, 201, "POST a run naming its actor in X-Actor");
    assert_eq!(
        run["created_by"], AGENT,
        "expected created_by from X-Actor: {run}"
    );

    let step = serde_json::to_vec(&step_body("observe")).expect("encode");
    let path = format!("/workflows/runs/{}/steps", text(&run, "run_id"));
    let resp = c.send("POST", &path, &json_as("admin-by-header"), &step);
    expect_error(
        resp,
        403,
        "actor_mismatch",
        "a step whose body names agent-7 and whose X-Actor names another",
    );
}

#[test]
fn integers_up_to_2_pow_53_minus_1_are_accepted() {
    let server = Server::start();
    let mut c = server.client();
    setup_pt004(&mut c);
    let input = r#"{"max": 9007199254740991, "min": -9007199254740991}"#;
    let body =
        format!(r#"{{"workflow_id": "{WORKFLOW_ID}", "input": {input}, "actor": "{AGENT}"}}"#);
    let resp = c.send(
        "POST",
        RUNS_PATH,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    let run = expect(resp, 201, "POST a run with ±(2^53−1)");
    let input: Value = serde_json::from_str(input).expect("input parses");
    assert_eq!(
        run["input_hash"],
        h(&input),
        "expected input_hash = H(input) for the largest safe integers"
    );
}
