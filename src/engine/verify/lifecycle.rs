//! What no hash covers: a run's lifecycle as its audit entries tell it. Receipts tie each object
//! to *an* entry; these checks bind each to exactly *one*, so that entries appended to the log
//! (which keeps any head written down before them) cannot tell another story, and derive the
//! run's mutable columns (`status`, `next_step_id`, `failure`, `attempt_base`, `ended_at`,
//! `updated_at`) from
//! its attempts, gates and entries. A flagged attempt must have passed its gate. Pure functions
//! of one run's record.

use super::{At, Checked, Known, Row, RunRecord};
use crate::engine::{jcs, receipts};
use crate::model::*;
use crate::store::AuditLink;
use serde_json::Value;
use std::collections::HashMap;

/// Every rule of this module for one run, in the order: entries per object, the run's
/// status story, its mutable columns, then flagged attempts and their gates.
pub(super) fn check_run_lifecycle(known: &Known, record: &RunRecord) -> Checked {
    let entries = EntryIndex::of(record)?;
    check_entry_counts(record, &entries)?;
    check_run_story(record)?;
    check_updated_at(record)?;
    check_next_step(known, record)?;
    check_attempt_columns(known, record)?;
    check_failure(record)?;
    check_attempt_base(record, &entries)?;
    check_flagged_attempts(record, &entries)?;
    check_gates_as_logged(record)
}

/// How many entries of each kind name each object of the run, and where the first is.
#[derive(Default)]
struct EntryIndex<'r> {
    /// `(subject, kind) → (count, seq of the first)`.
    seen: HashMap<(&'r str, Kind), (u32, i64)>,
}

/// The entries an object may have, grouped as the rules count them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    RunCreated,
    StepRequested,
    PolicyEvaluated,
    StepStarted,
    /// `step.completed|failed|denied|rejected`.
    StepFinished,
    GateRequested,
    GateApproval,
    /// `gate.resolved|expired|cancelled`.
    GateClosed,
}

impl Kind {
    fn of(action: &str) -> Option<Kind> {
        Some(match action {
            "run.created" => Kind::RunCreated,
            "step.requested" => Kind::StepRequested,
            "policy.evaluated" => Kind::PolicyEvaluated,
            "step.started" => Kind::StepStarted,
            "step.completed" | "step.failed" | "step.denied" | "step.rejected" => {
                Kind::StepFinished
            }
            "gate.requested" => Kind::GateRequested,
            "gate.approval" => Kind::GateApproval,
            "gate.resolved" | "gate.expired" | "gate.cancelled" => Kind::GateClosed,
            _ => return None,
        })
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::RunCreated => "run.created",
            Kind::StepRequested => "step.requested",
            Kind::PolicyEvaluated => "policy.evaluated",
            Kind::StepStarted => "step.started",
            Kind::StepFinished => "step.completed|failed|denied|rejected",
            Kind::GateRequested => "gate.requested",
            Kind::GateApproval => "gate.approval",
            Kind::GateClosed => "gate.resolved|expired|cancelled",
        }
    }

    /// At most this many entries of the kind name one object (quorum approvals are counted
    /// against the gate's approvals instead).
    fn at_most(self) -> u32 {
        match self {
            Kind::GateApproval => u32::MAX,
            _ => 1,
        }
    }
}

fn entry_at(seq: i64) -> At<'static> {
    At {
        table: "audit_log",
        row: Row::Seq(seq),
    }
}

impl<'r> EntryIndex<'r> {
    /// Counts the run's entries by subject and kind. An entry of the run about another run, an
    /// attempt or a gate the run does not have, or a second entry where one is allowed, is the
    /// broken object, named by its `seq`.
    fn of(record: &'r RunRecord) -> Checked<EntryIndex<'r>> {
        let run_subject = format!("run:{}", record.run.run_id);
        let mut index = EntryIndex::default();
        for link in &record.links {
            let subject = link.subject.as_str();
            let at = entry_at(link.seq);
            // A refusal records what was asked, which may name a gate or attempt that is not
            // there (a role refused before anything was looked up): it is no object's entry.
            let named = if link.action == "request.refused" {
                true
            } else if let Some(step) = subject.strip_prefix("step:") {
                record
                    .steps
                    .iter()
                    .any(|s| step == format!("{}#{}", s.step_id, s.attempt))
            } else if let Some(gate_id) = subject.strip_prefix("gate:") {
                record.gates.iter().any(|g| g.gate_id == gate_id)
            } else {
                subject == run_subject
            };
            if !named {
                let why = format!(
                    "a {} entry of run {} names {subject}, which the run does not have",
                    link.action, record.run.run_id
                );
                return Err(at.broken("subject", None, Some(subject), why));
            }
            let Some(kind) = Kind::of(&link.action) else {
                continue;
            };
            let slot = index.seen.entry((subject, kind)).or_insert((0, link.seq));
            slot.0 += 1;
            if slot.0 > kind.at_most() {
                let why = format!(
                    "a second {} entry for {subject} (the first is seq {}): each is written once",
                    kind.describe(),
                    slot.1
                );
                return Err(at.broken("action", None, Some(&link.action), why));
            }
        }
        Ok(index)
    }

    fn count(&self, subject: &str, kind: Kind) -> u32 {
        self.seen.get(&(subject, kind)).map_or(0, |(n, _)| *n)
    }

    fn first_seq(&self, subject: &str, kind: Kind) -> Option<i64> {
        self.seen.get(&(subject, kind)).map(|(_, seq)| *seq)
    }
}

/// The entry counts each object must have: one `run.created`; per attempt one `step.requested`
/// and one `policy.evaluated`, a `step.started` exactly when it started, a finishing entry
/// exactly when it finished; per gate one `gate.requested`, one closing entry exactly when it
/// left PENDING, and one `gate.approval` per quorum approval.
fn check_entry_counts(record: &RunRecord, entries: &EntryIndex<'_>) -> Checked {
    let run = &record.run;
    let want = |at: At<'_>, subject: &str, kind: Kind, wanted: u32| -> Checked {
        let found = entries.count(subject, kind);
        if found == wanted {
            return Ok(());
        }
        let why = format!(
            "{subject} has {found} {} entries where its state needs {wanted}",
            kind.describe()
        );
        Err(at.broken(
            "audit",
            Some(&wanted.to_string()),
            Some(&found.to_string()),
            why,
        ))
    };
    let at = At {
        table: "runs",
        row: Row::Key(&run.run_id),
    };
    want(at, &format!("run:{}", run.run_id), Kind::RunCreated, 1)?;
    for step in &record.steps {
        let at = At {
            table: "steps",
            row: Row::Attempt(step),
        };
        let subject = format!("step:{}#{}", step.step_id, step.attempt);
        let started = matches!(
            step.status,
            StepStatus::Started | StepStatus::Completed | StepStatus::Failed
        );
        want(at, &subject, Kind::StepRequested, 1)?;
        want(at, &subject, Kind::PolicyEvaluated, 1)?;
        want(at, &subject, Kind::StepStarted, u32::from(started))?;
        want(
            at,
            &subject,
            Kind::StepFinished,
            u32::from(!step.status.is_open()),
        )?;
    }
    for gate in &record.gates {
        let at = At {
            table: "gates",
            row: Row::Key(&gate.gate_id),
        };
        let subject = format!("gate:{}", gate.gate_id);
        let closed = gate.status != GateStatus::Pending;
        want(at, &subject, Kind::GateRequested, 1)?;
        want(at, &subject, Kind::GateClosed, u32::from(closed))?;
        let approvals = u32::try_from(gate.approvals.len()).unwrap_or(u32::MAX);
        want(at, &subject, Kind::GateApproval, approvals)?;
    }
    Ok(())
}

/// The run's own entries tell its status story: ends (`run.completed|failed|cancelled`) and
/// retries (`FAILED → RUNNING`) alternate, starting with an end; the run has ended exactly when
/// the story ends with an end; its `status` is the `to_status` of the last status-changing entry,
/// and `ended_at` is set exactly when it has ended.
fn check_run_story(record: &RunRecord) -> Checked {
    let run = &record.run;
    let run_subject = format!("run:{}", run.run_id);
    let mut ended = false;
    let mut last_status: Option<(&str, i64)> = None;
    for link in record.links.iter().filter(|l| l.subject == run_subject) {
        let to = link.to_status.as_deref();
        let ends = matches!(
            link.action.as_str(),
            "run.completed" | "run.failed" | "run.cancelled"
        );
        let changes = ends || matches!(link.action.as_str(), "run.created" | "run.status_changed");
        if !changes {
            continue;
        }
        let retry = link.action == "run.status_changed"
            && link.from_status.as_deref() == Some(RunStatus::Failed.as_str())
            && to == Some(RunStatus::Running.as_str());
        if (ends && ended) || (retry && !ended) {
            let why = if ends {
                format!(
                    "a second end of run {} without a retry between: an end is written once",
                    run.run_id
                )
            } else {
                format!("a retry of run {} that had not ended", run.run_id)
            };
            return Err(entry_at(link.seq).broken("action", None, Some(&link.action), why));
        }
        if ends {
            ended = true;
        } else if retry {
            ended = false;
        }
        last_status = Some((to.unwrap_or("null"), link.seq));
    }
    let at = At {
        table: "runs",
        row: Row::Key(&run.run_id),
    };
    if ended != run.status.has_ended() {
        let why = if ended {
            "the run's entries end it, but its status says it has not ended"
        } else {
            "the run's status says it has ended, but no entry ends it"
        };
        return Err(at.broken("status", None, Some(run.status.as_str()), why));
    }
    if let Some((status, seq)) = last_status {
        at.same("status", status, run.status.as_str(), || {
            format!("the run's last status change (seq {seq}) leaves it {status}")
        })?;
    }
    if run.ended_at.is_some() != run.status.has_ended() {
        let found = run.ended_at.map(|t| t.to_string());
        let why = "ended_at is set exactly when the run has ended";
        return Err(at.broken("ended_at", None, found.as_deref(), why));
    }
    Ok(())
}

/// `updated_at` is the time of the last command that changed the run's row: its creation, a
/// status change or end, or a step finished (which moves `next_step_id` or ends the run). Every
/// entry a command writes carries that command's time. A run without a `run.created` entry is
/// refused by the entry counts before this.
fn check_updated_at(record: &RunRecord) -> Checked {
    let changes_the_row = |link: &&AuditLink| {
        matches!(
            link.action.as_str(),
            "run.created"
                | "run.status_changed"
                | "run.completed"
                | "run.failed"
                | "run.cancelled"
                | "step.completed"
                | "step.failed"
        )
    };
    let Some(last) = record.links.iter().rfind(changes_the_row) else {
        return Ok(());
    };
    let run = &record.run;
    let at = At {
        table: "runs",
        row: Row::Key(&run.run_id),
    };
    at.same("updated_at", &last.at, &run.updated_at.to_string(), || {
        format!(
            "the run's row last changed with seq {} ({}), at {}",
            last.seq, last.action, last.at
        )
    })
}

/// Steps run in definition order: each attempt is of the step after the last completed one (the
/// first step before any completed), and `next_step_id` is where that leaves the run: null once
/// the last step completed.
fn check_next_step(known: &Known, record: &RunRecord) -> Checked {
    let run = &record.run;
    let key = (run.workflow_id.clone(), run.workflow_version);
    // A missing definition is named by `check_run` already.
    let Some(steps) = known.definition_steps.get(&key) else {
        return Ok(());
    };
    let after = |step_id: &str| {
        steps
            .iter()
            .position(|s| s.step_id == step_id)
            .and_then(|i| steps.get(i + 1))
            .map(|s| &s.step_id)
    };
    let mut expected = steps.first().map(|s| &s.step_id);
    let mut last_completed: Option<&StepAttempt> = None;
    for step in &record.steps {
        if expected != Some(&step.step_id) {
            let at = At {
                table: "steps",
                row: Row::Attempt(step),
            };
            let why = "the attempt is not of the run's next step: steps run in definition order";
            return Err(at.broken(
                "step_id",
                Some(expected.map_or("null", String::as_str)),
                Some(&step.step_id),
                why,
            ));
        }
        if step.status == StepStatus::Completed {
            expected = after(&step.step_id);
            last_completed = Some(step);
        }
    }
    if expected == run.next_step_id.as_ref() {
        return Ok(());
    }
    let at = At {
        table: "runs",
        row: Row::Key(&run.run_id),
    };
    let why = match last_completed {
        None => "no attempt completed, so the next step is the definition's first".to_string(),
        Some(done) => format!(
            "the last completed attempt is {}#{}, so the next step is the one after it",
            done.step_id, done.attempt
        ),
    };
    Err(at.broken(
        "next_step_id",
        Some(expected.map_or("null", String::as_str)),
        Some(run.next_step_id.as_deref().unwrap_or("null")),
        why,
    ))
}

/// An attempt's `step_index` is its step's place in the definition and its `step_type` that
/// step's type (a finished attempt's receipt covers the type, an open one's nothing else), and
/// only a FAILED attempt has an `error` (its output hash covers it; no hash covers another's).
fn check_attempt_columns(known: &Known, record: &RunRecord) -> Checked {
    let run = &record.run;
    let key = (run.workflow_id.clone(), run.workflow_version);
    let steps = known.definition_steps.get(&key);
    for step in &record.steps {
        let at = At {
            table: "steps",
            row: Row::Attempt(step),
        };
        let defined = steps.and_then(|steps| {
            steps
                .iter()
                .enumerate()
                .find(|(_, s)| s.step_id == step.step_id)
        });
        if let Some((index, defined)) = defined {
            at.same(
                "step_index",
                &index.to_string(),
                &step.step_index.to_string(),
                || "step_index is the step's place in the definition".into(),
            )?;
            at.same(
                "step_type",
                defined.step_type.as_str(),
                step.step_type.as_str(),
                || "step_type is the type the run's definition gives the step".into(),
            )?;
        }
        if let (Some(error), false) = (&step.error, step.status == StepStatus::Failed) {
            let why = format!("a {} attempt has an error", step.status);
            return Err(at.broken("error", None, Some(&error.to_string()), why));
        }
    }
    Ok(())
}

/// `failure` is set exactly when the run is FAILED; a denied attempt, a rejected or an expired
/// gate fail the run for good with that code; `step_failed` needs a failed last attempt; the
/// reason is the one its last `run.failed` entry gave.
fn check_failure(record: &RunRecord) -> Checked {
    let run = &record.run;
    let at = At {
        table: "runs",
        row: Row::Key(&run.run_id),
    };
    let forced = if record
        .gates
        .iter()
        .any(|g| g.status == GateStatus::Rejected)
    {
        Some(FailureCode::GateRejected)
    } else if record.gates.iter().any(|g| g.status == GateStatus::Expired) {
        Some(FailureCode::GateExpired)
    } else if record.steps.iter().any(|s| s.status == StepStatus::Denied) {
        Some(FailureCode::PolicyDenied)
    } else {
        None
    };
    let failure = match (&run.failure, run.status == RunStatus::Failed) {
        (None, false) => match forced {
            None => return Ok(()),
            Some(code) => {
                let why = format!(
                    "the run's {} is final: the run must be FAILED with it",
                    code.as_str()
                );
                return Err(at.broken(
                    "status",
                    Some(RunStatus::Failed.as_str()),
                    Some(run.status.as_str()),
                    why,
                ));
            }
        },
        (Some(f), false) => {
            let why = "a run that is not FAILED has a failure";
            return Err(at.broken("failure", None, Some(f.code.as_str()), why));
        }
        (None, true) => {
            return Err(at.broken("failure", None, None, "a FAILED run has no failure"));
        }
        (Some(f), true) => f,
    };
    let last = record.steps.last();
    let last_failed =
        last.is_some_and(|s| s.status == StepStatus::Failed && !closed_by_a_run_end(s));
    let fits = match (forced, failure.code) {
        (Some(code), found) => code == found,
        (None, FailureCode::StepFailed) => last_failed,
        (None, FailureCode::Declared) => true,
        (None, _) => false,
    };
    if !fits {
        let expected = forced.map_or("step_failed|declared", FailureCode::as_str);
        let why = match forced {
            Some(_) => "the run's attempts and gates give another failure code".to_string(),
            None if failure.code == FailureCode::StepFailed => {
                "step_failed needs a last attempt that FAILED on its own".to_string()
            }
            None => "no denied attempt, rejected or expired gate gives this code".to_string(),
        };
        return Err(at.broken("failure", Some(expected), Some(failure.code.as_str()), why));
    }
    // The step named is the one whose attempt or gate failed the run: the rejected gate's, the
    // first expired gate's (every gate past its deadline expires at once), the denied
    // attempt's, the last attempt's when it failed on its own, and for a declared failure the
    // attempt open at the time, if any. The end closed that one (REJECTED, or FAILED with
    // run_ended) at its own time, and its closing entry is the one right before the run's last
    // `run.failed`. Both are asked: times alone mislead when two commands share one (the
    // writer's clock holds still after the wall clock steps back), and the entry before alone
    // when the attempt failed on its own just before (`run_ended` is refused from clients
    // since this rule, but older files may hold it).
    let ending_at = record
        .links
        .iter()
        .rposition(|l| l.action == "run.failed" && l.subject == format!("run:{}", run.run_id));
    let ending = ending_at.map(|i| &record.links[i]);
    let closed_by_the_end = || {
        let closing = &record.links[ending_at?.checked_sub(1)?];
        if !matches!(closing.action.as_str(), "step.failed" | "step.rejected") {
            return None;
        }
        let subject = closing.subject.strip_prefix("step:")?;
        record
            .steps
            .iter()
            .find(|s| format!("{}#{}", s.step_id, s.attempt) == subject)
            .filter(|s| {
                s.ended_at.is_some()
                    && s.ended_at == run.ended_at
                    && (s.status == StepStatus::Rejected || closed_by_a_run_end(s))
            })
    };
    let gate_step = |status: GateStatus| {
        record
            .gates
            .iter()
            .find(|g| g.status == status)
            .map(|g| g.step_id.as_str())
    };
    let failed_step = match failure.code {
        FailureCode::GateRejected => gate_step(GateStatus::Rejected),
        FailureCode::GateExpired => gate_step(GateStatus::Expired),
        FailureCode::PolicyDenied => record
            .steps
            .iter()
            .find(|s| s.status == StepStatus::Denied)
            .map(|s| s.step_id.as_str()),
        FailureCode::StepFailed => last.map(|s| s.step_id.as_str()),
        FailureCode::Declared => closed_by_the_end().map(|s| s.step_id.as_str()),
    };
    let named = failure.step_id.as_deref();
    at.same(
        "failure",
        failed_step.unwrap_or("null"),
        named.unwrap_or("null"),
        || "failure.step_id is not the step whose attempt or gate failed the run".into(),
    )?;
    let logged = ending.and_then(|l| l.reason.as_deref()).unwrap_or("null");
    at.same("failure", logged, &failure.reason, || {
        let seq = ending.map_or(0, |l| l.seq);
        format!("the failure reason is not the one its run.failed entry (seq {seq}) gives")
    })
}

/// Whether a FAILED attempt was failed by its run's end (`RUN_ENDED`), not on its own.
fn closed_by_a_run_end(step: &StepAttempt) -> bool {
    step.error.as_ref().and_then(|e| e.get("code")?.as_str()) == Some(crate::engine::RUN_ENDED)
}

/// `attempt_base` is what the last retry granted: the attempts the next step had used before it,
/// and 0 when no retry came after the last completed step (or none at all).
fn check_attempt_base(record: &RunRecord, entries: &EntryIndex<'_>) -> Checked {
    let run = &record.run;
    let retry = record.links.iter().rev().find(|l| is_retry(l));
    let completed_after = |seq: i64| {
        record
            .links
            .iter()
            .any(|l| l.seq > seq && l.action == "step.completed")
    };
    let expected = match (retry, &run.next_step_id) {
        (Some(retry), Some(next)) if !completed_after(retry.seq) => record
            .steps
            .iter()
            .filter(|s| s.step_id == *next)
            .filter(|s| {
                let subject = format!("step:{}#{}", s.step_id, s.attempt);
                entries
                    .first_seq(&subject, Kind::StepRequested)
                    .is_some_and(|seq| seq < retry.seq)
            })
            .map(|s| s.attempt)
            .max()
            .unwrap_or(0),
        _ => 0,
    };
    let at = At {
        table: "runs",
        row: Row::Key(&run.run_id),
    };
    at.same(
        "attempt_base",
        &expected.to_string(),
        &run.attempt_base.to_string(),
        || "attempt_base is the attempts the next step had used at the last retry".into(),
    )
}

fn is_retry(link: &AuditLink) -> bool {
    link.action == "run.status_changed"
        && link.from_status.as_deref() == Some(RunStatus::Failed.as_str())
        && link.to_status.as_deref() == Some(RunStatus::Running.as_str())
}

/// Each attempt carries its decision's actor and time; a flagged attempt has the gate opened on
/// its decision, and one that started passed it: APPROVED, resolved before the start.
fn check_flagged_attempts(record: &RunRecord, entries: &EntryIndex<'_>) -> Checked {
    for step in &record.steps {
        let at = At {
            table: "steps",
            row: Row::Attempt(step),
        };
        // `check_run` has tied each attempt to its decision already.
        let Some(decision) = record
            .decisions
            .iter()
            .find(|d| d.decision_id == step.decision_id)
        else {
            continue;
        };
        at.same("actor", &decision.actor, &step.actor, || {
            "the attempt's actor is not the one its decision was made for".into()
        })?;
        at.same(
            "started_at",
            &decision.decided_at.to_string(),
            &step.started_at.to_string(),
            || "an attempt starts when its decision is made".into(),
        )?;
        if decision.effect != Effect::Flag {
            continue;
        }
        let gate = record.gates.iter().find(|g| {
            g.decision_id.as_deref() == Some(decision.decision_id.as_str())
                && (&g.step_id, g.attempt) == (&step.step_id, step.attempt)
        });
        let Some(gate) = gate else {
            let why = "the decision flagged the attempt, but no gate was opened on it";
            return Err(at.broken("gate", None, Some(&decision.decision_id), why));
        };
        let started = matches!(
            step.status,
            StepStatus::Started | StepStatus::Completed | StepStatus::Failed
        );
        if !started {
            continue;
        }
        if gate.status != GateStatus::Approved {
            let why = format!(
                "a flagged attempt started though its gate {} is {}",
                gate.gate_id, gate.status
            );
            return Err(at.broken(
                "gate",
                Some(GateStatus::Approved.as_str()),
                Some(gate.status.as_str()),
                why,
            ));
        }
        let gate_subject = format!("gate:{}", gate.gate_id);
        let step_subject = format!("step:{}#{}", step.step_id, step.attempt);
        let resolved = entries.first_seq(&gate_subject, Kind::GateClosed);
        let start = entries.first_seq(&step_subject, Kind::StepStarted);
        if let (Some(resolved), Some(start)) = (resolved, start) {
            if resolved > start {
                let why = format!(
                    "the attempt started (seq {start}) before its gate was approved (seq {resolved})"
                );
                return Err(at.broken("gate", None, None, why));
            }
        }
    }
    Ok(())
}

/// A gate is what its `gate.requested` entry carried when it was opened, but for what resolving
/// it writes (status, resolver, time, comment, receipt) and its approvals; and each
/// `gate.approval` entry carries the approvals given until then as the rows hold them, the one
/// it records last. So the terms of a PENDING gate (requester, reason, deadline, quorum), the
/// deadline of a resolved one (no receipt covers it), and who approved a quorum gate cannot be
/// edited unseen. A gate opened before quorum gates existed was logged without
/// `approvals_required`; for a gate needing one approval that form is accepted too.
fn check_gates_as_logged(record: &RunRecord) -> Checked {
    for gate in &record.gates {
        let at = At {
            table: "gates",
            row: Row::Key(&gate.gate_id),
        };
        let hash = |value: &Value| {
            jcs::hash(value).map_err(|e| at.broken("audit", None, None, e.to_string()))
        };
        let subject = format!("gate:{}", gate.gate_id);
        let entries = record.links.iter().filter(|l| l.subject == subject);
        // `check_entry_counts` has found exactly one.
        if let Some(requested) = entries.clone().find(|l| l.action == "gate.requested") {
            let logged = receipts::is_gate_as_requested(gate, &requested.payload_hash)
                .map_err(|e| at.broken("audit", None, None, e.to_string()))?;
            if !logged {
                let expected = hash(&receipts::gate_requested_evidence(gate))?;
                let why = format!(
                    "the gate is not what its gate.requested entry (seq {}) carried when it was \
                     opened: its step, requester, reason, deadline or quorum was edited",
                    requested.seq
                );
                let found = requested.payload_hash.as_str();
                return Err(at.broken("audit", Some(&expected), Some(found), why));
            }
        }
        // The k-th approval entry carries the approvals of the k−1 before it, in the order the
        // rows are read (time, approver), and its own last: found by trying each row not yet
        // matched, which is exact whatever the clock did between approvals.
        let mut matched: Vec<usize> = Vec::new();
        for link in entries.filter(|l| l.action == "gate.approval") {
            let mut found = None;
            for candidate in (0..gate.approvals.len()).filter(|i| !matched.contains(i)) {
                let mut carried: Vec<&GateApproval> =
                    matched.iter().map(|&i| &gate.approvals[i]).collect();
                carried.push(&gate.approvals[candidate]);
                let value = receipts::gate_approval_evidence(
                    &gate.gate_id,
                    gate.approvals_required,
                    &carried,
                );
                if hash(&value)? == link.payload_hash {
                    found = Some(candidate);
                    break;
                }
            }
            let Some(candidate) = found else {
                let why = format!(
                    "the gate.approval entry seq {} carries approvals its gate_approvals rows do \
                     not hold: an approval or the quorum was edited",
                    link.seq
                );
                return Err(at.broken("approvals", None, Some(&link.payload_hash), why));
            };
            matched.push(candidate);
            matched.sort_unstable();
        }
    }
    Ok(())
}
