//! The workflows of `fedcore bench load`, run in process through the writer's jobs: each command
//! is a `CommandJob` in its own savepoint of its own transaction, encoded as the route encodes
//! it, at a clock that moves by a millisecond per command. No HTTP, no threads, no wall clock,
//! so that the writer's cost per workflow can be counted exactly:
//!
//! ```text
//! FEDCORE_WORKLOAD_RUNS=200 valgrind --tool=callgrind \
//!     --toggle-collect='fedcore::http::workload::Harness::run' \
//!     target/release/deps/fedcore-… the_benchmark_workflows_run_through_the_writer_jobs
//! ```
//!
//! Only `Harness::run` (transaction, engine; encoding too under an idempotency key) is counted: the setup and the checks
//! of the answers are not.
//!
//! The same harness drives the writer job's own tests (a new policy version, idempotency keys).

use super::request::Idempotency;
use super::{routes, ApiError, CommandJob, Done, Encoder, Keyed};
use crate::bench::seed::Shape;
use crate::engine::signing::Signer;
use crate::engine::{Command, StepResult};
use crate::model::{RunStatus, Timestamp};
use crate::store;
use axum::http::StatusCode;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::oneshot;

const AGENT: &str = "bench-agent";
const APPROVER: &str = "bench-approver";
const ADMIN: &str = "admin";
const WORKFLOW: &str = "bench_5step";
const STEPS: [&str; 5] = ["observe", "decide", "gate", "act", "transform"];
const DECIDING_STEP: &str = "decide";

/// A write connection over a database in its own temporary folder, and the writer's clock.
struct Harness {
    dir: PathBuf,
    conn: store::WriteConnection,
    signer: Arc<Signer>,
    micros: i64,
    /// The `Idempotency-Key` every command is sent with, if any.
    idempotency: Option<Idempotency>,
    /// The token every command is made under, checked by each job as on the server.
    token_id: String,
}

impl Harness {
    fn new(name: &str) -> Harness {
        let dir = std::env::temp_dir().join(format!("fedcore-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("work.db");
        let conn = store::open_for_writing(&db).unwrap();
        store::set_durability(&conn, store::Durability::Normal).unwrap();
        // As on the writer thread, no commit copies the WAL back into the file.
        conn.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
        let signer = super::open_signer(&conn, &db, Some(&dir.join("work.key"))).unwrap();
        let micros = 1_795_428_000_000_000;
        let token = Command::CreateToken {
            name: AGENT.into(),
            role: crate::model::Role::Agent,
            token_hash: crate::secret::token_hash("fc_workload"),
            actor: crate::engine::SYSTEM_ACTOR.into(),
        };
        let made = store::write_once(&conn, |tx| {
            crate::engine::apply(tx, Timestamp::from_micros(micros), &signer, &token)
        });
        let Ok(Ok(crate::engine::Outcome::Token(token))) = made else {
            panic!("the workload's token: {made:?}");
        };
        Harness {
            dir,
            conn,
            signer: Arc::new(signer),
            micros,
            idempotency: None,
            token_id: token.token_id,
        }
    }

    /// Runs `command` as the writer runs a job, and answers with its status and body, encoded
    /// as the request's task encodes it (outside `run`, as on the server).
    fn apply(&mut self, command: Command, encode: Encoder) -> (StatusCode, Vec<u8>) {
        let (done, encode) = self.run(command, encode);
        let answer = done.and_then(|done| done.into_answer(&encode));
        match answer {
            Ok(answer) => (answer.status, answer.body),
            Err(e) => (e.status, serde_json::to_vec(&e.body()).unwrap()),
        }
    }

    /// What the writer thread does for `command`: its transaction, engine and answer if any.
    #[inline(never)]
    fn run(&mut self, command: Command, encode: Encoder) -> (Result<Done, ApiError>, Encoder) {
        self.micros += 1000;
        let now = Timestamp::from_micros(self.micros);
        let (reply, _answer) = oneshot::channel();
        let job = CommandJob {
            token_id: Some(self.token_id.clone()),
            command,
            signer: self.signer.clone(),
            idempotency: self.idempotency.clone(),
            encode,
            result: None,
            reply,
            gone: None,
        };
        let answer = store::write_once(&self.conn, |tx| {
            tx.savepoint("job").unwrap();
            let (answer, commit) = job.execute(tx, now);
            match commit {
                true => tx.release_savepoint("job").unwrap(),
                false => tx.rollback_to_savepoint("job").unwrap(),
            }
            (answer, commit)
        })
        .unwrap();
        (answer, job.encode)
    }

    /// Applies `command` and checks the status of its answer, which it returns parsed.
    fn expect(&mut self, command: Command, encode: Encoder, status: StatusCode) -> Value {
        let (got, body) = self.apply(command, encode);
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(got, status, "{body}");
        body
    }

    /// The agent, the policy and the five-step definition of the benchmark.
    fn set_up(&mut self) {
        let doc = |value: Value| -> Map<String, Value> {
            match value {
                Value::Object(map) => map,
                _ => unreachable!(),
            }
        };
        self.expect(
            Command::PutAgent {
                agent_id: AGENT.into(),
                doc: doc(
                    json!({"status":"active","capabilities":["observe","deploy"],"tier":"T2"}),
                ),
                actor: ADMIN.into(),
            },
            null_with(StatusCode::OK),
            StatusCode::OK,
        );
        self.expect(
            Command::PutPolicy {
                policy_id: "bench_policy".into(),
                doc: doc(json!({"tier":"T2","default_effect":"deny","rules":[
                  {"rule_id":"deny-critical","effect":"deny","reason":"critical-risk actions are forbidden",
                   "when":{"path":"input.risk","eq":"critical"}},
                  {"rule_id":"flag-high","effect":"flag","reason":"high-risk actions need a human",
                   "when":{"any":[{"path":"input.risk","eq":"high"},{"path":"input.amount","gt":10000}]}},
                  {"rule_id":"allow-registered","effect":"allow","reason":"registered active agent",
                   "when":{"path":"agent.status","eq":"active"}}]})),
                actor: ADMIN.into(),
            },
            null_with(StatusCode::OK),
            StatusCode::OK,
        );
        let steps: Vec<Value> = STEPS
            .iter()
            .map(|s| json!({"step_id": s, "step_type": s.to_uppercase()}))
            .collect();
        self.expect(
            Command::PutDefinition {
                workflow_id: WORKFLOW.into(),
                doc: doc(json!({"policy_id": "bench_policy", "steps": steps})),
                actor: ADMIN.into(),
            },
            null_with(StatusCode::OK),
            StatusCode::OK,
        );
    }

    /// Workflow `n` as the benchmark runs it: 1 in 20 denied at `decide`, 1 in 10 flagged there
    /// (approved, then resumed), the others allowed throughout. Returns the effect at `decide`.
    fn workflow(&mut self, n: u64) -> &'static str {
        let shape = Shape::of(n);
        let fate = shape.effect();
        let created = self.expect(
            Command::CreateRun {
                workflow_id: WORKFLOW.into(),
                input: json!({ "n": n }),
                actor: AGENT.into(),
            },
            Box::new(routes::created_run),
            StatusCode::CREATED,
        );
        let run_id = created["run_id"].as_str().unwrap().to_string();
        for step in STEPS {
            let deciding = step == DECIDING_STEP;
            let input = match deciding {
                true => json!({"n": n, "risk": shape.risk()}),
                false => json!({ "n": n }),
            };
            let answer = self.expect(
                Command::RequestStep {
                    run_id: run_id.clone(),
                    step_id: step.into(),
                    input,
                    actor: AGENT.into(),
                },
                Box::new(routes::requested_step),
                StatusCode::CREATED,
            );
            let expected = if deciding { fate } else { "allow" };
            assert_eq!(answer["decision"]["effect"], expected, "{answer}");
            if deciding && fate == "deny" {
                assert_eq!(answer["run"]["status"], "FAILED");
                return fate;
            }
            if deciding && fate == "flag" {
                let gate_id = answer["gate"]["gate_id"].as_str().unwrap().to_string();
                self.expect(
                    Command::ResolveGate {
                        run_id: run_id.clone(),
                        gate_id,
                        approve: true,
                        comment: None,
                        actor: APPROVER.into(),
                    },
                    Box::new(routes::resolved_gate),
                    StatusCode::OK,
                );
                self.expect(
                    Command::ChangeStatus {
                        run_id: run_id.clone(),
                        status: RunStatus::Running,
                        reason: None,
                        actor: ADMIN.into(),
                    },
                    Box::new(routes::changed_run),
                    StatusCode::OK,
                );
            }
            let finished = self.expect(
                Command::FinishStep {
                    run_id: run_id.clone(),
                    step_id: step.into(),
                    result: StepResult::Completed {
                        output: json!({ "n": n }),
                    },
                    actor: AGENT.into(),
                },
                Box::new(routes::finished_step),
                StatusCode::OK,
            );
            assert_eq!(finished["step"]["status"], "COMPLETED");
        }
        fate
    }
}

/// An encoder that answers `status` with `null`, for commands whose answer a test does not read.
fn null_with(status: StatusCode) -> Encoder {
    Box::new(move |_| Ok((status, b"null".to_vec())))
}

impl Drop for Harness {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn the_benchmark_workflows_run_through_the_writer_jobs() {
    let runs: u64 = std::env::var("FEDCORE_WORKLOAD_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(20);
    let mut harness = Harness::new("workload");
    harness.set_up();
    let fates: Vec<&str> = (0..runs).map(|n| harness.workflow(n)).collect();
    let count = |fate| fates.iter().filter(|f| **f == fate).count() as u64;
    assert_eq!(count("deny"), runs.div_ceil(20));
}

#[test]
fn a_new_policy_version_decides_the_next_step_though_the_last_one_was_kept() {
    let mut harness = Harness::new("policy-version");
    harness.set_up();
    assert_eq!(harness.workflow(1), "allow");
    let doc = json!({"tier": "T3", "default_effect": "deny", "rules": []});
    let Value::Object(doc) = doc else {
        unreachable!()
    };
    harness.expect(
        Command::PutPolicy {
            policy_id: "bench_policy".into(),
            doc,
            actor: ADMIN.into(),
        },
        null_with(StatusCode::OK),
        StatusCode::OK,
    );
    let created = harness.expect(
        Command::CreateRun {
            workflow_id: WORKFLOW.into(),
            input: json!({"n": 2}),
            actor: AGENT.into(),
        },
        Box::new(routes::created_run),
        StatusCode::CREATED,
    );
    let answer = harness.expect(
        Command::RequestStep {
            run_id: created["run_id"].as_str().unwrap().to_string(),
            step_id: STEPS[0].into(),
            input: json!({"n": 2}),
            actor: AGENT.into(),
        },
        Box::new(routes::requested_step),
        StatusCode::CREATED,
    );
    assert_eq!(answer["decision"]["effect"], "deny", "{answer}");
    assert_eq!(answer["decision"]["policy_version"], 2, "{answer}");
    assert_eq!(answer["decision"]["tier"], "T3", "{answer}");
}

#[test]
fn under_an_idempotency_key_a_server_error_keeps_nothing_and_the_retry_acts_once() {
    let mut harness = Harness::new("idempotency-5xx");
    harness.set_up();
    let count = |harness: &Harness, table: &str| -> i64 {
        let sql = format!("SELECT count(*) FROM {table}");
        harness.conn.query_row(&sql, [], |r| r.get(0)).unwrap()
    };
    let entries = count(&harness, "audit_log");
    let create = || Command::CreateRun {
        workflow_id: WORKFLOW.into(),
        input: json!({"n": 1}),
        actor: AGENT.into(),
    };
    harness.idempotency = Some(Idempotency {
        actor: AGENT.into(),
        key: "create-1".into(),
        request_hash: "ab".repeat(32),
    });

    // The run is created, then its answer cannot be encoded: 500, and nothing of it is kept.
    let (status, _) = harness.apply(
        create(),
        Box::new(|_| Err(ApiError::internal("the answer could not be encoded"))),
    );
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(count(&harness, "runs"), 0);
    assert_eq!(count(&harness, "audit_log"), entries);
    assert_eq!(count(&harness, "idempotency"), 0);

    // The retry creates the run once, and a second retry replays that answer.
    let (status, first) = harness.apply(create(), Box::new(routes::created_run));
    assert_eq!(status, StatusCode::CREATED);
    let (status, again) = harness.apply(create(), Box::new(routes::created_run));
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(again, first);
    assert_eq!(count(&harness, "runs"), 1);
    assert_eq!(count(&harness, "idempotency"), 1);
}

#[test]
fn under_an_idempotency_key_what_is_committed_and_what_is_remembered() {
    use crate::engine::{Error, Outcome};
    let ok: Encoder = Box::new(|_| Ok((StatusCode::OK, b"{}".to_vec())));
    let broken: Encoder = Box::new(|_| Err(ApiError::internal("no answer")));
    fn done() -> Result<Outcome, Error> {
        Ok(Outcome::Expired { n_runs: 0 })
    }
    fn refused() -> Result<Outcome, Error> {
        Err(Error::Forbidden {
            code: "self_approval",
            message: "no".into(),
        })
    }
    fn failed() -> Result<Outcome, Error> {
        Err(Error::Store(store::StoreError::Transaction(
            "disk full".into(),
        )))
    }
    type Engine = fn() -> Result<Outcome, Error>;
    /// The answer's status, whether the job commits, whether the answer is remembered.
    type Expected = (u16, bool, bool);
    // What the engine did, whether it asked to commit, the encoder; then the answer's status,
    // whether the job commits and whether the answer is remembered.
    let cases: [(&str, Engine, bool, &Encoder, Expected); 6] = [
        ("a success", done, true, &ok, (200, true, true)),
        (
            "a success whose answer failed: the change goes too",
            done,
            true,
            &broken,
            (500, false, false),
        ),
        ("a recorded refusal", refused, true, &ok, (403, true, true)),
        (
            "a refusal that wrote nothing",
            refused,
            false,
            &ok,
            (403, false, false),
        ),
        (
            "a failure after a gate expired on the way: the expiry stays, the answer is not kept",
            failed,
            true,
            &ok,
            (500, true, false),
        ),
        ("a failure", failed, false, &ok, (500, false, false)),
    ];
    for (case, engine, commit, encode, expected) in cases {
        let keyed = Keyed::of(engine(), commit, encode);
        let status = match &keyed.answer {
            Ok(answer) => answer.status.as_u16(),
            Err(e) => e.status.as_u16(),
        };
        assert_eq!((status, keyed.commit, keyed.remember), expected, "{case}");
    }
}

#[test]
fn a_job_whose_request_guard_gave_up_is_abandoned_though_its_answer_is_still_awaited() {
    use crate::store::Job;
    use std::sync::atomic::{AtomicBool, Ordering};
    let harness = Harness::new("abandoned");
    let (reply, _answer) = oneshot::channel();
    let gone = Arc::new(AtomicBool::new(false));
    let job = CommandJob {
        token_id: None,
        command: Command::RevokeTokens {
            name: "nobody".into(),
            actor: ADMIN.into(),
        },
        signer: harness.signer.clone(),
        idempotency: None,
        encode: null_with(StatusCode::OK),
        result: None,
        reply,
        gone: Some(gone.clone()),
    };
    assert!(!job.abandoned(), "the request still waits");
    // The guard sets the flag before it answers 503, while the handler still holds the answer's
    // receiving end: the writer must skip the job already.
    gone.store(true, Ordering::Release);
    assert!(job.abandoned());
}

#[test]
fn a_run_declared_failed_twice_within_one_clock_tick_verifies() {
    // The writer's clock never goes back, so after the wall clock steps back every command
    // shares one time for a while: times alone cannot tell the failure's step.
    let mut harness = Harness::new("declared-one-tick");
    harness.set_up();
    let created = harness.expect(
        Command::CreateRun {
            workflow_id: WORKFLOW.into(),
            input: json!({}),
            actor: AGENT.into(),
        },
        Box::new(routes::created_run),
        StatusCode::CREATED,
    );
    let run_id = created["run_id"].as_str().unwrap().to_string();
    let tick = harness.micros;
    let at_one_tick = |harness: &mut Harness, command: Command| {
        harness.micros = tick;
        harness.expect(command, null_with(StatusCode::OK), StatusCode::OK);
    };
    let status = |status| Command::ChangeStatus {
        run_id: run_id.clone(),
        status,
        reason: None,
        actor: ADMIN.into(),
    };
    harness.micros = tick - 1000;
    harness.expect(
        Command::RequestStep {
            run_id: run_id.clone(),
            step_id: STEPS[0].into(),
            input: json!({}),
            actor: AGENT.into(),
        },
        null_with(StatusCode::CREATED),
        StatusCode::CREATED,
    );
    // Declared with the attempt open (it ends FAILED, run_ended), retried, declared again
    // with none open: the two ends share one time.
    at_one_tick(&mut harness, status(RunStatus::Failed));
    at_one_tick(&mut harness, status(RunStatus::Running));
    at_one_tick(&mut harness, status(RunStatus::Failed));
    let db = harness.dir.join("work.db");
    let report =
        crate::engine::verify::verify_file(&db, &crate::engine::verify::Options::default())
            .unwrap();
    assert!(report.is_intact(), "{report}");
}
