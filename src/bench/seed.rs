//! A realistic database built fast: the PT-004 workflow (five steps under the README's Test B
//! policy) run many times through the real engine, in-process and without HTTP. Each command is
//! the one the HTTP layer builds for the same request, applied with `engine::apply` as the writer
//! thread applies it and signed with the key file beside the database, so the file is one a
//! server could have written; only the transactions are larger and the clock is simulated.

use crate::engine::{self, signing::Signer, Command, Outcome, StepResult};
use crate::model::*;
use crate::store::{self, Db, Durability, StoreError, Tx};
use serde_json::{json, Map, Value};
use std::path::Path;
use std::time::{Duration, Instant};

/// The agent that creates runs and does their steps.
pub const AGENT: &str = "agent-7";
/// The second person who approves flagged steps.
pub const APPROVER: &str = "approver-1";
/// The admin who registers the catalog and resumes approved runs.
pub const ADMIN: &str = crate::http::ADMIN_NAME;
pub const POLICY_ID: &str = "pt004_governance";
pub const WORKFLOW_ID: &str = "pt004_execution_spine";

/// The definition's steps, in order.
const STEPS: [(&str, &str); 5] = [
    ("observe", "OBSERVE"),
    ("decide", "DECIDE"),
    ("gate", "GATE"),
    ("act", "ACT"),
    ("transform", "TRANSFORM"),
];

/// A write transaction takes whole workflows until it holds at least this many commands.
const COMMANDS_PER_TRANSACTION: u64 = 1000;

/// What happens to workflow `i` (counted over the database, from 0) at its `decide` step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Every step allowed; the run completes.
    Allowed,
    /// `decide` is high-risk: flagged, the gate approved by the approver, the run resumed by the
    /// admin; then it completes. Every 10th workflow (`i % 10 == 5`).
    Flagged,
    /// `decide` is critical: denied, and the run fails closed. Every 20th (`i % 20 == 0`).
    Denied,
}

impl Shape {
    pub fn of(i: u64) -> Shape {
        if i.is_multiple_of(20) {
            Shape::Denied
        } else if i % 10 == 5 {
            Shape::Flagged
        } else {
            Shape::Allowed
        }
    }

    /// The `risk` of the `decide` step's input that gives this shape under the policy.
    pub fn risk(self) -> &'static str {
        match self {
            Shape::Allowed => "low",
            Shape::Flagged => "high",
            Shape::Denied => "critical",
        }
    }

    /// The policy's effect at `decide` for this shape.
    pub fn effect(self) -> &'static str {
        match self {
            Shape::Allowed => "allow",
            Shape::Flagged => "flag",
            Shape::Denied => "deny",
        }
    }
}

/// The policy every benchmark governs with (the README's Test B policy): critical risk is denied,
/// high risk or an amount over 10,000 is flagged, a registered active agent is allowed. `Shape`
/// picks the `risk` that gives each effect under it.
pub fn policy_document() -> Value {
    json!({
        "tier": "T2", "default_effect": "deny", "rules": [
            {"rule_id": "deny-critical", "effect": "deny",
             "reason": "critical-risk actions are forbidden",
             "when": {"path": "input.risk", "eq": "critical"}},
            {"rule_id": "flag-high", "effect": "flag",
             "reason": "high-risk actions need a human",
             "when": {"any": [{"path": "input.risk", "eq": "high"},
                              {"path": "input.amount", "gt": 10000}]}},
            {"rule_id": "allow-registered", "effect": "allow",
             "reason": "registered active agent",
             "when": {"path": "agent.status", "eq": "active"}}
        ]
    })
}

/// The setup's entries: three `token.created`, `agent.put`, `policy.put`, `definition.put`.
pub const SETUP_ENTRIES: i64 = 6;
/// `run.created`; the first step's `run.status_changed` to RUNNING; per step
/// `step.requested`, `policy.evaluated`, `step.started`, `step.completed`; `run.completed`.
pub const ALLOWED_ENTRIES: i64 = 1 + 1 + 5 * 4 + 1;
/// As allowed, but `decide` is flagged: no `step.started` at the request but a
/// `gate.requested` and a `run.status_changed` to PAUSED; then `gate.resolved`, the resume's
/// `run.status_changed` and the `step.started` it brings.
pub const FLAGGED_ENTRIES: i64 = ALLOWED_ENTRIES - 1 + 2 + 3;
/// `run.created`, the status change, `observe`'s four, then `decide`'s `step.requested`,
/// `policy.evaluated`, `step.denied` and `run.failed`.
pub const DENIED_ENTRIES: i64 = 1 + 1 + 4 + 4;

impl Shape {
    /// The audit entries one workflow of this shape adds.
    pub fn entries(self) -> i64 {
        match self {
            Shape::Allowed => ALLOWED_ENTRIES,
            Shape::Flagged => FLAGGED_ENTRIES,
            Shape::Denied => DENIED_ENTRIES,
        }
    }
}

/// How many workflows, numbered from `first`, add at least `entries` audit entries.
pub fn workflows_for(first: u64, entries: i64) -> u64 {
    let mut added = 0;
    let mut n = 0;
    while added < entries {
        added += Shape::of(first + n).entries();
        n += 1;
    }
    n
}

/// What one call of `seed` did, and what the database holds after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedSummary {
    /// Workflows added by this call.
    pub workflows: u64,
    pub completed: u64,
    pub failed: u64,
    /// Runs in the database now.
    pub runs: i64,
    /// Audit entries in the database now, and how many this call added.
    pub audit_entries: i64,
    pub added_entries: i64,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Key(#[from] crate::http::ServeError),
    /// The engine refused a command the workload expects to succeed: the workload and the
    /// engine disagree, and nothing of that transaction was kept.
    #[error("the engine refused {what}: {error}")]
    Refused { what: String, error: engine::Error },
    #[error("{what} answered {outcome}")]
    Unexpected { what: String, outcome: String },
}

/// Adds `workflows` PT-004 workflows to the database at `db` (created if missing, with its key
/// file beside it as `serve` would), registering the tokens, agent, policy and definition first
/// when it has none. Workflow numbers continue from the runs already there, so appending keeps
/// the mix. Ends with a signed checkpoint of the head, as a server does when it stops.
pub fn seed(db: &Path, workflows: u64, durability: Durability) -> Result<SeedSummary, SeedError> {
    seed_with(db, workflows, durability, false)
}

/// As `seed`, but each workflow stops once its run is created (PENDING, one `run.created`
/// entry): the quickest way to a database holding many runs, for measuring what a request costs
/// on one (a million whole workflows would take about 35 GB).
pub fn seed_runs(db: &Path, runs: u64, durability: Durability) -> Result<SeedSummary, SeedError> {
    seed_with(db, runs, durability, true)
}

fn seed_with(
    db: &Path,
    workflows: u64,
    durability: Durability,
    runs_only: bool,
) -> Result<SeedSummary, SeedError> {
    let started = Instant::now();
    let conn = store::open_for_writing(db)?;
    store::set_durability(&conn, durability)?;
    let signer = crate::http::open_signer(&conn, db, None)?;
    let (first, entries_before, last_at) = store::write_once(&conn, |tx| (start_of(tx), false))??;
    let mut seeder = Seeder {
        signer: &signer,
        clock: crate::http::now().max(last_at),
        commands: 0,
        completed: 0,
        failed: 0,
        runs_only,
    };
    store::write_once(&conn, |tx| committed(seeder.setup(tx)))??;
    let end = first + workflows;
    let mut next = first;
    while next < end {
        store::write_once(&conn, |tx| {
            committed((|| {
                let opened_at = seeder.commands;
                while next < end && seeder.commands - opened_at < COMMANDS_PER_TRANSACTION {
                    seeder.workflow(tx, next)?;
                    next += 1;
                }
                Ok(())
            })())
        })??;
    }
    let now = seeder.tick();
    store::write_once(&conn, |tx| {
        committed(
            engine::write_checkpoint(tx, now, &signer).map_err(|error| SeedError::Refused {
                what: "the final checkpoint".into(),
                error,
            }),
        )
    })??;
    let (runs, audit_entries) = store::write_once(&conn, |tx| (totals(tx), false))??;
    Ok(SeedSummary {
        workflows,
        completed: seeder.completed,
        failed: seeder.failed,
        runs,
        audit_entries,
        added_entries: audit_entries - entries_before,
        elapsed: started.elapsed(),
    })
}

/// A transaction body's result, committed only when it succeeded.
fn committed<T>(result: Result<T, SeedError>) -> (Result<T, SeedError>, bool) {
    let ok = result.is_ok();
    (result, ok)
}

/// The number of the next workflow (the runs already there), the audit entries already there,
/// and the time of the last one (the clock never goes back before it).
fn start_of(db: &impl Db) -> Result<(u64, i64, Timestamp), SeedError> {
    let (runs, entries) = totals(db)?;
    let last_at = store::audit_page(db, entries - 1, 1)?
        .first()
        .map_or(Timestamp::from_micros(0), |e| e.at);
    Ok((runs.max(0) as u64, entries, last_at))
}

fn totals(db: &impl Db) -> Result<(i64, i64), SeedError> {
    let entries = store::audit_head(db)?.map_or(0, |(seq, _)| seq);
    Ok((store::count_runs(db)?, entries))
}

struct Seeder<'s> {
    signer: &'s Signer,
    /// The time of the last command applied.
    clock: Timestamp,
    commands: u64,
    completed: u64,
    failed: u64,
    /// Stop each workflow once its run is created.
    runs_only: bool,
}

impl Seeder<'_> {
    /// The wall clock, moved on by at least a microsecond per command: never ahead of real time
    /// by more than the commands of one burst, so a server started on the file afterwards goes
    /// on from where the log's times end.
    fn tick(&mut self) -> Timestamp {
        let next = Timestamp::from_micros(self.clock.micros() + 1);
        self.clock = crate::http::now().max(next);
        self.clock
    }

    /// Applies one command as the writer thread would, at the next tick.
    fn apply(&mut self, tx: &Tx<'_>, command: Command) -> Result<Outcome, SeedError> {
        let now = self.tick();
        self.commands += 1;
        let (result, _commit) = engine::apply(tx, now, self.signer, &command);
        result.map_err(|error| SeedError::Refused {
            what: format!("{command:?}"),
            error,
        })
    }

    /// What `serve` and an admin do before the first run: the admin token (made by fedcore
    /// itself on a database that never had a token), the agent's and the approver's tokens, the
    /// agent's registration, the policy and the definition. Skipped when the definition exists.
    fn setup(&mut self, tx: &Tx<'_>) -> Result<(), SeedError> {
        // Each token gets a fresh secret that is thrown away: the seeder needs no token, and a
        // seeded file must not let anyone in with a guessable one.
        let token = |name: &str, role: Role, actor: &str| -> Result<Command, SeedError> {
            let secret = crate::secret::new_token().map_err(|e| SeedError::Unexpected {
                what: "asking the system for randomness".into(),
                outcome: e.to_string(),
            })?;
            Ok(Command::CreateToken {
                name: name.to_string(),
                role,
                token_hash: crate::secret::token_hash(&secret),
                actor: actor.to_string(),
            })
        };
        if store::count_tokens(tx)?.0 == 0 {
            self.apply(tx, token(ADMIN, Role::Admin, engine::SYSTEM_ACTOR)?)?;
        }
        if store::get_definition(tx, WORKFLOW_ID, None)?.is_some() {
            return Ok(());
        }
        self.apply(tx, token(AGENT, Role::Agent, ADMIN)?)?;
        self.apply(tx, token(APPROVER, Role::Approver, ADMIN)?)?;
        self.apply(
            tx,
            Command::PutAgent {
                agent_id: AGENT.to_string(),
                doc: document(json!({
                    "status": "active", "capabilities": ["observe", "deploy"], "tier": "T2"
                })),
                actor: ADMIN.to_string(),
            },
        )?;
        self.apply(
            tx,
            Command::PutPolicy {
                policy_id: POLICY_ID.to_string(),
                doc: document(policy_document()),
                actor: ADMIN.to_string(),
            },
        )?;
        let steps: Vec<Value> = STEPS
            .iter()
            .map(|(step_id, step_type)| json!({"step_id": step_id, "step_type": step_type}))
            .collect();
        self.apply(
            tx,
            Command::PutDefinition {
                workflow_id: WORKFLOW_ID.to_string(),
                doc: document(json!({"policy_id": POLICY_ID, "steps": steps})),
                actor: ADMIN.to_string(),
            },
        )?;
        Ok(())
    }

    /// Workflow `i`: a run, each step requested then completed; a flagged `decide` is approved
    /// and the run resumed first; a denied one ends the run.
    fn workflow(&mut self, tx: &Tx<'_>, i: u64) -> Result<(), SeedError> {
        let shape = Shape::of(i);
        let created = self.apply(
            tx,
            Command::CreateRun {
                workflow_id: WORKFLOW_ID.to_string(),
                input: json!({"ticket": format!("T-{i}")}),
                actor: AGENT.to_string(),
            },
        )?;
        let Outcome::Run(run) = created else {
            return Err(unexpected("creating a run", created));
        };
        if self.runs_only {
            return Ok(());
        }
        let run_id = run.run_id;
        let mut status = run.status;
        for (step_id, _) in STEPS {
            let input = match step_id {
                "decide" => json!({"risk": shape.risk()}),
                _ => json!({}),
            };
            let requested = self.apply(
                tx,
                Command::RequestStep {
                    run_id: run_id.clone(),
                    step_id: step_id.to_string(),
                    input,
                    actor: AGENT.to_string(),
                },
            )?;
            let Outcome::StepRequested { run, gate, .. } = requested else {
                return Err(unexpected("requesting a step", requested));
            };
            if run.status == RunStatus::Failed {
                status = run.status;
                break;
            }
            if let Some(gate) = gate {
                self.apply(
                    tx,
                    Command::ResolveGate {
                        run_id: run_id.clone(),
                        gate_id: gate.gate_id,
                        approve: true,
                        comment: Some("checked".to_string()),
                        actor: APPROVER.to_string(),
                    },
                )?;
                self.apply(
                    tx,
                    Command::ChangeStatus {
                        run_id: run_id.clone(),
                        status: RunStatus::Running,
                        reason: None,
                        actor: ADMIN.to_string(),
                    },
                )?;
            }
            let output = match step_id {
                "observe" => json!({"seen": 3}),
                "decide" => json!({"plan": "go"}),
                _ => json!({}),
            };
            let finished = self.apply(
                tx,
                Command::FinishStep {
                    run_id: run_id.clone(),
                    step_id: step_id.to_string(),
                    result: StepResult::Completed { output },
                    actor: AGENT.to_string(),
                },
            )?;
            let Outcome::StepFinished { run, .. } = finished else {
                return Err(unexpected("finishing a step", finished));
            };
            status = run.status;
        }
        match status {
            RunStatus::Completed => self.completed += 1,
            RunStatus::Failed => self.failed += 1,
            other => {
                return Err(SeedError::Unexpected {
                    what: format!("workflow {i}"),
                    outcome: format!("a run left {other}"),
                })
            }
        }
        Ok(())
    }
}

/// A JSON object literal as the document a PUT body becomes once `actor` is taken out.
fn document(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(fields) => fields,
        _ => Map::new(),
    }
}

fn unexpected(what: &str, outcome: Outcome) -> SeedError {
    SeedError::Unexpected {
        what: what.to_string(),
        outcome: format!("{outcome:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::verify;
    use crate::engine::views::{self, RunFilter};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("fedcore-seed-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn runs_with(db: &Path, status: RunStatus) -> usize {
        let reader = store::open_read_only(db).unwrap();
        let filter = RunFilter {
            status: Some(status),
            limit: views::MAX_RUNS_PAGE,
            ..RunFilter::default()
        };
        let (runs, _) = reader
            .snapshot(|r| views::runs(r, &filter))
            .unwrap()
            .unwrap();
        runs.len()
    }

    #[test]
    fn a_seeded_database_verifies_and_holds_the_mix() {
        let dir = temp_dir("mix");
        let db = dir.join("seed.db");
        let first = seed(&db, 40, Durability::Normal).unwrap();
        // Workflows 0 and 20 are denied; 5, 15, 25 and 35 flagged; the other 34 allowed.
        assert_eq!((first.completed, first.failed), (38, 2));
        assert_eq!(first.runs, 40);
        assert_eq!(runs_with(&db, RunStatus::Completed), 38);
        assert_eq!(runs_with(&db, RunStatus::Failed), 2);
        assert_eq!(
            first.audit_entries,
            SETUP_ENTRIES + 34 * ALLOWED_ENTRIES + 4 * FLAGGED_ENTRIES + 2 * DENIED_ENTRIES
        );
        assert_eq!(first.added_entries, first.audit_entries);

        // Appending continues the numbering: workflows 40..60 hold one denied (40) and two
        // flagged (45, 55), and no second setup.
        let second = seed(&db, 20, Durability::Normal).unwrap();
        assert_eq!((second.completed, second.failed), (19, 1));
        assert_eq!(second.runs, 60);
        assert_eq!(
            second.added_entries,
            17 * ALLOWED_ENTRIES + 2 * FLAGGED_ENTRIES + DENIED_ENTRIES
        );

        let report = verify::verify_file(&db, &verify::Options::default()).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.counts.audit_entries, second.audit_entries as u64);
        assert_eq!(report.counts.runs, 60);
        assert_eq!(report.counts.gates, 6);
        assert!(report.signing_key.is_some(), "expected the runs signed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn runs_only_adds_pending_runs_that_verify_and_whole_workflows_can_follow() {
        let dir = temp_dir("runs-only");
        let db = dir.join("seed.db");
        let created = seed_runs(&db, 30, Durability::Normal).unwrap();
        assert_eq!(
            (created.completed, created.failed, created.runs),
            (0, 0, 30)
        );
        assert_eq!(created.audit_entries, SETUP_ENTRIES + 30);
        assert_eq!(runs_with(&db, RunStatus::Pending), 30);
        // Whole workflows appended after them keep their own numbering: 30..40 hold one flagged
        // (35) and no denied one.
        let after = seed(&db, 10, Durability::Normal).unwrap();
        assert_eq!((after.completed, after.failed, after.runs), (10, 0, 40));
        let report = verify::verify_file(&db, &verify::Options::default()).unwrap();
        assert!(report.is_intact(), "{report}");
        assert_eq!(report.counts.runs, 40);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_benchmarks_govern_with_the_policy_the_readme_walks_through() {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("$B/policies/pt004_governance")
            .expect("the README walk-through stores the policy");
        let body = &readme[start..];
        let body = &body[body.find("-d '").unwrap() + 4..];
        let body = &body[..body.find('\'').unwrap()];
        let mut readme_policy: Value = serde_json::from_str(body).unwrap();
        readme_policy.as_object_mut().unwrap().remove("actor");
        assert_eq!(readme_policy, policy_document());
    }
}
