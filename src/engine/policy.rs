//! Policy documents: validating them into rules, and evaluating rules against a step's context.
//! Validation names the offending JSON path (like `rules[1].when.any[0].eq`) so that a 422 can say
//! exactly what is wrong. Evaluation is pure: every rule is evaluated, deny wins over flag over
//! allow, and when nothing matched the policy's default effect applies (contract §2).

use crate::model::{Effect, MAX_GATE_SECONDS};
use serde_json::{Map, Value};

/// A policy document that cannot be accepted, and the JSON path of the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyInvalid {
    /// Written like `rules[1].effect`, with no leading `$`.
    pub path: String,
    pub message: String,
}

/// One validated rule. `when_json` keeps the condition exactly as given, for storage and hashing.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub rule_id: String,
    pub effect: Effect,
    pub reason: String,
    pub when: Condition,
    pub when_json: Value,
    /// Flag rules only: the gate this rule opens expires after this many seconds (fail closed).
    pub gate_expires_in_s: Option<i64>,
    /// Flag rules only: how many distinct approvers the gate needs (default 1).
    pub approvals_required: Option<i64>,
}

/// What a gate opened on a flag must demand: the strictest terms of the matched flag rules
/// (the shortest deadline, the most approvers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GateTerms {
    pub expires_in_s: Option<i64>,
    pub approvals_required: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
    /// `{"path": "input.risk", "eq": "critical"}`; `path` is already split at the dots.
    Test {
        path: Vec<String>,
        op: Op,
        value: Value,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    In,
    NotIn,
    Gt,
    Gte,
    Lt,
    Lte,
    Exists,
    Contains,
    Prefix,
}

/// The validated body of a policy document, without its id and version.
#[derive(Debug, Clone, PartialEq)]
pub struct PolicyRules {
    pub tier: String,
    pub default_effect: Effect,
    pub rules: Vec<Rule>,
}

/// The outcome of evaluating a policy against one step's context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub effect: Effect,
    pub reason: String,
    /// Ids of every matched rule, in policy order.
    pub rules_triggered: Vec<String>,
    /// The terms of the gate a flag opens (`None` unless the effect is flag).
    pub gate: Option<GateTerms>,
}

/// Validates a policy document body (already known to be a JSON object; the caller has removed
/// "actor" and checked "policy_id"/"version"). Fields: "policy_id" (ignored here if present),
/// "tier" (required non-empty string), "default_effect" (optional, "allow"|"deny"|"flag", default deny),
/// "rules" (required array, may be empty). Any other top-level field → PolicyInvalid at that field name.
pub fn parse_policy(doc: &Map<String, Value>) -> Result<PolicyRules, PolicyInvalid> {
    // Unknown fields are reported first: a misspelt "rule" is better named than "rules" missing.
    reject_unknown_fields(doc, &POLICY_FIELDS, "")?;
    let tier = match doc.get("tier") {
        Some(Value::String(tier)) if !tier.is_empty() => tier.clone(),
        Some(_) => return Err(invalid("tier", "must be a non-empty string")),
        None => return Err(invalid("tier", "is required")),
    };
    let default_effect = match doc.get("default_effect") {
        // Absent or null: fail closed.
        None | Some(Value::Null) => Effect::Deny,
        Some(value) => parse_effect(value, "default_effect")?,
    };
    let rules = match doc.get("rules") {
        Some(rules) => parse_rules(rules)?,
        None => {
            return Err(invalid(
                "rules",
                "is required (an array of rules, may be empty)",
            ))
        }
    };
    Ok(PolicyRules {
        tier,
        default_effect,
        rules,
    })
}

/// Parses stored rules JSON (the array produced by rules_json) back; same validation.
pub fn parse_rules(rules: &Value) -> Result<Vec<Rule>, PolicyInvalid> {
    let Value::Array(items) = rules else {
        return Err(invalid("rules", "must be an array of rules"));
    };
    let mut parsed: Vec<Rule> = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let rule = parse_rule(item, &format!("rules[{index}]"))?;
        if parsed.iter().any(|earlier| earlier.rule_id == rule.rule_id) {
            return Err(invalid(
                format!("rules[{index}].rule_id"),
                format!(
                    "duplicate rule_id {:?}; rule ids must be unique",
                    rule.rule_id
                ),
            ));
        }
        parsed.push(rule);
    }
    Ok(parsed)
}

impl PolicyRules {
    /// The rules as stored and hashed: every rule with all four fields, `reason` defaulting to "",
    /// and `when` exactly as the document gave it.
    pub fn rules_json(&self) -> Value {
        let rules = self.rules.iter().map(|rule| {
            let mut object = Map::new();
            object.insert("rule_id".into(), Value::String(rule.rule_id.clone()));
            object.insert("effect".into(), Value::String(rule.effect.as_str().into()));
            object.insert("reason".into(), Value::String(rule.reason.clone()));
            object.insert("when".into(), rule.when_json.clone());
            // Written only when given, so policies without gate terms hash as they always did.
            if let Some(seconds) = rule.gate_expires_in_s {
                object.insert("gate_expires_in_s".into(), Value::from(seconds));
            }
            if let Some(n) = rule.approvals_required {
                object.insert("approvals_required".into(), Value::from(n));
            }
            Value::Object(object)
        });
        Value::Array(rules.collect())
    }
}

/// Evaluates every rule against `context` (`{"run", "step", "input", "actor", "agent"}`).
/// The effect is deny over flag over allow, else `default_effect`; the reason is that of the first
/// matched rule with the winning effect.
pub fn evaluate(rules: &[Rule], default_effect: Effect, context: &Value) -> Evaluation {
    let matched: Vec<&Rule> = rules
        .iter()
        .filter(|rule| condition_holds(&rule.when, context))
        .collect();
    let winner = [Effect::Deny, Effect::Flag, Effect::Allow]
        .into_iter()
        .find_map(|effect| matched.iter().find(|rule| rule.effect == effect));
    let (effect, reason) = match winner {
        Some(rule) => (rule.effect, rule.reason.clone()),
        None => (
            default_effect,
            format!("no rule matched: default {}", default_effect.as_str()),
        ),
    };
    let gate = (effect == Effect::Flag).then(|| {
        let flags = matched.iter().filter(|rule| rule.effect == Effect::Flag);
        GateTerms {
            expires_in_s: flags
                .clone()
                .filter_map(|rule| rule.gate_expires_in_s)
                .min(),
            approvals_required: flags
                .filter_map(|rule| rule.approvals_required)
                .max()
                .unwrap_or(1),
        }
    });
    Evaluation {
        effect,
        reason,
        rules_triggered: matched.iter().map(|rule| rule.rule_id.clone()).collect(),
        gate,
    }
}

const POLICY_FIELDS: [&str; 4] = ["policy_id", "tier", "default_effect", "rules"];
const RULE_FIELDS: [&str; 6] = [
    "rule_id",
    "effect",
    "reason",
    "when",
    "gate_expires_in_s",
    "approvals_required",
];
/// The most approvers a gate may require.
const MAX_APPROVALS: i64 = 100;
const PATH_ROOTS: [&str; 5] = ["run", "step", "input", "actor", "agent"];
const OPERATORS: [(&str, Op); 11] = [
    ("eq", Op::Eq),
    ("ne", Op::Ne),
    ("in", Op::In),
    ("not_in", Op::NotIn),
    ("gt", Op::Gt),
    ("gte", Op::Gte),
    ("lt", Op::Lt),
    ("lte", Op::Lte),
    ("exists", Op::Exists),
    ("contains", Op::Contains),
    ("prefix", Op::Prefix),
];
const OPERATOR_LIST: &str = "eq, ne, in, not_in, gt, gte, lt, lte, exists, contains, prefix";

fn invalid(path: impl Into<String>, message: impl Into<String>) -> PolicyInvalid {
    PolicyInvalid {
        path: path.into(),
        message: message.into(),
    }
}

/// `parent.field`, or just `field` at the top level.
fn child_path(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

fn reject_unknown_fields(
    object: &Map<String, Value>,
    known: &[&str],
    path: &str,
) -> Result<(), PolicyInvalid> {
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(invalid(
            child_path(path, key),
            format!("unknown field; expected one of {}", known.join(", ")),
        )),
        None => Ok(()),
    }
}

fn parse_effect(value: &Value, path: &str) -> Result<Effect, PolicyInvalid> {
    value
        .as_str()
        .and_then(Effect::parse)
        .ok_or_else(|| invalid(path, "must be one of \"allow\", \"deny\", \"flag\""))
}

fn parse_rule(value: &Value, path: &str) -> Result<Rule, PolicyInvalid> {
    let Value::Object(object) = value else {
        return Err(invalid(path, "must be an object"));
    };
    reject_unknown_fields(object, &RULE_FIELDS, path)?;
    let rule_id = match object.get("rule_id") {
        Some(Value::String(rule_id)) if !rule_id.is_empty() => rule_id.clone(),
        Some(_) => {
            return Err(invalid(
                child_path(path, "rule_id"),
                "must be a non-empty string",
            ))
        }
        None => return Err(invalid(child_path(path, "rule_id"), "is required")),
    };
    let effect = match object.get("effect") {
        Some(value) => parse_effect(value, &child_path(path, "effect"))?,
        None => return Err(invalid(child_path(path, "effect"), "is required")),
    };
    let reason = match object.get("reason") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(reason)) => reason.clone(),
        Some(_) => return Err(invalid(child_path(path, "reason"), "must be a string")),
    };
    let when_path = child_path(path, "when");
    let Some(when_json) = object.get("when") else {
        return Err(invalid(when_path, "is required (a condition)"));
    };
    let when = parse_condition(when_json, &when_path)?;
    let gate_expires_in_s = gate_term(object, path, "gate_expires_in_s", effect, MAX_GATE_SECONDS)?;
    let approvals_required = gate_term(object, path, "approvals_required", effect, MAX_APPROVALS)?;
    Ok(Rule {
        rule_id,
        effect,
        reason,
        when,
        when_json: when_json.clone(),
        gate_expires_in_s,
        approvals_required,
    })
}

/// An optional positive integer term of the gate a flag rule opens; refused on other effects.
fn gate_term(
    object: &Map<String, Value>,
    path: &str,
    field: &str,
    effect: Effect,
    max: i64,
) -> Result<Option<i64>, PolicyInvalid> {
    let Some(value) = object.get(field).filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    if effect != Effect::Flag {
        return Err(invalid(
            child_path(path, field),
            "only a flag rule opens a gate",
        ));
    }
    match value.as_i64() {
        Some(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ => Err(invalid(
            child_path(path, field),
            format!("must be an integer from 1 to {max}"),
        )),
    }
}

fn parse_condition(value: &Value, path: &str) -> Result<Condition, PolicyInvalid> {
    let Value::Object(object) = value else {
        return Err(invalid(path, "a condition must be an object"));
    };
    for combinator in ["all", "any", "not"] {
        let Some(operand) = object.get(combinator) else {
            continue;
        };
        if let Some(extra) = object.keys().find(|key| key.as_str() != combinator) {
            return Err(invalid(
                child_path(path, extra),
                format!("a condition with \"{combinator}\" must have no other field"),
            ));
        }
        let operand_path = child_path(path, combinator);
        if combinator == "not" {
            return Ok(Condition::Not(Box::new(parse_condition(
                operand,
                &operand_path,
            )?)));
        }
        let Value::Array(children) = operand else {
            return Err(invalid(operand_path, "must be an array of conditions"));
        };
        let children = children
            .iter()
            .enumerate()
            .map(|(index, child)| parse_condition(child, &format!("{operand_path}[{index}]")))
            .collect::<Result<Vec<_>, _>>()?;
        return Ok(if combinator == "all" {
            Condition::All(children)
        } else {
            Condition::Any(children)
        });
    }
    parse_test(object, path)
}

/// Parses `{"path": P, OP: V}`, the only condition form left once all/any/not are ruled out.
fn parse_test(object: &Map<String, Value>, path: &str) -> Result<Condition, PolicyInvalid> {
    let mut operator: Option<(&str, Op, &Value)> = None;
    for (key, operand) in object {
        if key == "path" {
            continue;
        }
        let Some((_, op)) = OPERATORS.iter().find(|(name, _)| name == key) else {
            return Err(invalid(
                child_path(path, key),
                format!(
                    "unknown operator; expected all, any, not, or path with one of {OPERATOR_LIST}"
                ),
            ));
        };
        if let Some((first, _, _)) = operator {
            return Err(invalid(
                child_path(path, key),
                format!("a condition takes exactly one operator, but \"{first}\" is also given"),
            ));
        }
        operator = Some((key, *op, operand));
    }
    let Some((name, op, operand)) = operator else {
        return Err(invalid(
            path,
            format!("a condition must be all, any, not, or path with one of {OPERATOR_LIST}"),
        ));
    };
    let segments = match object.get("path") {
        Some(value) => parse_path(value, &child_path(path, "path"))?,
        None => {
            return Err(invalid(
                child_path(path, "path"),
                "is required beside an operator",
            ))
        }
    };
    let operand_is_valid = match op {
        Op::In | Op::NotIn => operand.is_array(),
        Op::Exists => operand.is_boolean(),
        Op::Prefix => operand.is_string(),
        Op::Gt | Op::Gte | Op::Lt | Op::Lte => operand.is_number() || operand.is_string(),
        Op::Eq | Op::Ne | Op::Contains => true,
    };
    if !operand_is_valid {
        let expected = match op {
            Op::In | Op::NotIn => "an array",
            Op::Exists => "a boolean",
            Op::Prefix => "a string",
            _ => "a number or a string",
        };
        return Err(invalid(
            child_path(path, name),
            format!("the \"{name}\" operator needs {expected}"),
        ));
    }
    Ok(Condition::Test {
        path: segments,
        op,
        value: operand.clone(),
    })
}

fn parse_path(value: &Value, path: &str) -> Result<Vec<String>, PolicyInvalid> {
    let Some(text) = value.as_str().filter(|text| !text.is_empty()) else {
        return Err(invalid(
            path,
            "must be a non-empty dot-separated string like \"input.risk\"",
        ));
    };
    let segments: Vec<String> = text.split('.').map(str::to_string).collect();
    if segments.iter().any(String::is_empty) {
        return Err(invalid(path, format!("{text:?} has an empty segment")));
    }
    if !segments
        .first()
        .is_some_and(|root| PATH_ROOTS.contains(&root.as_str()))
    {
        return Err(invalid(
            path,
            format!("{text:?} must start with one of {}", PATH_ROOTS.join(", ")),
        ));
    }
    Ok(segments)
}

fn condition_holds(condition: &Condition, context: &Value) -> bool {
    match condition {
        Condition::All(children) => children.iter().all(|child| condition_holds(child, context)),
        Condition::Any(children) => children.iter().any(|child| condition_holds(child, context)),
        Condition::Not(child) => !condition_holds(child, context),
        Condition::Test { path, op, value } => match resolve(context, path) {
            Some(target) => test_holds(target, *op, value),
            // A missing path only satisfies "exists: false" and "ne" (contract §2).
            None => match op {
                Op::Exists => value == &Value::Bool(false),
                Op::Ne => true,
                _ => false,
            },
        },
    }
}

fn test_holds(target: &Value, op: Op, operand: &Value) -> bool {
    use std::cmp::Ordering::{Equal, Greater, Less};
    match op {
        Op::Eq => json_equal(target, operand),
        Op::Ne => !json_equal(target, operand),
        Op::In => elements(operand).any(|element| json_equal(target, element)),
        Op::NotIn => !elements(operand).any(|element| json_equal(target, element)),
        Op::Gt => matches!(compare(target, operand), Some(Greater)),
        Op::Gte => matches!(compare(target, operand), Some(Greater | Equal)),
        Op::Lt => matches!(compare(target, operand), Some(Less)),
        Op::Lte => matches!(compare(target, operand), Some(Less | Equal)),
        Op::Exists => operand == &Value::Bool(true),
        Op::Contains => match (target, operand) {
            (Value::Array(items), _) => items.iter().any(|item| json_equal(item, operand)),
            (Value::String(text), Value::String(part)) => text.contains(part.as_str()),
            _ => false,
        },
        Op::Prefix => match (target, operand) {
            (Value::String(text), Value::String(prefix)) => text.starts_with(prefix.as_str()),
            _ => false,
        },
    }
}

fn elements(value: &Value) -> impl Iterator<Item = &Value> {
    value.as_array().into_iter().flatten()
}

/// Walks objects by key; a segment made only of digits also indexes arrays.
fn resolve<'a>(context: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter()
        .try_fold(context, |current, segment| match current {
            Value::Object(map) => map.get(segment),
            Value::Array(items) if segment.bytes().all(|byte| byte.is_ascii_digit()) => {
                items.get(segment.parse::<usize>().ok()?)
            }
            _ => None,
        })
}

/// JSON equality where numbers compare by value (1 == 1.0). With `arbitrary_precision` a Number
/// keeps its literal text, so `Value`'s own `==` would tell 1 and 1.0 apart.
fn json_equal(left: &Value, right: &Value) -> bool {
    match (left, right) {
        (Value::Number(left), Value::Number(right)) => {
            match (left.as_f64(), right.as_f64()) {
                (Some(left), Some(right)) => left == right,
                // Not finite as a double (refused at the boundary); fall back to the literal.
                _ => left.as_str() == right.as_str(),
            }
        }
        (Value::Array(left), Value::Array(right)) => {
            left.len() == right.len() && left.iter().zip(right).all(|(l, r)| json_equal(l, r))
        }
        (Value::Object(left), Value::Object(right)) => {
            left.len() == right.len()
                && left
                    .iter()
                    .all(|(key, l)| right.get(key).is_some_and(|r| json_equal(l, r)))
        }
        _ => left == right,
    }
}

/// Numbers compare numerically and strings by code point; any other pairing has no order.
fn compare(left: &Value, right: &Value) -> Option<std::cmp::Ordering> {
    match (left, right) {
        (Value::Number(left), Value::Number(right)) => left.as_f64()?.partial_cmp(&right.as_f64()?),
        // UTF-8 byte order is code point order.
        (Value::String(left), Value::String(right)) => Some(left.cmp(right)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rules_from(rules: Value) -> Vec<Rule> {
        match parse_rules(&rules) {
            Ok(rules) => rules,
            Err(error) => panic!("test rules are valid, but {error}"),
        }
    }

    /// Whether a single condition holds against `context`.
    fn holds(when: Value, context: &Value) -> bool {
        let rules = rules_from(json!([{"rule_id": "r", "effect": "flag", "when": when}]));
        evaluate(&rules, Effect::Allow, context).effect == Effect::Flag
    }

    fn sample_context() -> Value {
        json!({
            "run": {"run_id": "r1", "workflow_id": "wf"},
            "step": {"step_id": "decide", "step_type": "DECIDE", "attempt": 1},
            "input": {
                "risk": "high", "amount": 2500, "ratio": 0.5, "note": null,
                "tags": ["urgent", "finance", 3], "items": [{"sku": "a-1"}, {"sku": "b-2"}],
                "nested": {"x": [1, {"y": true}]}
            },
            "actor": "agent-7",
            "agent": {"agent_id": "agent-7", "status": "active", "tier": "T2"}
        })
    }

    fn policy_error(document: Value) -> Option<String> {
        let Value::Object(document) = document else {
            return None;
        };
        parse_policy(&document).err().map(|error| error.path)
    }

    fn contract_example_policy() -> PolicyRules {
        let document = json!({
            "policy_id": "pt004_governance", "tier": "T2", "default_effect": "deny",
            "rules": [
                {"rule_id": "deny-critical", "effect": "deny",
                 "reason": "critical-risk actions are forbidden",
                 "when": {"path": "input.risk", "eq": "critical"}},
                {"rule_id": "flag-high", "effect": "flag", "reason": "high-risk actions need a human",
                 "when": {"any": [{"path": "input.risk", "eq": "high"},
                                  {"path": "input.amount", "gt": 10000}]}},
                {"rule_id": "allow-registered", "effect": "allow",
                 "reason": "registered active agent",
                 "when": {"path": "agent.status", "eq": "active"}}
            ]
        });
        match document.as_object().map(parse_policy) {
            Some(Ok(policy)) => policy,
            other => panic!("the contract's example policy is valid, got {other:?}"),
        }
    }

    fn contract_context(input: Value, agent: Value) -> Value {
        json!({"run": {}, "step": {"step_id": "decide", "step_type": "DECIDE", "attempt": 1},
               "input": input, "actor": "agent-7", "agent": agent})
    }

    #[test]
    fn eq_compares_strings_numbers_by_value_and_containers_deeply() {
        let context = sample_context();
        assert!(holds(json!({"path": "input.risk", "eq": "high"}), &context));
        assert!(!holds(json!({"path": "input.risk", "eq": "low"}), &context));
        assert!(holds(
            json!({"path": "input.amount", "eq": 2500.0}),
            &context
        ));
        assert!(holds(json!({"path": "input.amount", "eq": 25e2}), &context));
        assert!(!holds(
            json!({"path": "input.amount", "eq": "2500"}),
            &context
        ));
        assert!(holds(
            json!({"path": "input.tags", "eq": ["urgent", "finance", 3.0]}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.tags", "eq": ["finance", "urgent", 3]}),
            &context
        ));
        assert!(holds(
            json!({"path": "input.nested", "eq": {"x": [1.0, {"y": true}]}}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.nested", "eq": {"x": [1]}}),
            &context
        ));
    }

    #[test]
    fn numbers_written_differently_are_equal_when_parsed_from_text() {
        let context: Value = serde_json::from_str(r#"{"input": {"n": 1.0}}"#).unwrap_or_default();
        let when: Value =
            serde_json::from_str(r#"{"path": "input.n", "eq": 1}"#).unwrap_or_default();
        assert!(holds(when, &context));
    }

    #[test]
    fn ne_is_the_negation_of_eq_and_matches_across_types() {
        let context = sample_context();
        assert!(holds(json!({"path": "input.risk", "ne": "low"}), &context));
        assert!(!holds(
            json!({"path": "input.risk", "ne": "high"}),
            &context
        ));
        assert!(holds(
            json!({"path": "input.amount", "ne": "2500"}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.amount", "ne": 2500.0}),
            &context
        ));
    }

    #[test]
    fn in_and_not_in_test_membership_in_the_given_array() {
        let context = sample_context();
        assert!(holds(
            json!({"path": "input.risk", "in": ["low", "high"]}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.risk", "in": ["low", "medium"]}),
            &context
        ));
        assert!(!holds(json!({"path": "input.risk", "in": []}), &context));
        assert!(holds(
            json!({"path": "input.amount", "in": [1, 2500.0]}),
            &context
        ));
        assert!(holds(
            json!({"path": "input.risk", "not_in": ["low", "medium"]}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.risk", "not_in": ["high"]}),
            &context
        ));
        assert!(holds(json!({"path": "input.risk", "not_in": []}), &context));
    }

    #[test]
    fn ordering_operators_compare_numbers_numerically_and_strings_by_code_point() {
        let context = sample_context();
        assert!(holds(
            json!({"path": "input.amount", "gt": 2499.5}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.amount", "gt": 2500}),
            &context
        ));
        assert!(holds(
            json!({"path": "input.amount", "gte": 2500}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.amount", "gte": 2501}),
            &context
        ));
        assert!(holds(json!({"path": "input.ratio", "lt": 1}), &context));
        assert!(!holds(json!({"path": "input.ratio", "lt": 0.5}), &context));
        assert!(holds(json!({"path": "input.ratio", "lte": 0.5}), &context));
        assert!(!holds(json!({"path": "input.ratio", "lte": 0.4}), &context));
        assert!(holds(json!({"path": "input.risk", "gt": "h"}), &context));
        assert!(holds(json!({"path": "input.risk", "lt": "i"}), &context));
        assert!(holds(
            json!({"path": "input.risk", "gte": "high"}),
            &context
        ));
        assert!(!holds(json!({"path": "input.risk", "lte": "Z"}), &context));
        assert!(holds(json!({"path": "input.risk", "lt": "é"}), &context));
    }

    #[test]
    fn ordering_between_different_types_is_always_false() {
        let context = sample_context();
        for op in ["gt", "gte", "lt", "lte"] {
            assert!(
                !holds(json!({"path": "input.amount", op: "2500"}), &context),
                "{op}"
            );
            assert!(
                !holds(json!({"path": "input.risk", op: 1}), &context),
                "{op}"
            );
            assert!(
                !holds(json!({"path": "input.tags", op: 1}), &context),
                "{op}"
            );
            assert!(
                !holds(json!({"path": "input.note", op: 0}), &context),
                "{op}"
            );
        }
    }

    #[test]
    fn exists_tells_present_paths_from_missing_ones() {
        let context = sample_context();
        assert!(holds(
            json!({"path": "input.risk", "exists": true}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.risk", "exists": false}),
            &context
        ));
        assert!(holds(
            json!({"path": "input.missing", "exists": false}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.missing", "exists": true}),
            &context
        ));
    }

    #[test]
    fn contains_is_membership_for_arrays_and_substring_for_strings() {
        let context = sample_context();
        assert!(holds(
            json!({"path": "input.tags", "contains": "finance"}),
            &context
        ));
        assert!(holds(
            json!({"path": "input.tags", "contains": 3.0}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.tags", "contains": "fin"}),
            &context
        ));
        assert!(holds(
            json!({"path": "input.items", "contains": {"sku": "b-2"}}),
            &context
        ));
        assert!(holds(
            json!({"path": "input.risk", "contains": "ig"}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.risk", "contains": "low"}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.risk", "contains": 1}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.amount", "contains": 2500}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.nested", "contains": "x"}),
            &context
        ));
    }

    #[test]
    fn prefix_matches_strings_that_start_with_the_operand() {
        let context = sample_context();
        assert!(holds(
            json!({"path": "actor", "prefix": "agent-"}),
            &context
        ));
        assert!(holds(json!({"path": "actor", "prefix": ""}), &context));
        assert!(!holds(
            json!({"path": "actor", "prefix": "human-"}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.tags", "prefix": "urgent"}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.amount", "prefix": "25"}),
            &context
        ));
    }

    #[test]
    fn a_missing_path_matches_only_exists_false_and_ne() {
        let context = sample_context();
        let operators = [
            ("eq", json!("x"), false),
            ("ne", json!("x"), true),
            ("in", json!(["x"]), false),
            ("not_in", json!(["x"]), false),
            ("gt", json!(1), false),
            ("gte", json!(1), false),
            ("lt", json!(1), false),
            ("lte", json!(1), false),
            ("exists", json!(true), false),
            ("exists", json!(false), true),
            ("contains", json!("x"), false),
            ("prefix", json!("x"), false),
        ];
        for path in [
            "input.missing",
            "input.risk.deeper",
            "input.tags.7",
            "agent.status.x",
        ] {
            for (op, operand, expected) in &operators {
                let when = json!({"path": path, (*op): operand});
                assert_eq!(holds(when, &context), *expected, "{path} {op}");
            }
        }
    }

    #[test]
    fn a_path_holding_null_exists_and_equals_null() {
        let context = sample_context();
        assert!(holds(
            json!({"path": "input.note", "exists": true}),
            &context
        ));
        assert!(holds(json!({"path": "input.note", "eq": null}), &context));
        assert!(!holds(json!({"path": "input.note", "ne": null}), &context));
        assert!(holds(
            json!({"path": "input.note", "not_in": ["x"]}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.note", "contains": "x"}),
            &context
        ));
        let agentless = contract_context(json!({}), Value::Null);
        assert!(holds(json!({"path": "agent", "eq": null}), &agentless));
        assert!(!holds(
            json!({"path": "agent.status", "exists": true}),
            &agentless
        ));
    }

    #[test]
    fn digit_segments_index_arrays_and_object_keys() {
        let context = sample_context();
        assert!(holds(
            json!({"path": "input.items.1.sku", "eq": "b-2"}),
            &context
        ));
        assert!(holds(
            json!({"path": "input.nested.x.1.y", "eq": true}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.items.2", "exists": true}),
            &context
        ));
        assert!(!holds(
            json!({"path": "input.items.first", "exists": true}),
            &context
        ));
        let keyed = contract_context(json!({"by_code": {"42": "answer"}}), Value::Null);
        assert!(holds(
            json!({"path": "input.by_code.42", "eq": "answer"}),
            &keyed
        ));
        let huge_index = json!({"path": "input.items.99999999999999999999999", "exists": false});
        assert!(holds(huge_index, &context));
    }

    #[test]
    fn all_any_and_not_combine_and_nest() {
        let context = sample_context();
        let high = json!({"path": "input.risk", "eq": "high"});
        let low = json!({"path": "input.risk", "eq": "low"});
        assert!(holds(json!({"all": []}), &context));
        assert!(!holds(json!({"any": []}), &context));
        assert!(holds(json!({"all": [high, {"not": low}]}), &context));
        assert!(!holds(json!({"all": [high, low]}), &context));
        assert!(holds(json!({"any": [low, high]}), &context));
        assert!(!holds(json!({"not": {"any": [low, high]}}), &context));
        let nested = json!({"any": [low, {"all": [{"not": {"not": high}},
                            {"path": "agent.status", "in": ["active"]}]}]});
        assert!(holds(nested, &context));
    }

    #[test]
    fn deny_wins_over_flag_and_flag_over_allow() {
        let always = json!({"path": "actor", "exists": true});
        let rules = rules_from(json!([
            {"rule_id": "a", "effect": "allow", "reason": "allowed", "when": always},
            {"rule_id": "f", "effect": "flag", "reason": "flagged", "when": always},
            {"rule_id": "d", "effect": "deny", "reason": "denied", "when": always},
        ]));
        let context = sample_context();
        let all_three = evaluate(&rules, Effect::Allow, &context);
        assert_eq!(all_three.effect, Effect::Deny);
        assert_eq!(all_three.reason, "denied");
        assert_eq!(all_three.rules_triggered, ["a", "f", "d"]);
        let without_deny = evaluate(&rules[..2], Effect::Deny, &context);
        assert_eq!(
            (without_deny.effect, without_deny.reason.as_str()),
            (Effect::Flag, "flagged")
        );
        let only_allow = evaluate(&rules[..1], Effect::Deny, &context);
        assert_eq!(
            (only_allow.effect, only_allow.reason.as_str()),
            (Effect::Allow, "allowed")
        );
    }

    #[test]
    fn the_default_effect_applies_when_no_rule_matches() {
        let never = json!({"path": "actor", "exists": false});
        let rules = rules_from(json!([{"rule_id": "d", "effect": "deny", "when": never}]));
        for default_effect in [Effect::Allow, Effect::Deny, Effect::Flag] {
            let evaluation = evaluate(&rules, default_effect, &sample_context());
            assert_eq!(evaluation.effect, default_effect);
            let expected = format!("no rule matched: default {}", default_effect.as_str());
            assert_eq!(evaluation.reason, expected);
            assert!(evaluation.rules_triggered.is_empty());
        }
        let empty = evaluate(&[], Effect::Deny, &sample_context());
        assert_eq!(empty.reason, "no rule matched: default deny");
    }

    #[test]
    fn the_reason_comes_from_the_first_matched_rule_with_the_winning_effect() {
        let always = json!({"path": "actor", "exists": true});
        let never = json!({"path": "actor", "exists": false});
        let rules = rules_from(json!([
            {"rule_id": "allow-1", "effect": "allow", "reason": "allow one", "when": always},
            {"rule_id": "flag-0", "effect": "flag", "reason": "flag zero", "when": never},
            {"rule_id": "flag-1", "effect": "flag", "reason": "flag one", "when": always},
            {"rule_id": "flag-2", "effect": "flag", "reason": "flag two", "when": always},
            {"rule_id": "allow-2", "effect": "allow", "when": always},
        ]));
        let evaluation = evaluate(&rules, Effect::Deny, &sample_context());
        assert_eq!(evaluation.effect, Effect::Flag);
        assert_eq!(evaluation.reason, "flag one");
        assert_eq!(
            evaluation.rules_triggered,
            ["allow-1", "flag-1", "flag-2", "allow-2"]
        );
    }

    #[test]
    fn the_contract_example_denies_critical_risk_even_for_an_active_agent() {
        let policy = contract_example_policy();
        let context = contract_context(json!({"risk": "critical"}), json!({"status": "active"}));
        let evaluation = evaluate(&policy.rules, policy.default_effect, &context);
        assert_eq!(evaluation.effect, Effect::Deny);
        assert_eq!(evaluation.reason, "critical-risk actions are forbidden");
        assert_eq!(
            evaluation.rules_triggered,
            ["deny-critical", "allow-registered"]
        );
    }

    #[test]
    fn the_contract_example_flags_high_risk_and_large_amounts() {
        let policy = contract_example_policy();
        let active = json!({"status": "active"});
        let high = contract_context(json!({"risk": "high"}), active.clone());
        let evaluation = evaluate(&policy.rules, policy.default_effect, &high);
        assert_eq!(evaluation.effect, Effect::Flag);
        assert_eq!(evaluation.reason, "high-risk actions need a human");
        assert_eq!(
            evaluation.rules_triggered,
            ["flag-high", "allow-registered"]
        );

        let large = contract_context(json!({"risk": "normal", "amount": 20000}), Value::Null);
        let evaluation = evaluate(&policy.rules, policy.default_effect, &large);
        assert_eq!(evaluation.effect, Effect::Flag);
        assert_eq!(evaluation.rules_triggered, ["flag-high"]);
    }

    #[test]
    fn the_contract_example_allows_an_active_agent_and_denies_an_unknown_one() {
        let policy = contract_example_policy();
        let normal = json!({"risk": "normal", "amount": 10000});
        let active = contract_context(normal.clone(), json!({"status": "active"}));
        let evaluation = evaluate(&policy.rules, policy.default_effect, &active);
        assert_eq!(evaluation.effect, Effect::Allow);
        assert_eq!(evaluation.reason, "registered active agent");
        assert_eq!(evaluation.rules_triggered, ["allow-registered"]);

        let unknown = contract_context(normal, Value::Null);
        let evaluation = evaluate(&policy.rules, policy.default_effect, &unknown);
        assert_eq!(evaluation.effect, Effect::Deny);
        assert_eq!(evaluation.reason, "no rule matched: default deny");
        assert!(evaluation.rules_triggered.is_empty());
    }

    #[test]
    fn stored_rules_json_parses_back_to_the_same_rules() {
        let policy = contract_example_policy();
        let stored = policy.rules_json();
        assert_eq!(parse_rules(&stored).as_ref(), Ok(&policy.rules));
        assert_eq!(
            stored[0]["when"],
            json!({"path": "input.risk", "eq": "critical"})
        );
        assert_eq!(policy.tier, "T2");
    }

    #[test]
    fn rules_json_writes_a_missing_reason_as_an_empty_string() {
        let document = json!({"tier": "T1", "rules": [
            {"rule_id": "r", "effect": "allow", "when": {"path": "actor", "exists": true}}]});
        let policy = document.as_object().map(parse_policy);
        let stored = policy
            .and_then(Result::ok)
            .map(|policy| policy.rules_json());
        let expected = json!([{"rule_id": "r", "effect": "allow", "reason": "",
                               "when": {"path": "actor", "exists": true}}]);
        assert_eq!(stored, Some(expected));
    }

    #[test]
    fn the_default_effect_is_deny_when_absent() {
        let document = json!({"tier": "T1", "rules": []});
        let policy = document.as_object().map(parse_policy);
        let default_effect = policy
            .and_then(Result::ok)
            .map(|policy| policy.default_effect);
        assert_eq!(default_effect, Some(Effect::Deny));
    }

    /// The path of the error for a policy with these rules.
    fn rules_error(rules: Value) -> Option<String> {
        policy_error(json!({"policy_id": "p", "tier": "T1", "rules": rules}))
    }

    #[test]
    fn a_bad_effect_is_reported_at_the_rule_effect() {
        let when = json!({"path": "actor", "exists": true});
        let rules = json!([{"rule_id": "ok", "effect": "allow", "when": when},
                           {"rule_id": "r", "effect": "maybe", "when": when}]);
        assert_eq!(rules_error(rules).as_deref(), Some("rules[1].effect"));
        let missing = json!([{"rule_id": "r", "when": when}]);
        assert_eq!(rules_error(missing).as_deref(), Some("rules[0].effect"));
    }

    #[test]
    fn a_missing_when_is_reported_at_the_rule_when() {
        let rules = json!([{"rule_id": "r", "effect": "deny"}]);
        assert_eq!(rules_error(rules).as_deref(), Some("rules[0].when"));
    }

    #[test]
    fn an_unknown_operator_is_reported_at_its_own_key() {
        let rules = json!([{"rule_id": "r", "effect": "deny",
                            "when": {"any": [{"path": "input.risk", "equals": "x"}]}}]);
        assert_eq!(
            rules_error(rules).as_deref(),
            Some("rules[0].when.any[0].equals")
        );
    }

    #[test]
    fn two_operators_in_one_condition_are_refused() {
        let rules = json!([{"rule_id": "r", "effect": "deny",
                            "when": {"path": "input.amount", "gt": 1, "lt": 5}}]);
        assert_eq!(rules_error(rules).as_deref(), Some("rules[0].when.lt"));
    }

    #[test]
    fn operands_of_the_wrong_type_are_reported_at_the_operator() {
        let cases = [
            (json!({"path": "input.x", "in": "a"}), "rules[0].when.in"),
            (
                json!({"not": {"path": "input.x", "not_in": {}}}),
                "rules[0].when.not.not_in",
            ),
            (
                json!({"path": "input.x", "exists": "yes"}),
                "rules[0].when.exists",
            ),
            (
                json!({"path": "input.x", "prefix": 1}),
                "rules[0].when.prefix",
            ),
            (
                json!({"all": [{"path": "input.x", "gt": null}]}),
                "rules[0].when.all[0].gt",
            ),
            (json!({"path": "input.x", "lte": [1]}), "rules[0].when.lte"),
        ];
        for (when, expected) in cases {
            let rules = json!([{"rule_id": "r", "effect": "deny", "when": when}]);
            assert_eq!(rules_error(rules).as_deref(), Some(expected));
        }
    }

    #[test]
    fn paths_must_name_a_known_root_and_have_no_empty_segment() {
        for path in [
            json!("inputs.risk"),
            json!("risk"),
            json!(""),
            json!("input..risk"),
            json!("input."),
            json!(7),
        ] {
            let rules = json!([{"rule_id": "r", "effect": "deny",
                                "when": {"all": [{"path": "actor", "exists": true},
                                                 {"path": path, "eq": 1}]}}]);
            assert_eq!(
                rules_error(rules).as_deref(),
                Some("rules[0].when.all[1].path")
            );
        }
        let missing_path = json!([{"rule_id": "r", "effect": "deny", "when": {"eq": 1}}]);
        assert_eq!(
            rules_error(missing_path).as_deref(),
            Some("rules[0].when.path")
        );
    }

    #[test]
    fn malformed_conditions_are_reported_where_they_are() {
        let cases = [
            (json!("input.risk"), "rules[0].when"),
            (json!({}), "rules[0].when"),
            (json!({"path": "input.risk"}), "rules[0].when"),
            (json!({"all": {}}), "rules[0].when.all"),
            (json!({"any": [1]}), "rules[0].when.any[0]"),
            (json!({"all": [], "any": []}), "rules[0].when.any"),
            (
                json!({"not": {"path": "input.x", "eq": 1}, "path": "input.x"}),
                "rules[0].when.path",
            ),
        ];
        for (when, expected) in cases {
            let rules = json!([{"rule_id": "r", "effect": "deny", "when": when}]);
            assert_eq!(rules_error(rules).as_deref(), Some(expected), "{expected}");
        }
    }

    #[test]
    fn a_duplicate_rule_id_is_reported_at_the_second_rule() {
        let when = json!({"path": "actor", "exists": true});
        let rules = json!([{"rule_id": "a", "effect": "deny", "when": when},
                           {"rule_id": "b", "effect": "deny", "when": when},
                           {"rule_id": "a", "effect": "allow", "when": when}]);
        assert_eq!(rules_error(rules).as_deref(), Some("rules[2].rule_id"));
    }

    #[test]
    fn rule_fields_are_checked_by_name() {
        let when = json!({"path": "actor", "exists": true});
        let cases = [
            (
                json!([{"rule_id": "r", "effect": "deny", "when": when, "priority": 1}]),
                "rules[0].priority",
            ),
            (
                json!([{"effect": "deny", "when": when}]),
                "rules[0].rule_id",
            ),
            (
                json!([{"rule_id": "", "effect": "deny", "when": when}]),
                "rules[0].rule_id",
            ),
            (
                json!([{"rule_id": "r", "effect": "deny", "reason": 5, "when": when}]),
                "rules[0].reason",
            ),
            (json!(["not a rule"]), "rules[0]"),
            (json!({"rule_id": "r"}), "rules"),
        ];
        for (rules, expected) in cases {
            assert_eq!(rules_error(rules).as_deref(), Some(expected), "{expected}");
        }
    }

    #[test]
    fn top_level_fields_are_checked_by_name() {
        let cases = [
            (
                json!({"tier": "T1", "default_effect": "block", "rules": []}),
                "default_effect",
            ),
            (
                json!({"tier": "T1", "default_effect": 1, "rules": []}),
                "default_effect",
            ),
            (json!({"rules": []}), "tier"),
            (json!({"tier": "", "rules": []}), "tier"),
            (json!({"tier": 2, "rules": []}), "tier"),
            (json!({"tier": "T1"}), "rules"),
            (json!({"tier": "T1", "rules": [], "version": 3}), "version"),
        ];
        for (document, expected) in cases {
            assert_eq!(
                policy_error(document).as_deref(),
                Some(expected),
                "{expected}"
            );
        }
    }

    #[test]
    fn the_error_message_names_the_path() {
        let document = json!({"tier": "T1", "default_effect": "block", "rules": []});
        let message = document
            .as_object()
            .and_then(|document| parse_policy(document).err())
            .map(|error| error.to_string());
        let expected = "default_effect: must be one of \"allow\", \"deny\", \"flag\"";
        assert_eq!(message.as_deref(), Some(expected));
    }
}
