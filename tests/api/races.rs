//! Racing requests on one object serialise (contract §8): of sixteen concurrent approvals of one
//! gate exactly one wins, of eight concurrent requests for the same step exactly one attempt is
//! recorded, and runs created from many threads at once are all kept under distinct ids. The
//! audit chain stays one unbroken line through all of it. This module also holds the small
//! fixtures (agent, policy, three-step definition, runs, gates, audit paging) that
//! `connections`, `shutdown` and `triggers` share.

use crate::support::{Client, Response, Server};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Barrier;
use std::thread;

// ---------------------------------------------------------------------------------------------
// Fixtures shared by this area's modules.
// ---------------------------------------------------------------------------------------------

/// The registered, active agent that creates runs and requests steps.
pub(crate) const AGENT: &str = "agent-7";
/// Denies `input.risk == "critical"`, flags `"high"`, allows an active registered agent.
pub(crate) const POLICY_ID: &str = "race_governance";
/// Three steps, in this order: observe (OBSERVE), decide (DECIDE), act (ACT).
pub(crate) const WORKFLOW_ID: &str = "race_spine";
pub(crate) const STEP_IDS: [&str; 3] = ["observe", "decide", "act"];

/// Registers agent-7, the policy and the three-step definition.
pub(crate) fn install_workflow(client: &mut Client) {
    let agent = client.put(
        &format!("/registry/agents/{AGENT}"),
        &json!({"agent_id": AGENT, "status": "active", "capabilities": [], "tier": "T2",
                "actor": "admin"}),
    );
    expect_status(&agent, 200, "registering agent-7");

    let policy = client.put(
        &format!("/policies/{POLICY_ID}"),
        &json!({
            "policy_id": POLICY_ID, "tier": "T2", "default_effect": "deny", "actor": "admin",
            "rules": [
                {"rule_id": "deny-critical", "effect": "deny",
                 "reason": "critical-risk actions are forbidden",
                 "when": {"path": "input.risk", "eq": "critical"}},
                {"rule_id": "flag-high", "effect": "flag", "reason": "high-risk actions need a human",
                 "when": {"path": "input.risk", "eq": "high"}},
                {"rule_id": "allow-active", "effect": "allow", "reason": "registered active agent",
                 "when": {"path": "agent.status", "eq": "active"}}
            ]
        }),
    );
    expect_status(&policy, 201, "storing the policy");

    let definition = client.put(
        &format!("/workflows/definitions/{WORKFLOW_ID}"),
        &json!({
            "workflow_id": WORKFLOW_ID, "policy_id": POLICY_ID, "actor": "admin",
            "steps": [
                {"step_id": "observe", "step_type": "OBSERVE", "max_attempts": 3, "policy_id": null},
                {"step_id": "decide", "step_type": "DECIDE", "max_attempts": 3, "policy_id": null},
                {"step_id": "act", "step_type": "ACT", "max_attempts": 3, "policy_id": null}
            ]
        }),
    );
    expect_status(&definition, 201, "storing the three-step definition");
}

/// The body of `POST /workflows/runs` that creates a run of the fixture workflow as agent-7.
pub(crate) fn new_run_body() -> Value {
    json!({"workflow_id": WORKFLOW_ID, "input": {}, "actor": AGENT})
}

/// Creates a run of the fixture workflow and returns its run_id.
pub(crate) fn create_run(client: &mut Client) -> String {
    let response = client.post("/workflows/runs", &new_run_body());
    expect_status(&response, 201, "creating a run");
    run_id_of(&response)
}

/// The `run_id` of a run in a response body.
pub(crate) fn run_id_of(response: &Response) -> String {
    let body = response.json();
    body["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("expected a run with a string run_id, got {body}"))
        .to_string()
}

/// `POST …/steps` for `step_id` with input `{"risk": risk}` as agent-7.
pub(crate) fn request_step(
    client: &mut Client,
    run_id: &str,
    step_id: &str,
    risk: &str,
) -> Response {
    client.post(
        &format!("/workflows/runs/{run_id}/steps"),
        &json!({"step_id": step_id, "input": {"risk": risk}, "actor": AGENT}),
    )
}

/// Requests a low-risk step (allowed, so STARTED) and completes it.
pub(crate) fn run_step_to_completion(client: &mut Client, run_id: &str, step_id: &str) {
    let requested = request_step(client, run_id, step_id, "low");
    expect_status(
        &requested,
        201,
        &format!("requesting low-risk step {step_id}"),
    );
    let status = &requested.json()["step"]["status"];
    assert_eq!(
        status, "STARTED",
        "expected an allowed step {step_id} to be STARTED"
    );
    let completed = client.patch(
        &format!("/workflows/runs/{run_id}/steps/{step_id}"),
        &json!({"status": "COMPLETED", "output": {"done": step_id}, "actor": AGENT}),
    );
    expect_status(&completed, 200, &format!("completing step {step_id}"));
}

/// Requests the first step with high risk, which the policy flags, and returns the id of the gate
/// fedcore opens for it.
pub(crate) fn open_gate(client: &mut Client, run_id: &str) -> String {
    let flagged = request_step(client, run_id, STEP_IDS[0], "high");
    expect_status(&flagged, 201, "requesting a high-risk step");
    let body = flagged.json();
    assert_eq!(
        body["decision"]["effect"], "flag",
        "expected a high-risk step to be flagged: {body}"
    );
    assert_eq!(
        body["gate"]["status"], "PENDING",
        "expected a flag to open a PENDING gate: {body}"
    );
    assert_eq!(
        body["run"]["status"], "PAUSED",
        "expected a flag to pause the run: {body}"
    );
    body["gate"]["gate_id"]
        .as_str()
        .unwrap_or_else(|| panic!("expected the opened gate to have a gate_id: {body}"))
        .to_string()
}

/// The body of an approval of a gate by `approver`.
pub(crate) fn approval_body(approver: &str) -> Value {
    json!({"decision": "approve", "comment": format!("approved by {approver}"), "actor": approver})
}

/// `GET /workflows/runs/{run_id}`, expected to answer 200.
pub(crate) fn get_run(client: &mut Client, run_id: &str) -> Value {
    let response = client.get(&format!("/workflows/runs/{run_id}"));
    expect_status(&response, 200, &format!("reading run {run_id}"));
    response.json()
}

/// The audit entries of one run, from `GET /workflows/runs/{run_id}/logs`.
pub(crate) fn run_logs(client: &mut Client, run_id: &str) -> Vec<Value> {
    let response = client.get(&format!("/workflows/runs/{run_id}/logs"));
    expect_status(&response, 200, &format!("reading the logs of run {run_id}"));
    array_field(&response.json(), "entries")
}

/// Every run_id of `workflow_id`, following the `next` cursor of `GET /workflows/runs`.
pub(crate) fn list_run_ids(client: &mut Client, workflow_id: &str) -> Vec<String> {
    let mut run_ids = Vec::new();
    let mut after: Option<String> = None;
    for _page in 0..1_000 {
        let mut path = format!("/workflows/runs?workflow_id={workflow_id}&limit=1000");
        if let Some(cursor) = &after {
            path.push_str(&format!("&after={cursor}"));
        }
        let response = client.get(&path);
        expect_status(&response, 200, "listing runs");
        let body = response.json();
        for run in array_field(&body, "runs") {
            let run_id = run["run_id"]
                .as_str()
                .unwrap_or_else(|| panic!("listed run without run_id: {run}"));
            run_ids.push(run_id.to_string());
        }
        match body["next"].as_str() {
            Some(cursor) => after = Some(cursor.to_string()),
            None => return run_ids,
        }
    }
    panic!("expected the run list to end within 1,000 pages");
}

/// The whole audit log, paged through `GET /audit`. Also checks that the `head` of the last page
/// is the last entry (nothing writes while this runs in our tests).
pub(crate) fn audit_entries(client: &mut Client) -> Vec<Value> {
    let mut entries: Vec<Value> = Vec::new();
    let mut after_seq = 0u64;
    for _page in 0..10_000 {
        let response = client.get(&format!("/audit?after_seq={after_seq}&limit=1000"));
        expect_status(&response, 200, "reading the audit log");
        let body = response.json();
        let page = array_field(&body, "entries");
        if page.is_empty() {
            let head = &body["head"];
            match entries.last() {
                Some(last) => {
                    assert_eq!(
                        head["seq"], last["seq"],
                        "expected the audit head to be the last entry"
                    );
                    assert_eq!(
                        head["entry_hash"], last["entry_hash"],
                        "expected the audit head's entry_hash to be the last entry's"
                    );
                }
                None => assert_eq!(
                    head["seq"].as_u64(),
                    Some(0),
                    "expected head seq 0 on an empty log"
                ),
            }
            return entries;
        }
        after_seq = seq_of(page.last().expect("non-empty page"));
        entries.extend(page);
    }
    panic!("expected the audit log to end within 10,000 pages");
}

/// Checks the links of the audit chain without recomputing hashes: `seq` is 1, 2, 3, … without
/// gaps, the first `prev_hash` is 64 zeros and every other one is the previous `entry_hash`.
pub(crate) fn assert_audit_chain_is_linked(entries: &[Value]) {
    assert!(!entries.is_empty(), "expected a non-empty audit log");
    let mut prev_hash = "0".repeat(64);
    for (i, entry) in entries.iter().enumerate() {
        let expected_seq = i as u64 + 1;
        assert_eq!(
            seq_of(entry),
            expected_seq,
            "expected contiguous audit seq; entry {entry}"
        );
        assert_eq!(
            entry["prev_hash"].as_str(),
            Some(prev_hash.as_str()),
            "expected prev_hash of seq {expected_seq} to be the previous entry_hash; entry {entry}"
        );
        let entry_hash = entry["entry_hash"].as_str().unwrap_or("");
        assert!(
            entry_hash.len() == 64
                && entry_hash
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')),
            "expected entry_hash of seq {expected_seq} to be 64 lowercase hex chars; entry {entry}"
        );
        prev_hash = entry_hash.to_string();
    }
}

/// The run ids named by `run.created` audit entries (subject `run:<run_id>`).
pub(crate) fn created_run_ids(entries: &[Value]) -> BTreeSet<String> {
    entries
        .iter()
        .filter(|e| e["action"] == "run.created")
        .map(|e| {
            let subject = e["subject"].as_str().unwrap_or("");
            subject
                .strip_prefix("run:")
                .unwrap_or_else(|| panic!("expected run.created subject run:<run_id>, got {e}"))
                .to_string()
        })
        .collect()
}

/// Sends one JSON request on `client`'s connection without the reconnect-and-resend that
/// `Client::send` does, so a write is never sent twice.
pub(crate) fn send_once(
    client: &mut Client,
    method: &str,
    path: &str,
    body: &Value,
) -> std::io::Result<Response> {
    let bytes = serde_json::to_vec(body).expect("encode body");
    client.try_send(
        method,
        path,
        &[("Content-Type", "application/json")],
        &bytes,
    )
}

/// Panics with the response body unless `response` has `status`.
pub(crate) fn expect_status(response: &Response, status: u16, what: &str) {
    assert_eq!(
        response.status,
        status,
        "{what}: expected status {status}, got {} with body {}",
        response.status,
        String::from_utf8_lossy(&response.body)
    );
}

fn array_field(body: &Value, field: &str) -> Vec<Value> {
    body[field]
        .as_array()
        .unwrap_or_else(|| panic!("expected an array field {field:?} in {body}"))
        .clone()
}

fn seq_of(entry: &Value) -> u64 {
    entry["seq"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an integer seq in audit entry {entry}"))
}

fn count_actions(entries: &[Value], action: &str) -> usize {
    entries.iter().filter(|e| e["action"] == action).count()
}

// ---------------------------------------------------------------------------------------------
// The races.
// ---------------------------------------------------------------------------------------------

const N_APPROVERS: usize = 16;
const N_STEP_REQUESTS: usize = 8;
const N_CREATOR_THREADS: usize = 8;
const RUNS_PER_CREATOR: usize = 8;

/// Starts `n` threads, each with its own connection, releases them together with a barrier, and
/// has thread `i` send `request(i)` once. Returns, in thread order, what each one got back.
fn race(
    addr: SocketAddr,
    n: usize,
    request: impl Fn(usize) -> (String, String, Value) + Sync,
) -> Vec<Response> {
    let barrier = Barrier::new(n);
    thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, request) = (&barrier, &request);
                scope.spawn(move || {
                    let (method, path, body) = request(i);
                    let mut client = Client::connect(addr);
                    barrier.wait();
                    send_once(&mut client, &method, &path, &body)
                        .unwrap_or_else(|e| panic!("racer {i}: expected an HTTP response, got {e}"))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("racer thread panicked"))
            .collect()
    })
}

fn statuses(responses: &[Response]) -> Vec<u16> {
    responses.iter().map(|r| r.status).collect()
}

#[test]
fn sixteen_concurrent_approvals_of_one_gate_have_exactly_one_winner() {
    let server = Server::start();
    let mut client = server.client();
    install_workflow(&mut client);
    let run_id = create_run(&mut client);
    let gate_id = open_gate(&mut client, &run_id);
    let gate_path = format!("/workflows/runs/{run_id}/gates/{gate_id}");

    let responses = race(server.addr, N_APPROVERS, |i| {
        (
            "PATCH".into(),
            gate_path.clone(),
            approval_body(&format!("approver-{i}")),
        )
    });

    let winners: Vec<usize> = (0..N_APPROVERS)
        .filter(|&i| responses[i].status == 200)
        .collect();
    assert_eq!(
        winners.len(),
        1,
        "expected exactly one approval to succeed; statuses {:?}",
        statuses(&responses)
    );
    let winner = format!("approver-{}", winners[0]);
    for (i, response) in responses
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != winners[0])
    {
        expect_status(
            response,
            409,
            &format!("the losing approval of approver-{i}"),
        );
        assert_eq!(
            response.error_code(),
            "gate_already_resolved",
            "expected approver-{i} to lose with gate_already_resolved"
        );
    }
    let won = responses[winners[0]].json();
    assert_eq!(
        won["gate"]["status"], "APPROVED",
        "expected the winning answer to show the gate APPROVED: {won}"
    );
    assert_eq!(
        won["gate"]["resolved_by"],
        winner.as_str(),
        "expected the winning answer to name the winner: {won}"
    );

    let run = get_run(&mut client, &run_id);
    let gates = run["gates"].as_array().expect("run embeds gates");
    assert_eq!(
        gates.len(),
        1,
        "expected the run to have exactly one gate: {run}"
    );
    assert_eq!(
        gates[0]["status"], "APPROVED",
        "expected the gate to be APPROVED: {run}"
    );
    assert_eq!(
        gates[0]["resolved_by"],
        winner.as_str(),
        "expected the gate resolved_by the winner {winner}: {run}"
    );

    let logs = run_logs(&mut client, &run_id);
    assert_eq!(
        count_actions(&logs, "gate.resolved"),
        1,
        "expected exactly one gate.resolved entry"
    );
    let refused_actors: BTreeSet<String> = logs
        .iter()
        .filter(|e| e["action"] == "request.refused")
        .map(|e| e["actor"].as_str().unwrap_or("<no actor>").to_string())
        .collect();
    let losers: BTreeSet<String> = (0..N_APPROVERS)
        .filter(|&i| i != winners[0])
        .map(|i| format!("approver-{i}"))
        .collect();
    assert_eq!(
        count_actions(&logs, "request.refused"),
        N_APPROVERS - 1,
        "expected one request.refused entry per losing approval"
    );
    assert_eq!(
        refused_actors, losers,
        "expected the refused approvals to name the losing approvers"
    );

    assert_audit_chain_is_linked(&audit_entries(&mut client));
}

#[test]
fn eight_concurrent_requests_of_the_next_step_record_exactly_one_attempt() {
    let server = Server::start();
    let mut client = server.client();
    install_workflow(&mut client);
    let run_id = create_run(&mut client);
    let steps_path = format!("/workflows/runs/{run_id}/steps");
    let step_id = STEP_IDS[0];

    let responses = race(server.addr, N_STEP_REQUESTS, |_| {
        let body = json!({"step_id": step_id, "input": {"risk": "low"}, "actor": AGENT});
        ("POST".into(), steps_path.clone(), body)
    });

    let created = responses.iter().filter(|r| r.status == 201).count();
    assert_eq!(
        created,
        1,
        "expected exactly one step request to be recorded (201); statuses {:?}",
        statuses(&responses)
    );
    for response in responses.iter().filter(|r| r.status != 201) {
        expect_status(response, 409, "a step request that lost the race");
        assert_eq!(
            response.error_code(),
            "attempt_open",
            "expected the losers to be told an attempt is open"
        );
    }

    let run = get_run(&mut client, &run_id);
    assert_eq!(
        run["status"], "RUNNING",
        "expected the run to be RUNNING after its first step started: {run}"
    );
    let attempts: Vec<&Value> = run["steps"]
        .as_array()
        .expect("run embeds steps")
        .iter()
        .filter(|s| s["step_id"] == step_id)
        .collect();
    assert_eq!(
        attempts.len(),
        1,
        "expected exactly one attempt of {step_id}: {run}"
    );
    assert_eq!(
        attempts[0]["attempt"].as_u64(),
        Some(1),
        "expected it to be attempt 1: {run}"
    );
    assert_eq!(
        attempts[0]["status"], "STARTED",
        "expected the one attempt to be STARTED: {run}"
    );
    let decisions = run["decisions"].as_array().expect("run embeds decisions");
    assert_eq!(decisions.len(), 1, "expected exactly one decision: {run}");

    let logs = run_logs(&mut client, &run_id);
    assert_eq!(
        count_actions(&logs, "step.started"),
        1,
        "expected exactly one step.started entry"
    );
    assert_eq!(
        count_actions(&logs, "request.refused"),
        N_STEP_REQUESTS - 1,
        "expected one request.refused entry per losing step request"
    );
    assert_audit_chain_is_linked(&audit_entries(&mut client));
}

#[test]
fn sixty_four_runs_created_from_eight_threads_are_all_kept_and_listed() {
    let server = Server::start();
    let mut client = server.client();
    install_workflow(&mut client);
    let addr = server.addr;
    let barrier = Barrier::new(N_CREATOR_THREADS);

    let run_ids: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = (0..N_CREATOR_THREADS)
            .map(|t| {
                let barrier = &barrier;
                scope.spawn(move || {
                    let mut client = Client::connect(addr);
                    barrier.wait();
                    (0..RUNS_PER_CREATOR)
                        .map(|k| {
                            let response =
                                send_once(&mut client, "POST", "/workflows/runs", &new_run_body())
                                    .unwrap_or_else(|e| {
                                        panic!("creator {t}, run {k}: expected a response, got {e}")
                                    });
                            expect_status(&response, 201, &format!("creator {t} creating run {k}"));
                            run_id_of(&response)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("creator thread panicked"))
            .collect()
    });

    let n_runs = N_CREATOR_THREADS * RUNS_PER_CREATOR;
    let distinct: BTreeSet<String> = run_ids.iter().cloned().collect();
    assert_eq!(
        distinct.len(),
        n_runs,
        "expected {n_runs} distinct run_ids, got {run_ids:?}"
    );

    let listed = list_run_ids(&mut client, WORKFLOW_ID);
    let listed_set: BTreeSet<String> = listed.iter().cloned().collect();
    assert_eq!(
        listed.len(),
        n_runs,
        "expected the list to hold each of the {n_runs} runs once: {listed:?}"
    );
    assert_eq!(
        listed_set, distinct,
        "expected the listed runs to be exactly the created ones"
    );

    let entries = audit_entries(&mut client);
    assert_audit_chain_is_linked(&entries);
    assert_eq!(
        created_run_ids(&entries),
        distinct,
        "expected one run.created audit entry per created run"
    );

    // Requests that arrived together were committed together (group commit); the chain and
    // every receipt must still verify exactly.
    let mut server = server;
    assert_eq!(server.terminate(), Some(0), "expected a clean shutdown");
    let (code, stdout, stderr) =
        crate::support::run_cli(&["verify", "--db", server.db.to_str().unwrap()]);
    assert_eq!(
        code, 0,
        "expected the database to verify after the burst: {stdout} {stderr}"
    );
}
