//! `fedcore proof`: the PT-004 proof of contract §9. It starts a real server on a free loopback
//! port over a fresh database and, as an agent and a separate approver would, drives the PT-004
//! workflow over HTTP through Tests A (all allow), B (flag, second-person approval, resume) and C
//! (deny, fail closed). Then it exports each run's receipts, runs the verifier on the database and
//! on each exported folder, shows that a tampered copy is caught and that the triggers refuse a
//! direct edit, and writes the report. Every claim in the report is a recorded check.

mod client;
mod report;

use crate::engine::signing::PublicKey;
use crate::engine::verify::{self, Options, Report};
use crate::http::{server::ServerConfig, Background, ServeOptions};
use crate::{export, store};
use client::{Answer, Client};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

pub const AGENT: &str = "agent-7";
pub const APPROVER: &str = "approver-1";
pub const ADMIN: &str = "admin";
pub const POLICY_ID: &str = "pt004_governance";
pub const WORKFLOW_ID: &str = "pt004_execution_spine";
pub const STEPS: [(&str, &str); 5] = [
    ("observe", "OBSERVE"),
    ("decide", "DECIDE"),
    ("gate", "GATE"),
    ("act", "ACT"),
    ("transform", "TRANSFORM"),
];

/// The folder, under `--out`, that holds the proof's database and exported receipts.
pub const PROOF_DIR: &str = "PT-004_workflow_orchestration";
/// The report's file name, under `--out`.
pub const REPORT_FILE: &str = "PT-004_workflow_orchestration_PROOF_REPORT.md";

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("{0}")]
    Serve(#[from] crate::http::ServeError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the proof's signing key: {0}")]
    Key(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ProofError {
    let what = what.into();
    move |source| ProofError::Io { what, source }
}

/// One claim the proof checked, and what it saw.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// One scenario's run as the API showed it at the end, with its checks.
#[derive(Debug, Clone)]
pub struct Scenario {
    pub title: &'static str,
    pub key: &'static str,
    pub run_id: String,
    pub run: Value,
    pub logs: Vec<Value>,
    pub receipt: Value,
    pub checks: Vec<Check>,
}

/// Everything the report is written from.
#[derive(Debug, Clone)]
pub struct Proof {
    pub started_at: String,
    pub git_sha: String,
    pub binary_sha256: String,
    pub out: PathBuf,
    pub db: PathBuf,
    pub policy: Value,
    pub definition: Value,
    pub scenarios: Vec<Scenario>,
    /// The verifier on the database: its checks and printed summary.
    pub verify_db: (Check, String),
    /// The verifier on each exported folder.
    pub verify_folders: Vec<(PathBuf, Check)>,
    /// Extra scenarios: a tampered copy caught, a direct UPDATE refused.
    pub negative: Vec<Check>,
    /// The server's verifier key, as `fedcore key show` prints it.
    pub public_key: String,
    /// The latest signed checkpoint was found and opens under the public key; its note.
    pub signatures: (Check, Option<String>),
}

impl Proof {
    pub fn checks(&self) -> impl Iterator<Item = &Check> {
        self.scenarios
            .iter()
            .flat_map(|s| s.checks.iter())
            .chain(std::iter::once(&self.verify_db.0))
            .chain(std::iter::once(&self.signatures.0))
            .chain(self.verify_folders.iter().map(|(_, c)| c))
            .chain(self.negative.iter())
    }

    pub fn passed(&self) -> bool {
        self.checks().all(|c| c.passed)
    }

    pub fn report_path(&self) -> PathBuf {
        self.out.join(REPORT_FILE)
    }
}

/// Runs the whole proof into `out` and writes the report there.
pub fn run(out: &Path) -> Result<Proof, ProofError> {
    let started_at = crate::http::now().to_string();
    // The commit the binary was built from (build.rs), not the folder the proof runs in.
    let git_sha = env!("FEDCORE_BUILD_COMMIT").to_string();
    let dir = out.join(PROOF_DIR);
    if dir.exists() {
        // The proof's own output folder: a proof always starts from a fresh database.
        std::fs::remove_dir_all(&dir).map_err(io(format!("remove {}", dir.display())))?;
    }
    std::fs::create_dir_all(dir.join("receipts"))
        .map_err(io(format!("create {}", dir.display())))?;
    let db = dir.join("pt004.db");
    // The proof's signing key lives outside the committed proof folder and dies with the proof:
    // the report keeps its public key, which is all a verifier needs.
    let key_file = std::env::temp_dir().join(format!("fedcore-proof-{}.key", std::process::id()));
    let _ = std::fs::remove_file(&key_file);

    let server = Background::start(ServeOptions {
        db: db.clone(),
        listen: "127.0.0.1:0".parse().expect("a loopback address"),
        server: ServerConfig::default(),
        key: Some(key_file.clone()),
        durability: store::Durability::Full,
        bench_ceiling: false,
    })?;
    let admin_file = crate::http::admin_token_path(&db);
    let admin_token = std::fs::read_to_string(&admin_file)
        .map_err(io(format!("read {}", admin_file.display())))?
        .trim()
        .to_string();
    let client =
        Client::connect(server.addr, admin_token).map_err(io("connect to the proof server"))?;
    let mut driver = Driver {
        c: client,
        checks: Vec::new(),
    };
    let (policy, definition) = driver.register();
    let setup_checks = std::mem::take(&mut driver.checks);
    let mut scenarios = vec![driver.test_a(), driver.test_b(), driver.test_c()];
    scenarios[0].checks.splice(0..0, setup_checks);
    server.stop()?;
    // The admin token is a credential for this database: it is not evidence, and the proof
    // folder is committed, so it goes with the server.
    let _ = std::fs::remove_file(&admin_file);
    let public_key = crate::keyfile::load(&key_file)
        .map(|signer| signer.public_key().clone())
        .map_err(|e| ProofError::Key(e.to_string()));
    let _ = std::fs::remove_file(&key_file);
    let public_key = public_key?;
    let signatures = signature_check(&db, &public_key);

    let mut verify_folders = Vec::new();
    for s in &scenarios {
        let folder = dir.join("receipts").join(format!("{}-{}", s.key, s.run_id));
        let check = match export::export_run(&db, &s.run_id, &folder) {
            Ok(_) => verify_folder_check(&folder, &public_key),
            Err(e) => Check {
                name: format!("export {}", s.key),
                passed: false,
                detail: e.to_string(),
            },
        };
        verify_folders.push((folder, check));
    }
    let verify_db = verify_db_check(&db, &public_key);
    let negative = negative_scenarios(&db, &scenarios);

    let proof = Proof {
        started_at,
        git_sha,
        binary_sha256: binary_sha256(),
        out: out.to_path_buf(),
        db,
        policy,
        definition,
        scenarios,
        verify_db,
        verify_folders,
        negative,
        public_key: public_key.to_string(),
        signatures,
    };
    let text = report::render(&proof);
    std::fs::write(proof.report_path(), text)
        .map_err(io(format!("write {}", proof.report_path().display())))?;
    Ok(proof)
}

/// The client side of the scenarios: every request is a recorded check.
struct Driver {
    c: Client,
    checks: Vec<Check>,
}

impl Driver {
    fn check(&mut self, name: impl Into<String>, passed: bool, detail: impl Into<String>) -> bool {
        self.checks.push(Check {
            name: name.into(),
            passed,
            detail: detail.into(),
        });
        passed
    }

    /// Sends a request and checks its status; returns the body (`null` on transport failure).
    fn call(
        &mut self,
        what: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
        status: u16,
    ) -> Value {
        match self.c.send(method, path, body.as_ref()) {
            Ok(Answer { status: got, body }) => {
                let detail = if got == status {
                    format!("{got}")
                } else {
                    format!("{got}: {body}")
                };
                self.check(format!("{what} → {status}"), got == status, detail);
                body
            }
            Err(e) => {
                self.check(
                    format!("{what} → {status}"),
                    false,
                    format!("transport error: {e}"),
                );
                Value::Null
            }
        }
    }

    fn get(&mut self, what: &str, path: &str) -> Value {
        self.call(what, "GET", path, None, 200)
    }

    /// Makes the agent's and the approver's tokens through the admin API, acting as the admin
    /// whose token `serve` wrote beside the new database. From here on each request carries the
    /// token of the actor it names: the agent acts as `agent-7`, the approver as `approver-1`,
    /// and the setup and the resume as `admin`.
    fn make_tokens(&mut self) {
        for (name, role) in [(AGENT, "agent"), (APPROVER, "approver")] {
            let made = self.call(
                &format!("the admin creates the {role} token {name}"),
                "POST",
                "/tokens",
                Some(json!({"name": name, "role": role})),
                201,
            );
            let token = made["token"].as_str().unwrap_or_default().to_string();
            self.check(
                format!("token {name} acts with role {role}"),
                made["name"] == name && made["role"] == role && token.starts_with("fc_"),
                format!(
                    "name {}, role {}, token_id {}",
                    made["name"], made["role"], made["token_id"]
                ),
            );
            self.c.add_token(name, token);
        }
    }

    fn register(&mut self) -> (Value, Value) {
        self.make_tokens();
        let agent = json!({"status": "active", "capabilities": ["observe", "decide", "act", "transform"], "tier": "T2", "actor": ADMIN});
        self.call(
            "register agent-7",
            "PUT",
            &format!("/registry/agents/{AGENT}"),
            Some(agent),
            200,
        );
        let policy = json!({
            "policy_id": POLICY_ID, "tier": "T2", "default_effect": "deny", "actor": ADMIN,
            "rules": [
                {"rule_id": "deny-critical", "effect": "deny", "reason": "critical-risk actions are forbidden",
                 "when": {"path": "input.risk", "eq": "critical"}},
                {"rule_id": "flag-high", "effect": "flag", "reason": "high-risk actions need a human",
                 "when": {"any": [{"path": "input.risk", "eq": "high"}, {"path": "input.amount", "gt": 10000}]}},
                {"rule_id": "allow-registered", "effect": "allow", "reason": "registered active agent",
                 "when": {"path": "agent.status", "eq": "active"}}]});
        let policy = self.call(
            "store the pt004_governance policy",
            "PUT",
            &format!("/policies/{POLICY_ID}"),
            Some(policy),
            201,
        );
        let steps: Vec<Value> = STEPS
            .iter()
            .map(|(id, ty)| json!({"step_id": id, "step_type": ty}))
            .collect();
        let definition = json!({"workflow_id": WORKFLOW_ID, "policy_id": POLICY_ID, "steps": steps, "actor": ADMIN});
        let definition = self.call(
            "store the pt004_execution_spine workflow",
            "PUT",
            &format!("/workflows/definitions/{WORKFLOW_ID}"),
            Some(definition),
            201,
        );
        (policy, definition)
    }

    fn create_run(&mut self, scenario: &str) -> String {
        let body = json!({"workflow_id": WORKFLOW_ID, "input": {"scenario": scenario, "ticket": format!("PT-004-{scenario}")}, "actor": AGENT});
        let run = self.call(
            &format!("create the Test {scenario} run"),
            "POST",
            "/workflows/runs",
            Some(body),
            201,
        );
        run["run_id"].as_str().unwrap_or_default().to_string()
    }

    fn request(&mut self, run_id: &str, step_id: &str, input: Value, status: u16) -> Value {
        let body = json!({"step_id": step_id, "input": input, "actor": AGENT});
        self.call(
            &format!("request step {step_id}"),
            "POST",
            &format!("/workflows/runs/{run_id}/steps"),
            Some(body),
            status,
        )
    }

    fn complete(&mut self, run_id: &str, step_id: &str) -> Value {
        let body = json!({"status": "COMPLETED", "output": {"step_id": step_id, "result": "done"}, "actor": AGENT});
        self.call(
            &format!("complete step {step_id}"),
            "PATCH",
            &format!("/workflows/runs/{run_id}/steps/{step_id}"),
            Some(body),
            200,
        )
    }

    /// Requests a step the policy must allow and completes it.
    fn allowed_step(&mut self, run_id: &str, step_id: &str) {
        let answer = self.request(run_id, step_id, json!({"risk": "low", "amount": 100}), 201);
        self.check(
            format!("step {step_id} is allowed and started"),
            answer["decision"]["effect"] == "allow"
                && answer["step"]["status"] == "STARTED"
                && answer["gate"].is_null(),
            format!(
                "effect {}, attempt {}, gate {}",
                answer["decision"]["effect"], answer["step"]["status"], answer["gate"]
            ),
        );
        self.complete(run_id, step_id);
    }

    fn finish(&mut self, title: &'static str, key: &'static str, run_id: String) -> Scenario {
        let run = self.get("read the run", &format!("/workflows/runs/{run_id}"));
        let logs = self.get(
            "read the run's audit log",
            &format!("/workflows/runs/{run_id}/logs"),
        );
        let receipt = self.get(
            "read the workflow receipt",
            &format!("/workflows/runs/{run_id}/receipt"),
        );
        self.check(
            "the workflow receipt is the run's receipt_hash",
            receipt["receipt_hash"].is_string() && receipt["receipt_hash"] == run["receipt_hash"],
            format!("{}", receipt["receipt_hash"]),
        );
        // The workflow receipt lists each finished attempt's receipt, in the order they finished,
        // and each attempt's receipt chains to the one before it, starting at the genesis.
        let finished: Vec<&Value> = run["steps"]
            .as_array()
            .map(|s| s.iter().filter(|s| s["receipt_hash"].is_string()).collect())
            .unwrap_or_default();
        let hashes: Vec<Value> = finished.iter().map(|s| s["receipt_hash"].clone()).collect();
        let mut previous = run["genesis_hash"].clone();
        let linked = finished.iter().all(|s| {
            let ok = s["prev_receipt_hash"] == previous;
            previous = s["receipt_hash"].clone();
            ok
        });
        self.check(
            "the workflow receipt lists every finished attempt's receipt, chained from the genesis",
            receipt["receipt"]["step_receipts"] == Value::Array(hashes) && linked,
            format!(
                "{} step receipts, each linked to the one before",
                finished.len()
            ),
        );
        Scenario {
            title,
            key,
            run_id,
            run,
            logs: logs["entries"].as_array().cloned().unwrap_or_default(),
            receipt,
            checks: std::mem::take(&mut self.checks),
        }
    }

    fn test_a(&mut self) -> Scenario {
        let run_id = self.create_run("A");
        for (step_id, _) in STEPS {
            self.allowed_step(&run_id, step_id);
        }
        let run = self.get("read the run", &format!("/workflows/runs/{run_id}"));
        self.check(
            "Test A: the run is COMPLETED",
            run["status"] == "COMPLETED",
            format!("{}", run["status"]),
        );
        self.check(
            "Test A: no gate was opened",
            run["gates"].as_array().is_some_and(Vec::is_empty),
            format!("{} gates", run["gates"].as_array().map_or(0, Vec::len)),
        );
        self.finish(
            "Test A — happy path: every decision allow",
            "test-a",
            run_id,
        )
    }

    fn test_b(&mut self) -> Scenario {
        let run_id = self.create_run("B");
        self.allowed_step(&run_id, "observe");
        let flagged = self.request(
            &run_id,
            "decide",
            json!({"risk": "high", "amount": 25000}),
            201,
        );
        self.check(
            "Test B: the high-risk step is flagged",
            flagged["decision"]["effect"] == "flag",
            format!(
                "effect {}, rules {}",
                flagged["decision"]["effect"], flagged["decision"]["rules_triggered"]
            ),
        );
        self.check(
            "Test B: the attempt awaits approval and the run is PAUSED",
            flagged["step"]["status"] == "AWAITING_APPROVAL"
                && flagged["run"]["status"] == "PAUSED",
            format!(
                "attempt {}, run {}",
                flagged["step"]["status"], flagged["run"]["status"]
            ),
        );
        self.check(
            "Test B: fedcore opened a PENDING gate requested by the agent",
            flagged["gate"]["status"] == "PENDING" && flagged["gate"]["requested_by"] == AGENT,
            format!(
                "gate {} {}",
                flagged["gate"]["gate_id"], flagged["gate"]["status"]
            ),
        );
        let gate_id = flagged["gate"]["gate_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let gate_path = format!("/workflows/runs/{run_id}/gates/{gate_id}");
        let paused_step = self.request(&run_id, "gate", json!({}), 409);
        self.check(
            "Test B: a paused run accepts no step",
            paused_step["error"]["code"] == "run_not_active",
            format!("{}", paused_step["error"]["code"]),
        );
        let own = self.call(
            "the agent approves its own gate",
            "PATCH",
            &gate_path,
            Some(json!({"decision": "approve", "actor": AGENT})),
            403,
        );
        self.check(
            "Test B: the agent may not approve its own gate (its token's role is agent)",
            own["error"]["code"] == "forbidden_role",
            format!("{}", own["error"]["code"]),
        );
        let approved = self.call(
            "a second person approves the gate",
            "PATCH",
            &gate_path,
            Some(json!({"decision": "approve", "comment": "reviewed: amount within budget", "actor": APPROVER})),
            200,
        );
        self.check(
            "Test B: the gate is APPROVED by approver-1",
            approved["gate"]["status"] == "APPROVED" && approved["gate"]["resolved_by"] == APPROVER,
            format!(
                "gate {}, resolved_by {}",
                approved["gate"]["status"], approved["gate"]["resolved_by"]
            ),
        );
        self.call(
            "resume the run",
            "PATCH",
            &format!("/workflows/runs/{run_id}/status"),
            Some(json!({"status": "RUNNING", "reason": "gate approved", "actor": ADMIN})),
            200,
        );
        let run = self.get("read the run", &format!("/workflows/runs/{run_id}"));
        let decide = run["steps"]
            .as_array()
            .and_then(|s| s.iter().find(|s| s["step_id"] == "decide"))
            .cloned()
            .unwrap_or(Value::Null);
        self.check(
            "Test B: after resume the approved attempt is STARTED",
            decide["status"] == "STARTED",
            format!("{}", decide["status"]),
        );
        self.complete(&run_id, "decide");
        for step_id in ["gate", "act", "transform"] {
            self.allowed_step(&run_id, step_id);
        }
        let run = self.get("read the run", &format!("/workflows/runs/{run_id}"));
        self.check(
            "Test B: the run is COMPLETED",
            run["status"] == "COMPLETED",
            format!("{}", run["status"]),
        );
        self.finish(
            "Test B — flag: human approval by a second actor, then resume",
            "test-b",
            run_id,
        )
    }

    fn test_c(&mut self) -> Scenario {
        let run_id = self.create_run("C");
        self.allowed_step(&run_id, "observe");
        let denied = self.request(
            &run_id,
            "decide",
            json!({"risk": "critical", "amount": 500}),
            201,
        );
        self.check(
            "Test C: the critical step is denied",
            denied["decision"]["effect"] == "deny" && denied["step"]["status"] == "DENIED",
            format!(
                "effect {}, attempt {}",
                denied["decision"]["effect"], denied["step"]["status"]
            ),
        );
        self.check(
            "Test C: the run FAILED closed with policy_denied",
            denied["run"]["status"] == "FAILED"
                && denied["run"]["failure"]["code"] == "policy_denied",
            format!(
                "run {}, failure {}",
                denied["run"]["status"], denied["run"]["failure"]
            ),
        );
        let further = self.request(&run_id, "gate", json!({"risk": "low"}), 409);
        self.check(
            "Test C: a further step request is refused",
            further["error"]["code"].is_string(),
            format!("{}", further["error"]["code"]),
        );
        self.call(
            "retrying a denied run",
            "PATCH",
            &format!("/workflows/runs/{run_id}/status"),
            Some(json!({"status": "RUNNING", "actor": ADMIN})),
            409,
        );
        let logs = self.get(
            "read the run's audit log",
            &format!("/workflows/runs/{run_id}/logs"),
        );
        let entries = logs["entries"].as_array().cloned().unwrap_or_default();
        let denial = entries
            .iter()
            .find(|e| e["action"] == "policy.evaluated" && e["decision"] == "deny");
        self.check(
            "Test C: the audit trail shows the denial and its reason",
            denial.is_some_and(|e| e["reason"] == "critical-risk actions are forbidden"),
            denial.map_or("no denial entry".into(), |e| {
                format!("seq {}: {}", e["seq"], e["reason"])
            }),
        );
        self.check(
            "Test C: the refused requests are in the audit trail",
            entries
                .iter()
                .filter(|e| e["action"] == "request.refused")
                .count()
                == 2,
            format!(
                "{} request.refused entries",
                entries
                    .iter()
                    .filter(|e| e["action"] == "request.refused")
                    .count()
            ),
        );
        self.finish("Test C — deny: fail closed", "test-c", run_id)
    }
}

/// The latest signed checkpoint (`fedcore checkpoint`) opens under the server's key and states
/// the head of the log.
fn signature_check(db: &Path, key: &PublicKey) -> (Check, Option<String>) {
    let name =
        "the latest signed checkpoint verifies under the public key and states the audit head"
            .to_string();
    let found = store::open_read_only(db).and_then(|reader| {
        reader.snapshot(|r| {
            Ok::<_, store::StoreError>((store::last_checkpoint(r)?, store::audit_head(r)?))
        })?
    });
    let (passed, detail, note) = match found {
        Ok((Some(c), head)) => match key.open_checkpoint(&c.note) {
            Ok(stated) => {
                let at_head = head.as_ref().map(|(seq, hash)| (*seq, hash.as_str()))
                    == Some((stated.seq, stated.entry_hash.as_str()));
                let detail = format!(
                    "checkpoint at seq {} ({}), signed by {}",
                    stated.seq, stated.at, key.name
                );
                (at_head, detail, Some(c.note))
            }
            Err(why) => (false, why, Some(c.note)),
        },
        Ok((None, _)) => (false, "the database holds no checkpoint".to_string(), None),
        Err(e) => (false, e.to_string(), None),
    };
    (
        Check {
            name,
            passed,
            detail,
        },
        note,
    )
}

/// Runs `fedcore verify` on the file at `db` in one read snapshot.
fn verify_file(db: &Path) -> Result<Report, String> {
    verify_file_with(db, None)
}

/// As `verify_file`, checking every signature under `pubkey` when one is given.
fn verify_file_with(db: &Path, pubkey: Option<&PublicKey>) -> Result<Report, String> {
    let reader = store::open_read_only(db).map_err(|e| e.to_string())?;
    let options = Options {
        replay: true,
        pubkey: pubkey.cloned(),
        ..Options::default()
    };
    match reader.snapshot(|r| verify::verify(r, &options)) {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(e)) | Err(e) => Err(e.to_string()),
    }
}

/// One line saying what the verifier found.
fn summary(report: &Report) -> String {
    match &report.failure {
        None => format!(
            "intact: {} audit entries, head {}",
            report.counts.audit_entries, report.head
        ),
        Some(b) => format!("BROKEN: {} {} {}: {}", b.table, b.id, b.field, b.message),
    }
}

fn verify_db_check(db: &Path, key: &PublicKey) -> (Check, String) {
    let name = "fedcore verify --replay --pubkey on the proof database".to_string();
    match verify_file_with(db, Some(key)) {
        Ok(report) => (
            Check {
                name,
                passed: report.is_intact(),
                detail: summary(&report),
            },
            report.to_string(),
        ),
        Err(e) => (
            Check {
                name,
                passed: false,
                detail: e.clone(),
            },
            e,
        ),
    }
}

fn verify_folder_check(folder: &Path, key: &PublicKey) -> Check {
    let name = format!(
        "fedcore verify --pubkey --receipts {}",
        folder
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    );
    let report = export::verify_folder(folder, Some(key));
    Check {
        name,
        passed: report.is_intact(),
        detail: report.summary(),
    }
}

/// The two extra scenarios, each on a copy of the proof database.
fn negative_scenarios(db: &Path, scenarios: &[Scenario]) -> Vec<Check> {
    let scratch = std::env::temp_dir().join(format!("fedcore-proof-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&scratch);
    let Some(denial_seq) = scenarios
        .iter()
        .flat_map(|s| s.logs.iter())
        .find(|e| e["action"] == "policy.evaluated" && e["decision"] == "deny")
        .and_then(|e| e["seq"].as_i64())
    else {
        let missing = Check {
            name: "tamper evidence needs Test C's denial entry".into(),
            passed: false,
            detail: "no policy.evaluated entry with decision deny was found".into(),
        };
        return vec![missing];
    };
    let mut checks = Vec::new();

    let tampered = scratch.join("tampered.db");
    let edited = std::fs::copy(db, &tampered)
        .map_err(|e| e.to_string())
        .and_then(|_| {
            store::attack::tamper_audit_reason(&tampered, denial_seq, "approved after review")
                .map_err(|e| e.to_string())
        });
    checks.push(match edited {
        Err(e) => Check { name: "tampered copy: edit the denial's reason".into(), passed: false, detail: e },
        Ok(()) => {
            let name = format!(
                "tampered copy (audit seq {denial_seq} reason rewritten, trigger restored) is rejected by verify, naming the entry"
            );
            match verify_file(&tampered) {
                Ok(report) => Check {
                    name,
                    passed: report
                        .failure
                        .as_ref()
                        .is_some_and(|b| b.table == "audit_log" && b.id == denial_seq.to_string()),
                    detail: summary(&report),
                },
                Err(e) => Check { name, passed: false, detail: e },
            }
        }
    });

    let copy = scratch.join("trigger.db");
    let refused = std::fs::copy(db, &copy)
        .map_err(|e| e.to_string())
        .and_then(|_| {
            store::attack::try_update_audit_reason(&copy, denial_seq, "approved after review")
                .map_err(|e| e.to_string())
        });
    checks.push(match refused {
        Ok(Some(message)) => Check {
            name: "a direct UPDATE on audit_log is refused by the trigger".into(),
            passed: message.contains("append-only"),
            detail: message,
        },
        Ok(None) => Check {
            name: "a direct UPDATE on audit_log is refused by the trigger".into(),
            passed: false,
            detail: "the UPDATE went through".into(),
        },
        Err(e) => Check {
            name: "a direct UPDATE on audit_log is refused by the trigger".into(),
            passed: false,
            detail: e,
        },
    });
    let _ = std::fs::remove_dir_all(&scratch);
    checks
}

/// SHA-256 of the running binary: the "image digest".
fn binary_sha256() -> String {
    std::env::current_exe()
        .and_then(std::fs::read)
        .map(|bytes| crate::engine::jcs::hash_bytes(&bytes))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}
