//! Policies, workflow definitions and the agent registry: validating the documents (422 with the
//! offending JSON path), numbering versions, hashing and storing them as evidence, and auditing
//! each change.

use super::{policy, receipts, Ctx, Draft, Error, Outcome};
use crate::model::*;
use crate::store;
use serde_json::{Map, Value};

const DEFAULT_MAX_ATTEMPTS: i64 = 3;
const MAX_MAX_ATTEMPTS: i64 = 1000;

/// Refuses a top-level field that is not one of `allowed` (contract §4: unknown fields are 400).
fn refuse_unknown_fields(doc: &Map<String, Value>, allowed: &[&str]) -> Result<(), Error> {
    match doc.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(field) => Err(Error::BadRequest {
            code: "unknown_field",
            message: format!("unknown field {field:?}"),
            path: Some(field.clone()),
        }),
        None => Ok(()),
    }
}

/// Checks the id in the path, refuses a `version` in the body, and checks that the body's copy
/// of the id (if any) equals the path's.
fn check_identity(
    doc: &Map<String, Value>,
    id_field: &str,
    id: &str,
    code: &'static str,
) -> Result<(), Error> {
    if !is_valid_id(id) {
        return Err(Error::invalid(
            code,
            id_field,
            format!("{id_field} must be 1-128 letters, digits or ._:@-"),
        ));
    }
    if doc.contains_key("version") {
        return Err(Error::invalid(
            code,
            "version",
            "version is assigned by fedcore and may not be sent",
        ));
    }
    match doc.get(id_field) {
        None => Ok(()),
        Some(Value::String(s)) if s == id => Ok(()),
        Some(_) => Err(Error::invalid(
            code,
            id_field,
            format!("{id_field} must equal the one in the path ({id:?})"),
        )),
    }
}

pub(super) fn put_policy(
    ctx: &mut Ctx<'_, '_>,
    policy_id: &str,
    doc: &Map<String, Value>,
    actor: &str,
) -> Result<Outcome, Error> {
    check_identity(doc, "policy_id", policy_id, "invalid_policy")?;
    refuse_unknown_fields(doc, &["policy_id", "tier", "default_effect", "rules"])?;
    let parsed = policy::parse_policy(doc)
        .map_err(|e| Error::invalid("invalid_policy", e.path, e.message))?;
    let version = store::get_policy(ctx.tx, policy_id, None)?.map_or(1, |p| p.version + 1);
    let mut stored = Policy {
        policy_id: policy_id.to_string(),
        version,
        tier: parsed.tier.clone(),
        default_effect: parsed.default_effect,
        rules: parsed.rules_json(),
        policy_hash: String::new(),
    };
    stored.policy_hash = ctx.evidence(&receipts::policy_document(&stored))?;
    store::insert_policy(ctx.tx, &stored, ctx.now, actor)?;
    ctx.audit(Draft {
        actor,
        action: "policy.put",
        subject: format!("policy:{policy_id}@{version}"),
        message: format!(
            "Policy {policy_id} version {version} stored (tier {})",
            stored.tier
        ),
        evidence: Some(stored.policy_hash.clone()),
        ..Draft::default()
    })?;
    Ok(Outcome::Policy(stored))
}

pub(super) fn put_definition(
    ctx: &mut Ctx<'_, '_>,
    workflow_id: &str,
    doc: &Map<String, Value>,
    actor: &str,
) -> Result<Outcome, Error> {
    const CODE: &str = "invalid_definition";
    check_identity(doc, "workflow_id", workflow_id, CODE)?;
    refuse_unknown_fields(doc, &["workflow_id", "policy_id", "steps"])?;
    let policy_id = match doc.get("policy_id") {
        Some(Value::String(s)) => s.clone(),
        Some(_) => {
            return Err(Error::invalid(
                CODE,
                "policy_id",
                "policy_id must be a string",
            ))
        }
        None => return Err(Error::invalid(CODE, "policy_id", "policy_id is required")),
    };
    require_policy(ctx, &policy_id, "policy_id")?;
    let steps = match doc.get("steps") {
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(Value::Array(_)) => {
            return Err(Error::invalid(
                CODE,
                "steps",
                "a workflow needs at least one step",
            ))
        }
        Some(_) => return Err(Error::invalid(CODE, "steps", "steps must be an array")),
        None => return Err(Error::invalid(CODE, "steps", "steps is required")),
    };
    let mut parsed = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        let step = parse_step(ctx, step, i)?;
        if parsed.iter().any(|s: &StepDef| s.step_id == step.step_id) {
            return Err(Error::invalid(
                CODE,
                format!("steps[{i}].step_id"),
                format!("step_id {:?} appears twice", step.step_id),
            ));
        }
        parsed.push(step);
    }
    let version = store::get_definition(ctx.tx, workflow_id, None)?.map_or(1, |d| d.version + 1);
    let mut stored = Definition {
        workflow_id: workflow_id.to_string(),
        version,
        policy_id,
        steps: parsed,
        definition_hash: String::new(),
    };
    stored.definition_hash = ctx.evidence(&receipts::definition_document(&stored))?;
    store::insert_definition(ctx.tx, &stored, ctx.now, actor)?;
    ctx.audit(Draft {
        actor,
        action: "definition.put",
        subject: format!("workflow:{workflow_id}@{version}"),
        message: format!(
            "Workflow {workflow_id} version {version} stored ({} steps)",
            stored.steps.len()
        ),
        evidence: Some(stored.definition_hash.clone()),
        ..Draft::default()
    })?;
    Ok(Outcome::Definition(stored))
}

fn require_policy(ctx: &Ctx<'_, '_>, policy_id: &str, path: &str) -> Result<(), Error> {
    if store::get_policy(ctx.tx, policy_id, None)?.is_none() {
        return Err(Error::invalid(
            "invalid_definition",
            path,
            format!("policy {policy_id:?} does not exist"),
        ));
    }
    Ok(())
}

fn parse_step(ctx: &Ctx<'_, '_>, step: &Value, i: usize) -> Result<StepDef, Error> {
    const CODE: &str = "invalid_definition";
    let at = |field: &str| format!("steps[{i}].{field}");
    let Value::Object(fields) = step else {
        return Err(Error::invalid(
            CODE,
            format!("steps[{i}]"),
            "a step must be an object",
        ));
    };
    if let Some(field) = fields
        .keys()
        .find(|k| !["step_id", "step_type", "max_attempts", "policy_id"].contains(&k.as_str()))
    {
        return Err(Error::invalid(
            CODE,
            at(field),
            format!("unknown step field {field:?}"),
        ));
    }
    let step_id = match fields.get("step_id") {
        Some(Value::String(s)) if is_valid_id(s) => s.clone(),
        Some(_) => {
            return Err(Error::invalid(
                CODE,
                at("step_id"),
                "step_id must be 1-128 letters, digits or ._:@-",
            ))
        }
        None => return Err(Error::invalid(CODE, at("step_id"), "step_id is required")),
    };
    let step_type = match fields.get("step_type") {
        Some(Value::String(s)) => StepType::parse(s).ok_or_else(|| {
            Error::invalid(
                CODE,
                at("step_type"),
                "step_type must be one of OBSERVE, DECIDE, GATE, ACT, TRANSFORM",
            )
        })?,
        Some(_) => {
            return Err(Error::invalid(
                CODE,
                at("step_type"),
                "step_type must be a string",
            ))
        }
        None => {
            return Err(Error::invalid(
                CODE,
                at("step_type"),
                "step_type is required",
            ))
        }
    };
    let max_attempts = match fields.get("max_attempts") {
        None | Some(Value::Null) => DEFAULT_MAX_ATTEMPTS,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(n) if (1..=MAX_MAX_ATTEMPTS).contains(&n) => n,
            _ => {
                return Err(Error::invalid(
                    CODE,
                    at("max_attempts"),
                    format!("max_attempts must be an integer from 1 to {MAX_MAX_ATTEMPTS}"),
                ))
            }
        },
        Some(_) => {
            return Err(Error::invalid(
                CODE,
                at("max_attempts"),
                "max_attempts must be an integer",
            ))
        }
    };
    let policy_id = match fields.get("policy_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            require_policy(ctx, s, &at("policy_id"))?;
            Some(s.clone())
        }
        Some(_) => {
            return Err(Error::invalid(
                CODE,
                at("policy_id"),
                "policy_id must be a string or null",
            ))
        }
    };
    Ok(StepDef {
        step_id,
        step_type,
        max_attempts,
        policy_id,
    })
}

pub(super) fn put_agent(
    ctx: &mut Ctx<'_, '_>,
    agent_id: &str,
    doc: &Map<String, Value>,
    actor: &str,
) -> Result<Outcome, Error> {
    const CODE: &str = "invalid_value";
    if !is_valid_id(agent_id) {
        return Err(Error::invalid(
            CODE,
            "agent_id",
            "agent_id must be 1-128 letters, digits or ._:@-",
        ));
    }
    refuse_unknown_fields(doc, &["agent_id", "status", "capabilities", "tier"])?;
    match doc.get("agent_id") {
        None => {}
        Some(Value::String(s)) if s == agent_id => {}
        Some(_) => {
            return Err(Error::invalid(
                CODE,
                "agent_id",
                "agent_id must equal the one in the path",
            ))
        }
    }
    let wrong_type = |field: &str, expected: &str| Error::BadRequest {
        code: "wrong_type",
        message: format!("{field} must be {expected}"),
        path: Some(field.to_string()),
    };
    let status = match doc.get("status") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(Error::invalid(CODE, "status", "status must not be empty"))
        }
        Some(_) => return Err(wrong_type("status", "a string")),
        None => {
            return Err(Error::BadRequest {
                code: "missing_field",
                message: "status is required".into(),
                path: Some("status".into()),
            })
        }
    };
    let capabilities = match doc.get("capabilities") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, c)| match c {
                Value::String(s) => Ok(s.clone()),
                _ => Err(wrong_type(&format!("capabilities[{i}]"), "a string")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(wrong_type("capabilities", "an array of strings")),
    };
    let tier = match doc.get("tier") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(wrong_type("tier", "a string or null")),
    };
    let agent = Agent {
        agent_id: agent_id.to_string(),
        status,
        capabilities,
        tier,
    };
    let evidence = ctx.evidence(
        &serde_json::to_value(&agent).map_err(|e| Error::invalid(CODE, "", e.to_string()))?,
    )?;
    store::upsert_agent(ctx.tx, &agent, ctx.now, actor)?;
    ctx.audit(Draft {
        actor,
        action: "agent.put",
        subject: format!("agent:{agent_id}"),
        message: format!("Agent {agent_id} registered with status {}", agent.status),
        evidence: Some(evidence),
        ..Draft::default()
    })?;
    Ok(Outcome::Agent(agent))
}
