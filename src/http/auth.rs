//! Who is asking. Every request but `GET /health` carries `Authorization: Bearer <token>`; the
//! middleware hashes the token, looks the hash up among the live tokens on a read connection,
//! and puts the token's `Principal` (name and role) into the request. From there on the actor
//! of a request is the token's name, and handlers check the role before anything is written.
//! The engine never sees a token: it receives the authenticated name as the actor.

use super::error::ApiError;
use super::request::Idempotency;
use super::{read, write, AppState};
use crate::engine::{Command, Error, Outcome};
use crate::model::{Permission, Role};
use crate::secret;
use crate::store;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The holder of the token a request was authenticated with.
#[derive(Debug, Clone)]
pub struct Principal {
    pub name: String,
    pub role: Role,
    /// The token the request was made with: a write checks again, in the writer's transaction,
    /// that it is still live.
    pub token_id: String,
}

/// The only route open without a token: liveness probes need no credentials, and it tells
/// nothing but the version.
const OPEN_PATH: &str = "/health";

/// Authenticates every request but `GET /health`: 401 without a well-formed bearer token, or
/// with one that is unknown or revoked.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if request.uri().path() == OPEN_PATH {
        return next.run(request).await;
    }
    let token = match bearer(request.headers()) {
        Ok(token) => token,
        Err(e) => return e.into_response(),
    };
    let token_hash = secret::token_hash(token);
    // On this task when an idle reader can answer at once: one indexed read of the small
    // `tokens` table, microseconds, and in WAL mode it never waits for the writer. Handing it to
    // `spawn_blocking` cost more than the read itself (two thread wake-ups per request): the
    // ceiling of `bench load` rose from about 22k to 31k requests/s without it. A read that
    // would wait (no idle reader, so one to be opened; a lock held by another process) goes to
    // the blocking pool as before, so that this task never waits on a lock.
    let found = match state
        .readers
        .read_if_idle(|db| store::live_token_by_hash(db, &token_hash))
    {
        Some(found) => Ok(found),
        None => {
            read(&state, move |db| {
                Ok(store::live_token_by_hash(db, &token_hash)?)
            })
            .await
        }
    };
    match found {
        Ok(Some(token)) => {
            request.extensions_mut().insert(Principal {
                name: token.name,
                role: token.role,
                token_id: token.token_id,
            });
            next.run(request).await
        }
        Ok(None) => {
            ApiError::unauthenticated("the bearer token is unknown or revoked").into_response()
        }
        Err(e) => e.into_response(),
    }
}

/// The token of `Authorization: Bearer <token>` (the scheme in any case).
fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers.get(header::AUTHORIZATION).ok_or_else(|| {
        ApiError::unauthenticated("every request needs Authorization: Bearer <token>")
    })?;
    let text = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("the Authorization header is not plain text"))?;
    match text.split_once(' ') {
        Some((scheme, token))
            if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() =>
        {
            Ok(token.trim())
        }
        _ => Err(ApiError::unauthenticated(
            "the Authorization header must be \"Bearer <token>\"",
        )),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Principal, ApiError> {
        parts
            .extensions
            .get::<Principal>()
            .cloned()
            .ok_or_else(|| ApiError::internal("a route behind authentication has no principal"))
    }
}

/// The error code of a role that may not.
const FORBIDDEN_ROLE: &str = "forbidden_role";

impl Principal {
    /// 403 `forbidden_role` unless this principal's role may do `permission`.
    pub fn require(&self, permission: Permission) -> Result<(), ApiError> {
        if self.role.may(permission) {
            Ok(())
        } else {
            Err(ApiError::from(Error::Forbidden {
                code: FORBIDDEN_ROLE,
                message: self.refusal(permission),
            }))
        }
    }

    fn refusal(&self, permission: Permission) -> String {
        let what = match permission {
            Permission::Read => "read",
            Permission::Work => {
                "create runs, request or complete steps, or request gates (role agent)"
            }
            Permission::Approve => "resolve gates (role approver)",
            Permission::Administer => {
                "change policies, definitions, the registry, run status or tokens (role admin)"
            }
        };
        format!(
            "{} holds a token of role {}, which may not {what}",
            self.name, self.role
        )
    }
}

/// Runs `command` when `who` may do `permission`. Otherwise answers 403 `forbidden_role`; a
/// refused change on a run goes to the engine as `Command::Refused`, which records it as
/// `request.refused` when the run exists (contract §4: a 403 on a run leaves a trace).
pub async fn write_as(
    state: &AppState,
    who: &Principal,
    permission: Permission,
    command: Command,
    idempotency: Option<Idempotency>,
    encode: impl Fn(Outcome) -> super::Encoded + Send + 'static,
) -> Result<Response, ApiError> {
    let token = Some(who.token_id.clone());
    match who.require(permission) {
        Ok(()) => write(state, token, command, idempotency, encode).await,
        Err(refused) if !command.changes_a_run() => Err(refused),
        Err(_) => {
            let refused = Command::Refused {
                message: who.refusal(permission),
                code: FORBIDDEN_ROLE,
                command: Box::new(command),
            };
            write(state, token, refused, idempotency, encode).await
        }
    }
}
