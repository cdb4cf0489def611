//! Read operations: what the API shows of runs, policies, definitions, agents, the audit log and
//! evidence. Each runs inside one read snapshot on a read connection and never waits for the
//! writer.

use super::Error;
use crate::model::*;
use crate::store::{self, Db};
use serde_json::Value;

/// The most runs one page of `GET /workflows/runs` holds.
pub const MAX_RUNS_PAGE: i64 = 1000;
/// The most audit entries one page of `GET /audit` holds.
pub const MAX_AUDIT_PAGE: i64 = 1000;

/// A run with everything that happened in it, each list in the order it happened.
#[derive(Debug, Clone)]
pub struct RunView {
    pub run: Run,
    pub steps: Vec<StepAttempt>,
    pub gates: Vec<Gate>,
    pub decisions: Vec<Decision>,
}

fn require_run(db: &impl Db, run_id: &str) -> Result<Run, Error> {
    store::get_run(db, run_id)?
        .ok_or_else(|| Error::not_found("unknown_run", format!("no run {run_id:?}")))
}

pub fn run(db: &impl Db, run_id: &str) -> Result<RunView, Error> {
    let run = require_run(db, run_id)?;
    Ok(RunView {
        steps: store::steps_of_run(db, run_id)?,
        gates: store::gates_of_run(db, run_id)?,
        decisions: store::decisions_of_run(db, run_id)?,
        run,
    })
}

/// Filters and cursor of `GET /workflows/runs`.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub status: Option<RunStatus>,
    pub workflow_id: Option<String>,
    pub after: Option<String>,
    pub limit: i64,
}

/// One page of runs and the cursor for the next page (`None` on the last page).
pub fn runs(db: &impl Db, filter: &RunFilter) -> Result<(Vec<Run>, Option<String>), Error> {
    let limit = filter.limit.clamp(1, MAX_RUNS_PAGE);
    // Fetch one more than asked to learn whether another page follows.
    let mut runs = store::list_runs(
        db,
        filter.status,
        filter.workflow_id.as_deref(),
        filter.after.as_deref(),
        limit + 1,
    )?;
    let next = if runs.len() as i64 > limit {
        runs.truncate(limit as usize);
        runs.last().map(|r| r.run_id.clone())
    } else {
        None
    };
    Ok((runs, next))
}

pub fn logs(db: &impl Db, run_id: &str) -> Result<Vec<AuditEntry>, Error> {
    require_run(db, run_id)?;
    Ok(store::audit_of_run(db, run_id)?)
}

/// The run's workflow receipt object, exactly as hashed, and its hash.
pub fn receipt(db: &impl Db, run_id: &str) -> Result<(Value, String), Error> {
    let run = require_run(db, run_id)?;
    let hash = run.receipt_hash.ok_or_else(|| {
        Error::not_found(
            "no_receipt",
            format!(
                "run {run_id} is {} and has no receipt until it ends",
                run.status
            ),
        )
    })?;
    let body = store::get_evidence(db, &hash)?.ok_or_else(|| {
        store::StoreError::Corrupt(format!("receipt {hash} has no evidence blob"))
    })?;
    let receipt =
        serde_json::from_slice(&body).map_err(|e| store::StoreError::Corrupt(e.to_string()))?;
    Ok((receipt, hash))
}

/// Entries after `after_seq` (at most `limit`, clamped to 1000) and the head of the whole log.
pub fn audit(
    db: &impl Db,
    after_seq: i64,
    limit: i64,
) -> Result<(Vec<AuditEntry>, (i64, String)), Error> {
    let entries = store::audit_page(db, after_seq, limit.clamp(1, MAX_AUDIT_PAGE))?;
    let head = store::audit_head(db)?.unwrap_or((0, ZERO_HASH.to_string()));
    Ok((entries, head))
}

pub fn evidence(db: &impl Db, hash: &str) -> Result<Vec<u8>, Error> {
    store::get_evidence(db, hash)?
        .ok_or_else(|| Error::not_found("unknown_evidence", format!("no evidence {hash}")))
}

pub fn policy(db: &impl Db, policy_id: &str, version: Option<i64>) -> Result<Policy, Error> {
    store::get_policy(db, policy_id, version)?.ok_or_else(|| match version {
        Some(v) => Error::not_found(
            "unknown_policy",
            format!("no policy {policy_id:?} version {v}"),
        ),
        None => Error::not_found("unknown_policy", format!("no policy {policy_id:?}")),
    })
}

pub fn definition(
    db: &impl Db,
    workflow_id: &str,
    version: Option<i64>,
) -> Result<Definition, Error> {
    store::get_definition(db, workflow_id, version)?.ok_or_else(|| match version {
        Some(v) => Error::not_found(
            "unknown_workflow",
            format!("no workflow {workflow_id:?} version {v}"),
        ),
        None => Error::not_found("unknown_workflow", format!("no workflow {workflow_id:?}")),
    })
}

pub fn agent(db: &impl Db, agent_id: &str) -> Result<Agent, Error> {
    store::get_agent(db, agent_id)?
        .ok_or_else(|| Error::not_found("unknown_agent", format!("no agent {agent_id:?}")))
}

pub fn agents(db: &impl Db) -> Result<Vec<Agent>, Error> {
    Ok(store::list_agents(db)?)
}
