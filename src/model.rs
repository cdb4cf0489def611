//! The objects of the contract and the rules of their states: timestamps, statuses with their
//! transition tables, runs, step attempts, decisions, gates, audit entries, policies, definitions
//! and agents. Their serde shape is the contract's JSON shape and their field names are the SQLite
//! column names. Nothing here does IO.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::fmt;

/// A point in time with microsecond precision, written as RFC 3339 UTC with a `Z` suffix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub fn from_micros(micros: i64) -> Timestamp {
        Timestamp(micros)
    }

    pub fn micros(self) -> i64 {
        self.0
    }

    pub fn plus_seconds(self, seconds: i64) -> Timestamp {
        Timestamp(self.0.saturating_add(seconds.saturating_mul(1_000_000)))
    }

    /// Parses the exact form this module writes; anything else is `None`.
    pub fn parse(text: &str) -> Option<Timestamp> {
        let parsed = chrono::DateTime::parse_from_rfc3339(text).ok()?;
        Some(Timestamp(parsed.timestamp_micros()))
    }

    /// The text `Display` writes, `2026-11-24T10:00:00.123456Z`, for the years 0 to 9999 (every
    /// time fedcore writes); `None` for the others, which `Display` leaves to chrono. Cheaper
    /// than chrono's formatter, which `verify` would run for every timestamp it hashes.
    fn text_in_common_era(self) -> Option<[u8; 27]> {
        let seconds = self.0.div_euclid(1_000_000);
        let micros = self.0.rem_euclid(1_000_000);
        let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        let (year, month, day) = civil_from_days(days);
        if !(0..=9999).contains(&year) {
            return None;
        }
        let mut text = *b"0000-00-00T00:00:00.000000Z";
        let mut put = |at: usize, width: usize, mut n: i64| {
            for i in (at..at + width).rev() {
                text[i] = b'0' + (n % 10) as u8;
                n /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month);
        put(8, 2, day);
        put(11, 2, second_of_day / 3600);
        put(14, 2, second_of_day / 60 % 60);
        put(17, 2, second_of_day % 60);
        put(20, 6, micros);
        Some(text)
    }
}

/// The proleptic Gregorian `(year, month, day)` of a day counted from 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(text) = self.text_in_common_era() {
            // Only ASCII digits and separators were written.
            return f.write_str(std::str::from_utf8(&text).map_err(|_| fmt::Error)?);
        }
        match chrono::DateTime::from_timestamp_micros(self.0) {
            Some(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ")),
            None => write!(f, "invalid-time({})", self.0),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text).ok_or_else(|| serde::de::Error::custom("invalid timestamp"))
    }
}

/// The longest deadline a gate may have: one year.
pub const MAX_GATE_SECONDS: i64 = 366 * 24 * 3600;

/// The hash of nothing: `H(null)`, the payload hash of an audit entry without evidence.
pub const NULL_HASH: &str = "74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b";

/// The `prev_hash` of the first audit entry.
pub const ZERO_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Whether `text` is a well-formed identifier for policies, workflows, steps, agents and actors:
/// 1 to 128 characters of letters, digits and `._:@-`, starting with a letter or digit (so no id
/// is `.`, `..` or hidden when it names a file in an export).
pub fn is_valid_id(text: &str) -> bool {
    text.len() <= 128
        && text
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
}

/// Whether `text` is 64 lowercase hex characters.
pub fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A policy decision's effect. Precedence when several rules match: deny over flag over allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    Allow,
    Deny,
    Flag,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Allow => "allow",
            Effect::Deny => "deny",
            Effect::Flag => "flag",
        }
    }
    pub fn parse(s: &str) -> Option<Effect> {
        match s {
            "allow" => Some(Effect::Allow),
            "deny" => Some(Effect::Deny),
            "flag" => Some(Effect::Flag),
            _ => None,
        }
    }
}

/// Declares a string-valued enum with `as_str`, `parse`, `ALL` and serde as its exact names.
macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            pub fn parse(text: &str) -> Option<$name> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum!(
    /// The kind of a workflow step.
    StepType { Observe = "OBSERVE", Decide = "DECIDE", Gate = "GATE", Act = "ACT", Transform = "TRANSFORM" }
);

string_enum!(
    /// The status of a workflow run.
    RunStatus {
        Pending = "PENDING",
        Running = "RUNNING",
        Paused = "PAUSED",
        Completed = "COMPLETED",
        Failed = "FAILED",
        Cancelled = "CANCELLED",
    }
);

string_enum!(
    /// The status of one step attempt.
    StepStatus {
        AwaitingApproval = "AWAITING_APPROVAL",
        Started = "STARTED",
        Completed = "COMPLETED",
        Failed = "FAILED",
        Denied = "DENIED",
        Rejected = "REJECTED",
    }
);

string_enum!(
    /// The status of an approval gate.
    GateStatus {
        Pending = "PENDING",
        Approved = "APPROVED",
        Rejected = "REJECTED",
        Expired = "EXPIRED",
        Cancelled = "CANCELLED",
    }
);

string_enum!(
    /// Why a run failed.
    FailureCode {
        PolicyDenied = "policy_denied",
        GateRejected = "gate_rejected",
        GateExpired = "gate_expired",
        StepFailed = "step_failed",
        Declared = "declared",
    }
);

impl FailureCode {
    /// A failure that may be retried (`FAILED → RUNNING`); the others fail closed for good.
    pub fn is_retryable(self) -> bool {
        matches!(self, FailureCode::StepFailed | FailureCode::Declared)
    }
}

/// A refused run status change: where the run is and where it may go from there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRefused {
    pub from: RunStatus,
    pub to: RunStatus,
    pub allowed: Vec<RunStatus>,
}

impl RunStatus {
    /// The statuses a run may move to from `self`, given its failure code when FAILED. This is the
    /// one table of the run lifecycle (contract §3); every status change goes through `transition`.
    pub fn successors(self, failure: Option<FailureCode>) -> &'static [RunStatus] {
        use RunStatus::*;
        match self {
            Pending => &[Running, Failed, Cancelled],
            Running => &[Paused, Completed, Failed, Cancelled],
            Paused => &[Running, Failed, Cancelled],
            Failed if failure.is_some_and(FailureCode::is_retryable) => &[Running],
            Failed | Completed | Cancelled => &[],
        }
    }

    /// The statuses a client may ask for with `PATCH …/status` from `self`: the lifecycle's
    /// successors without the moves fedcore makes itself (`PENDING → RUNNING` on the first step
    /// request, `RUNNING → COMPLETED` when the last step completes).
    pub fn patch_targets(self, failure: Option<FailureCode>) -> Vec<RunStatus> {
        self.successors(failure)
            .iter()
            .copied()
            .filter(|&to| {
                to != RunStatus::Completed
                    && !(self == RunStatus::Pending && to == RunStatus::Running)
            })
            .collect()
    }

    /// Checks that `self → to` is a lifecycle transition.
    pub fn transition(
        self,
        to: RunStatus,
        failure: Option<FailureCode>,
    ) -> Result<RunStatus, TransitionRefused> {
        let allowed = self.successors(failure);
        if allowed.contains(&to) {
            Ok(to)
        } else {
            Err(TransitionRefused {
                from: self,
                to,
                allowed: allowed.to_vec(),
            })
        }
    }

    /// Whether the run is over for good: COMPLETED, CANCELLED, or FAILED in a way that is not retryable.
    pub fn is_final(self, failure: Option<FailureCode>) -> bool {
        self.successors(failure).is_empty()
    }

    /// Whether the run has ended (it carries a workflow receipt), final or not.
    pub fn has_ended(self) -> bool {
        matches!(
            self,
            RunStatus::Completed | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

impl StepStatus {
    /// The statuses an attempt may move to from `self` (contract §3).
    pub fn successors(self) -> &'static [StepStatus] {
        use StepStatus::*;
        match self {
            AwaitingApproval => &[Started, Rejected],
            Started => &[Completed, Failed],
            Completed | Failed | Denied | Rejected => &[],
        }
    }

    pub fn can_become(self, to: StepStatus) -> bool {
        self.successors().contains(&to)
    }

    /// Open attempts are the ones not finished yet; at most one per run exists at a time.
    pub fn is_open(self) -> bool {
        matches!(self, StepStatus::AwaitingApproval | StepStatus::Started)
    }
}

/// How a run failed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub code: FailureCode,
    pub reason: String,
    pub step_id: Option<String>,
}

/// A workflow run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub run_id: String,
    pub workflow_id: String,
    pub workflow_version: i64,
    pub status: RunStatus,
    pub created_by: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub input: Value,
    pub input_hash: String,
    pub next_step_id: Option<String>,
    pub failure: Option<Failure>,
    pub genesis_hash: String,
    pub receipt_hash: Option<String>,
    /// Attempts of `next_step_id` made before the last retry; they do not count against
    /// `max_attempts`. Internal: not part of the contract's JSON.
    #[serde(skip, default)]
    pub attempt_base: i64,
}

impl Run {
    pub fn failure_code(&self) -> Option<FailureCode> {
        self.failure.as_ref().map(|f| f.code)
    }
}

/// One attempt of one step of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepAttempt {
    pub run_id: String,
    pub step_id: String,
    pub step_type: StepType,
    pub step_index: i64,
    pub attempt: i64,
    pub status: StepStatus,
    pub actor: String,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
    pub input_hash: String,
    pub output_hash: Option<String>,
    pub error: Option<Value>,
    pub decision_id: String,
    pub decision_hash: String,
    pub prev_receipt_hash: String,
    pub receipt_hash: Option<String>,
}

/// A policy decision on one step attempt; written once, never changed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub decision_id: String,
    pub run_id: String,
    pub step_id: String,
    pub attempt: i64,
    pub effect: Effect,
    pub reason: String,
    pub policy_id: String,
    pub policy_version: i64,
    pub policy_hash: String,
    pub tier: String,
    pub rules_triggered: Vec<String>,
    pub input_hash: String,
    pub actor: String,
    pub decided_at: Timestamp,
    pub decision_hash: String,
}

/// A human approval gate bound to one step attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub gate_id: String,
    pub run_id: String,
    pub step_id: String,
    pub attempt: i64,
    pub status: GateStatus,
    pub reason: String,
    pub decision_id: Option<String>,
    pub requested_by: String,
    pub requested_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    pub resolved_by: Option<String>,
    pub resolved_at: Option<Timestamp>,
    pub comment: Option<String>,
    pub receipt_hash: Option<String>,
    /// How many distinct approvers the gate needs; 1 unless a flag rule asked for a quorum.
    #[serde(default = "one")]
    pub approvals_required: i64,
    /// The approvals given so far, in order (only quorum gates record them one by one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub approvals: Vec<GateApproval>,
}

fn one() -> i64 {
    1
}

impl Gate {
    /// Whether this gate needs more than one approver.
    pub fn is_quorum(&self) -> bool {
        self.approvals_required > 1
    }
}

/// One approver's approval of a quorum gate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GateApproval {
    pub approver: String,
    pub approved_at: Timestamp,
    pub comment: Option<String>,
}

/// One entry of the audit log.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub run_id: Option<String>,
    pub at: Timestamp,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub decision: Option<String>,
    pub reason: Option<String>,
    pub message: String,
    pub evidence_pack_ref: Option<String>,
    pub payload_hash: String,
    pub prev_hash: String,
    pub entry_hash: String,
}

/// One stored version of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    pub policy_id: String,
    pub version: i64,
    pub tier: String,
    pub default_effect: Effect,
    pub rules: Value,
    pub policy_hash: String,
}

/// One step of a workflow definition, written out with all four fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepDef {
    pub step_id: String,
    pub step_type: StepType,
    pub max_attempts: i64,
    pub policy_id: Option<String>,
}

/// One stored version of a workflow definition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    pub workflow_id: String,
    pub version: i64,
    pub policy_id: String,
    pub steps: Vec<StepDef>,
    pub definition_hash: String,
}

impl Definition {
    pub fn step(&self, step_id: &str) -> Option<(usize, &StepDef)> {
        self.steps
            .iter()
            .enumerate()
            .find(|(_, s)| s.step_id == step_id)
    }
}

/// An entry of the agent registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub agent_id: String,
    pub status: String,
    pub capabilities: Vec<String>,
    pub tier: Option<String>,
}

string_enum!(
    /// What a bearer token lets its holder do; see `Role::may`.
    Role { Agent = "agent", Approver = "approver", Admin = "admin", Auditor = "auditor" }
);

/// A class of requests, as far as roles are concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Every GET: runs, logs, receipts, audit, evidence, documents, the registry.
    Read,
    /// Create runs, request and complete steps, request gates.
    Work,
    /// Resolve (approve or reject) gates.
    Approve,
    /// Policies, workflow definitions, the agent registry, run status changes, tokens.
    Administer,
}

impl Role {
    /// The roles table: every role reads; each change belongs to exactly one role.
    pub fn may(self, permission: Permission) -> bool {
        match permission {
            Permission::Read => true,
            Permission::Work => self == Role::Agent,
            Permission::Approve => self == Role::Approver,
            Permission::Administer => self == Role::Admin,
        }
    }
}

/// A bearer token as stored, without its secret (only the secret's SHA-256 is kept, and it is
/// never read back into this type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Token {
    pub token_id: String,
    pub name: String,
    pub role: Role,
    pub created_at: Timestamp,
    pub created_by: String,
    pub revoked_at: Option<Timestamp>,
    pub revoked_by: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_belongs_to_one_role_and_every_role_reads() {
        for role in Role::ALL {
            assert!(role.may(Permission::Read), "{role} reads");
        }
        for permission in [
            Permission::Work,
            Permission::Approve,
            Permission::Administer,
        ] {
            let n = Role::ALL.iter().filter(|r| r.may(permission)).count();
            assert_eq!(n, 1, "{permission:?} belongs to one role");
        }
        assert!(!Role::Auditor.may(Permission::Work) && Role::Agent.may(Permission::Work));
        assert!(Role::Approver.may(Permission::Approve) && !Role::Agent.may(Permission::Approve));
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }

    #[test]
    fn timestamps_print_microseconds_in_utc_with_z() {
        let t = Timestamp::from_micros(1_795_428_000_123_456);
        assert_eq!(t.to_string(), "2026-11-23T10:00:00.123456Z");
        assert_eq!(Timestamp::parse(&t.to_string()), Some(t));
    }

    #[test]
    fn timestamps_print_as_chrono_prints_them_over_the_common_era_and_beyond() {
        let chrono_text = |t: Timestamp| match chrono::DateTime::from_timestamp_micros(t.0) {
            Some(c) => c.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
            None => format!("invalid-time({})", t.0),
        };
        const DAY: i64 = 86_400_000_000;
        // Year 0 starts 719,528 days before 1970; year 10000 starts 2,932,897 days after.
        let (first_day, last_day) = (-719_530, 2_932_899);
        let mut checked = 0;
        let mut day = first_day;
        while day <= last_day {
            // Every day of the first and last years of each century, every 101st day otherwise,
            // at a time of day that moves through every hour, minute and second.
            let micros = day * DAY + (day.rem_euclid(86_400) * 1_000_003) % DAY;
            for t in [micros, day * DAY, day * DAY + DAY - 1] {
                let t = Timestamp::from_micros(t);
                let text = t.to_string();
                assert_eq!(text, chrono_text(t), "micros {}", t.0);
                if text.len() == 27 {
                    assert_eq!(Timestamp::parse(&text), Some(t), "{text}");
                }
                checked += 1;
            }
            let year = civil_from_days(day).0;
            day += if year % 100 <= 1 || year % 100 == 99 {
                1
            } else {
                101
            };
        }
        assert!(checked > 50_000, "{checked}");
        for micros in [
            i64::MIN,
            i64::MAX,
            -62_167_219_200_000_001,
            253_402_300_800_000_000,
        ] {
            let t = Timestamp::from_micros(micros);
            assert_eq!(t.to_string(), chrono_text(t), "micros {micros}");
        }
    }

    #[test]
    fn a_run_moves_only_along_the_lifecycle() {
        use RunStatus::*;
        assert_eq!(Pending.transition(Running, None), Ok(Running));
        assert_eq!(Running.transition(Paused, None), Ok(Paused));
        assert_eq!(Paused.transition(Running, None), Ok(Running));
        assert!(Pending.transition(Paused, None).is_err());
        assert!(Paused.transition(Paused, None).is_err());
        assert!(Completed.transition(Running, None).is_err());
        assert!(Cancelled.transition(Running, None).is_err());
        let refused = Pending.transition(Paused, None).unwrap_err();
        assert_eq!(refused.allowed, vec![Running, Failed, Cancelled]);
    }

    #[test]
    fn a_client_may_patch_only_to_statuses_fedcore_does_not_reach_by_itself() {
        use RunStatus::*;
        assert_eq!(Pending.patch_targets(None), vec![Failed, Cancelled]);
        assert_eq!(Running.patch_targets(None), vec![Paused, Failed, Cancelled]);
        assert_eq!(Paused.patch_targets(None), vec![Running, Failed, Cancelled]);
        assert_eq!(
            Failed.patch_targets(Some(FailureCode::Declared)),
            vec![Running]
        );
        assert!(Completed.patch_targets(None).is_empty());
    }

    #[test]
    fn only_step_failures_and_declared_failures_can_be_retried() {
        use RunStatus::*;
        assert!(Failed
            .transition(Running, Some(FailureCode::StepFailed))
            .is_ok());
        assert!(Failed
            .transition(Running, Some(FailureCode::Declared))
            .is_ok());
        for code in [
            FailureCode::PolicyDenied,
            FailureCode::GateRejected,
            FailureCode::GateExpired,
        ] {
            assert!(Failed.transition(Running, Some(code)).is_err());
            assert!(Failed.is_final(Some(code)));
        }
        assert!(!Failed.is_final(Some(FailureCode::StepFailed)));
        assert!(Completed.is_final(None) && Cancelled.is_final(None));
    }

    #[test]
    fn an_attempt_moves_only_along_its_lifecycle() {
        use StepStatus::*;
        assert!(AwaitingApproval.can_become(Started));
        assert!(AwaitingApproval.can_become(Rejected));
        assert!(!AwaitingApproval.can_become(Completed));
        assert!(Started.can_become(Completed) && Started.can_become(Failed));
        assert!(
            !Started.can_become(Rejected),
            "a started attempt ends FAILED when its run ends"
        );
        for done in [Completed, Failed, Denied, Rejected] {
            assert!(done.successors().is_empty());
            assert!(!done.is_open());
        }
    }

    #[test]
    fn ids_are_short_plain_names() {
        assert!(is_valid_id("pt004_execution_spine"));
        assert!(is_valid_id("agent-7"));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("has space"));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id(".."));
        assert!(!is_valid_id(".hidden"));
        assert!(!is_valid_id(&"x".repeat(129)));
    }
}
