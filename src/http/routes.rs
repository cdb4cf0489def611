//! The routes of contract §4. Each handler decodes its request, runs one engine operation (a
//! write on the writer thread, or a read on the blocking pool) and encodes the answer. No SQL
//! and no business rule lives here.

use super::auth::{self, write_as, Principal};
use super::error::ApiError;
use super::request::{Body, Params, QueryPairs};
use super::wire::{
    DecisionJson, GateJson, GateResolvedJson, RunJson, StepFinishedJson, StepJson,
    StepRequestedJson,
};
use super::{read, AppState, Encoded};
use crate::engine::views::{self, RunFilter, RunView};
use crate::engine::{Command, Outcome, StepResult};
use crate::model::*;
use crate::secret;
use crate::store;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, patch, post, put};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};

pub fn router(state: AppState, bench_ceiling: bool) -> Router {
    let routes = Router::new();
    let routes = match bench_ceiling {
        true => routes.route("/bench/ceiling", post(bench_ceiling_row)),
        false => routes,
    };
    routes
        .route("/health", get(health))
        .route("/policies/{policy_id}", put(put_policy).get(get_policy))
        .route(
            "/workflows/definitions/{workflow_id}",
            put(put_definition).get(get_definition),
        )
        .route("/registry/agents", get(list_agents))
        .route("/registry/agents/{agent_id}", put(put_agent).get(get_agent))
        .route("/workflows/runs", post(create_run).get(list_runs))
        .route("/workflows/runs/{run_id}", get(get_run))
        .route("/workflows/runs/{run_id}/status", patch(change_status))
        .route("/workflows/runs/{run_id}/steps", post(request_step))
        .route(
            "/workflows/runs/{run_id}/steps/{step_id}",
            patch(finish_step),
        )
        .route("/workflows/runs/{run_id}/logs", get(run_logs))
        .route("/workflows/runs/{run_id}/gates", post(request_gate))
        .route(
            "/workflows/runs/{run_id}/gates/{gate_id}",
            patch(resolve_gate),
        )
        .route("/workflows/runs/{run_id}/receipt", get(run_receipt))
        .route("/audit", get(audit))
        .route("/evidence/{hash}", get(evidence))
        .route("/tokens", post(create_token))
        .route("/tokens/{name}", delete(revoke_tokens))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method",
            )
        })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authenticate,
        ))
        .with_state(state)
}

type Answer = Result<Response, ApiError>;

/// `POST /bench/ceiling` (only under `serve --bench-ceiling`): an agent inserts one row; the
/// least a write can cost, for `fedcore bench` to compare against.
async fn bench_ceiling_row(State(state): State<AppState>, who: Principal) -> Answer {
    who.require(Permission::Work)?;
    let id = super::write_ceiling_row(&state, who.token_id).await?;
    reply(StatusCode::CREATED, json!({ "id": id }))
}

fn json_of(value: &impl Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

/// An encoder's result: the status and the JSON bytes of `value`.
fn encoded(status: StatusCode, value: &impl Serialize) -> Encoded {
    let body = serde_json::to_vec(value).map_err(ApiError::internal)?;
    Ok((status, body))
}

fn reply(status: StatusCode, value: Value) -> Answer {
    Ok((status, Json(value)).into_response())
}

/// `POST /workflows/runs`: the new run.
pub(super) fn created_run(outcome: Outcome) -> Encoded {
    match outcome {
        Outcome::Run(run) => encoded(StatusCode::CREATED, &RunJson(&run)),
        other => Err(unexpected(other)),
    }
}

/// `PATCH …/status`: the run as changed.
pub(super) fn changed_run(outcome: Outcome) -> Encoded {
    match outcome {
        Outcome::Run(run) => encoded(StatusCode::OK, &RunJson(&run)),
        other => Err(unexpected(other)),
    }
}

/// `POST …/steps`: `{"decision", "gate", "run", "step"}`.
pub(super) fn requested_step(outcome: Outcome) -> Encoded {
    match outcome {
        Outcome::StepRequested {
            step,
            decision,
            run,
            gate,
        } => encoded(
            StatusCode::CREATED,
            &StepRequestedJson {
                decision: DecisionJson(&decision),
                gate: gate.as_ref().map(GateJson),
                run: RunJson(&run),
                step: StepJson(&step),
            },
        ),
        other => Err(unexpected(other)),
    }
}

/// `PATCH …/steps/{step_id}`: `{"run", "step"}`.
pub(super) fn finished_step(outcome: Outcome) -> Encoded {
    match outcome {
        Outcome::StepFinished { step, run } => encoded(
            StatusCode::OK,
            &StepFinishedJson {
                run: RunJson(&run),
                step: StepJson(&step),
            },
        ),
        other => Err(unexpected(other)),
    }
}

/// `PATCH …/gates/{gate_id}`: `{"gate", "run"}`.
pub(super) fn resolved_gate(outcome: Outcome) -> Encoded {
    match outcome {
        Outcome::GateResolved { gate, run } => encoded(
            StatusCode::OK,
            &GateResolvedJson {
                gate: GateJson(&gate),
                run: RunJson(&run),
            },
        ),
        other => Err(unexpected(other)),
    }
}

fn unexpected(outcome: Outcome) -> ApiError {
    ApiError::internal(format!("unexpected engine outcome {outcome:?}"))
}

/// `?version=N` of the document GETs.
fn version_param(query: &QueryPairs) -> Result<Option<i64>, ApiError> {
    query.only(&["version"])?;
    query.int("version")
}

async fn health() -> Answer {
    reply(
        StatusCode::OK,
        json!({"status": "ok", "version": env!("CARGO_PKG_VERSION"), "schema_version": store::SCHEMA_VERSION}),
    )
}

async fn put_policy(
    State(state): State<AppState>,
    who: Principal,
    Params(policy_id): Params<String>,
    body: Body,
) -> Answer {
    let (doc, actor, idempotency) = body.into_document();
    write_as(
        &state,
        &who,
        Permission::Administer,
        Command::PutPolicy {
            policy_id,
            doc,
            actor,
        },
        idempotency,
        |outcome| match outcome {
            Outcome::Policy(p) => encoded(StatusCode::CREATED, &json_of(&p)?),
            other => Err(unexpected(other)),
        },
    )
    .await
}

async fn get_policy(
    State(state): State<AppState>,
    Params(policy_id): Params<String>,
    query: QueryPairs,
) -> Answer {
    let version = version_param(&query)?;
    let policy = read(&state, move |db| views::policy(db, &policy_id, version)).await?;
    reply(StatusCode::OK, json_of(&policy)?)
}

async fn put_definition(
    State(state): State<AppState>,
    who: Principal,
    Params(workflow_id): Params<String>,
    body: Body,
) -> Answer {
    let (doc, actor, idempotency) = body.into_document();
    write_as(
        &state,
        &who,
        Permission::Administer,
        Command::PutDefinition {
            workflow_id,
            doc,
            actor,
        },
        idempotency,
        |outcome| match outcome {
            Outcome::Definition(d) => encoded(StatusCode::CREATED, &json_of(&d)?),
            other => Err(unexpected(other)),
        },
    )
    .await
}

async fn get_definition(
    State(state): State<AppState>,
    Params(workflow_id): Params<String>,
    query: QueryPairs,
) -> Answer {
    let version = version_param(&query)?;
    let definition = read(&state, move |db| {
        views::definition(db, &workflow_id, version)
    })
    .await?;
    reply(StatusCode::OK, json_of(&definition)?)
}

async fn put_agent(
    State(state): State<AppState>,
    who: Principal,
    Params(agent_id): Params<String>,
    body: Body,
) -> Answer {
    let (doc, actor, idempotency) = body.into_document();
    write_as(
        &state,
        &who,
        Permission::Administer,
        Command::PutAgent {
            agent_id,
            doc,
            actor,
        },
        idempotency,
        |outcome| match outcome {
            Outcome::Agent(a) => encoded(StatusCode::OK, &json_of(&a)?),
            other => Err(unexpected(other)),
        },
    )
    .await
}

async fn get_agent(State(state): State<AppState>, Params(agent_id): Params<String>) -> Answer {
    let agent = read(&state, move |db| views::agent(db, &agent_id)).await?;
    reply(StatusCode::OK, json_of(&agent)?)
}

async fn list_agents(State(state): State<AppState>) -> Answer {
    let agents = read(&state, views::agents).await?;
    reply(StatusCode::OK, json!({"agents": json_of(&agents)?}))
}

async fn create_run(State(state): State<AppState>, who: Principal, mut body: Body) -> Answer {
    let idempotency = body.idempotency.take();
    let workflow_id = body.required_str("workflow_id")?;
    let input = body.value_or_null("input");
    let actor = body.finish()?;
    write_as(
        &state,
        &who,
        Permission::Work,
        Command::CreateRun {
            workflow_id,
            input,
            actor,
        },
        idempotency,
        created_run,
    )
    .await
}

async fn list_runs(State(state): State<AppState>, query: QueryPairs) -> Answer {
    query.only(&["status", "workflow_id", "limit", "after"])?;
    let status = match query.get("status") {
        None | Some("") => None,
        Some(s) => Some(RunStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                "status",
                format!("unknown run status {s:?}"),
            )
        })?),
    };
    let limit = query.int("limit")?.unwrap_or(50);
    if !(1..=views::MAX_RUNS_PAGE).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit",
            format!("limit must be from 1 to {}", views::MAX_RUNS_PAGE),
        ));
    }
    let filter = RunFilter {
        status,
        workflow_id: query
            .get("workflow_id")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        after: query
            .get("after")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        limit,
    };
    let (runs, next) = read(&state, move |db| views::runs(db, &filter)).await?;
    reply(
        StatusCode::OK,
        json!({"runs": json_of(&runs)?, "next": next}),
    )
}

fn run_view_json(view: &RunView) -> Result<Value, ApiError> {
    let mut run = json_of(&view.run)?;
    if let Value::Object(fields) = &mut run {
        fields.insert("steps".into(), json_of(&view.steps)?);
        fields.insert("gates".into(), json_of(&view.gates)?);
        fields.insert("decisions".into(), json_of(&view.decisions)?);
    }
    Ok(run)
}

async fn get_run(State(state): State<AppState>, Params(run_id): Params<String>) -> Answer {
    let view = read(&state, move |db| views::run(db, &run_id)).await?;
    reply(StatusCode::OK, run_view_json(&view)?)
}

async fn change_status(
    State(state): State<AppState>,
    who: Principal,
    Params(run_id): Params<String>,
    mut body: Body,
) -> Answer {
    let idempotency = body.idempotency.take();
    let status_text = body.required_str("status")?;
    let reason = body.optional_str("reason")?;
    let actor = body.finish()?;
    let status = RunStatus::parse(&status_text)
        .filter(|s| {
            matches!(
                s,
                RunStatus::Paused | RunStatus::Running | RunStatus::Cancelled | RunStatus::Failed
            )
        })
        .ok_or_else(|| {
            ApiError::invalid(
                "status",
                "status must be one of PAUSED, RUNNING, CANCELLED, FAILED",
            )
        })?;
    write_as(
        &state,
        &who,
        Permission::Administer,
        Command::ChangeStatus {
            run_id,
            status,
            reason,
            actor,
        },
        idempotency,
        changed_run,
    )
    .await
}

async fn request_step(
    State(state): State<AppState>,
    who: Principal,
    Params(run_id): Params<String>,
    mut body: Body,
) -> Answer {
    let idempotency = body.idempotency.take();
    let step_id = body.required_str("step_id")?;
    let input = body.value_or_null("input");
    let actor = body.finish()?;
    write_as(
        &state,
        &who,
        Permission::Work,
        Command::RequestStep {
            run_id,
            step_id,
            input,
            actor,
        },
        idempotency,
        requested_step,
    )
    .await
}

async fn finish_step(
    State(state): State<AppState>,
    who: Principal,
    Params((run_id, step_id)): Params<(String, String)>,
    mut body: Body,
) -> Answer {
    let idempotency = body.idempotency.take();
    let status = body.required_str("status")?;
    let result = match status.as_str() {
        "COMPLETED" if body.has("error") => {
            return Err(ApiError::bad_request(
                "unknown_field",
                "error",
                "error belongs to a FAILED step, not a COMPLETED one",
            ))
        }
        "FAILED" if body.has("output") => {
            return Err(ApiError::bad_request(
                "unknown_field",
                "output",
                "output belongs to a COMPLETED step, not a FAILED one",
            ))
        }
        "COMPLETED" => StepResult::Completed {
            output: body.required_value("output")?,
        },
        "FAILED" => StepResult::Failed {
            error: body.required_object("error")?,
        },
        _ => {
            return Err(ApiError::invalid(
                "status",
                "status must be COMPLETED or FAILED",
            ))
        }
    };
    let actor = body.finish()?;
    write_as(
        &state,
        &who,
        Permission::Work,
        Command::FinishStep {
            run_id,
            step_id,
            result,
            actor,
        },
        idempotency,
        finished_step,
    )
    .await
}

async fn run_logs(State(state): State<AppState>, Params(run_id): Params<String>) -> Answer {
    let entries = read(&state, move |db| views::logs(db, &run_id)).await?;
    reply(StatusCode::OK, json!({"entries": json_of(&entries)?}))
}

async fn request_gate(
    State(state): State<AppState>,
    who: Principal,
    Params(run_id): Params<String>,
    mut body: Body,
) -> Answer {
    let idempotency = body.idempotency.take();
    let step_id = body.required_str("step_id")?;
    let reason = body.required_str("reason")?;
    let expires_in_s = body.optional_i64("expires_in_s")?;
    let actor = body.finish()?;
    write_as(
        &state,
        &who,
        Permission::Work,
        Command::RequestGate {
            run_id,
            step_id,
            reason,
            expires_in_s,
            actor,
        },
        idempotency,
        |outcome| match outcome {
            Outcome::GateOpened(gate) => encoded(StatusCode::CREATED, &GateJson(&gate)),
            other => Err(unexpected(other)),
        },
    )
    .await
}

async fn resolve_gate(
    State(state): State<AppState>,
    who: Principal,
    Params((run_id, gate_id)): Params<(String, String)>,
    mut body: Body,
) -> Answer {
    let idempotency = body.idempotency.take();
    let decision = body.required_str("decision")?;
    let comment = body.optional_str("comment")?;
    let actor = body.finish()?;
    let approve = match decision.as_str() {
        "approve" => true,
        "reject" => false,
        _ => {
            return Err(ApiError::invalid(
                "decision",
                "decision must be approve or reject",
            ))
        }
    };
    write_as(
        &state,
        &who,
        Permission::Approve,
        Command::ResolveGate {
            run_id,
            gate_id,
            approve,
            comment,
            actor,
        },
        idempotency,
        resolved_gate,
    )
    .await
}

async fn run_receipt(State(state): State<AppState>, Params(run_id): Params<String>) -> Answer {
    let (receipt, receipt_hash) = read(&state, move |db| views::receipt(db, &run_id)).await?;
    reply(
        StatusCode::OK,
        json!({"receipt": receipt, "receipt_hash": receipt_hash}),
    )
}

async fn audit(State(state): State<AppState>, query: QueryPairs) -> Answer {
    query.only(&["after_seq", "limit"])?;
    let after_seq = query.int("after_seq")?.unwrap_or(0);
    let limit = query.int("limit")?.unwrap_or(100);
    if after_seq < 0 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "after_seq",
            "after_seq must be >= 0",
        ));
    }
    if limit < 1 {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit",
            "limit must be >= 1",
        ));
    }
    let (entries, (seq, entry_hash)) =
        read(&state, move |db| views::audit(db, after_seq, limit)).await?;
    reply(
        StatusCode::OK,
        json!({"entries": json_of(&entries)?, "head": {"seq": seq, "entry_hash": entry_hash}}),
    )
}

async fn evidence(State(state): State<AppState>, Params(hash): Params<String>) -> Answer {
    if !is_hash(&hash) {
        return Err(ApiError::bad_request(
            "invalid_hash",
            "hash",
            "a hash is 64 lowercase hex characters",
        ));
    }
    let body = read(&state, move |db| views::evidence(db, &hash)).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

async fn create_token(State(state): State<AppState>, who: Principal, mut body: Body) -> Answer {
    if body.idempotency.is_some() {
        // Ignoring the key would let a retry make a second live token that nobody holds.
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            "Idempotency-Key",
            "POST /tokens takes no Idempotency-Key: its answer carries the new token, which \
             fedcore never stores, so it cannot be replayed; after a lost answer, revoke the \
             name (DELETE /tokens/{name}) and create it again",
        ));
    }
    let name = body.required_str("name")?;
    let role_text = body.required_str("role")?;
    let actor = body.finish()?;
    let role = Role::parse(&role_text).ok_or_else(|| {
        ApiError::invalid(
            "role",
            "role must be one of agent, approver, admin, auditor",
        )
    })?;
    let token = secret::new_token().map_err(ApiError::internal)?;
    let command = Command::CreateToken {
        name,
        role,
        token_hash: secret::token_hash(&token),
        actor,
    };
    // No idempotency key: the answer carries the new secret, which is never stored.
    write_as(&state, &who, Permission::Administer, command, None, move |outcome| match outcome {
        Outcome::Token(t) => encoded(
            StatusCode::CREATED,
            &json!({"token": token, "token_id": t.token_id, "name": t.name, "role": t.role, "created_at": t.created_at}),
        ),
        other => Err(unexpected(other)),
    })
    .await
}

async fn revoke_tokens(
    State(state): State<AppState>,
    who: Principal,
    Params(name): Params<String>,
) -> Answer {
    let command = Command::RevokeTokens {
        name,
        actor: who.name.clone(),
    };
    write_as(
        &state,
        &who,
        Permission::Administer,
        command,
        None,
        |outcome| match outcome {
            Outcome::TokensRevoked(tokens) => {
                encoded(StatusCode::OK, &json!({"revoked": json_of(&tokens)?}))
            }
            other => Err(unexpected(other)),
        },
    )
    .await
}
