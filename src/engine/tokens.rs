//! Bearer tokens as the engine sees them: creating one from a secret's hash (the secret itself
//! is made and shown by the caller and never reaches the engine) and revoking every live token of
//! a name. Each change is an audit entry on subject `token:<name>` whose evidence names the token
//! but never its secret or hash.

use super::{receipts, Ctx, Draft, Error, Outcome, SYSTEM_ACTOR};
use crate::model::*;
use crate::store;

pub(super) fn create_token(
    ctx: &mut Ctx<'_, '_>,
    name: &str,
    role: Role,
    token_hash: &str,
    actor: &str,
) -> Result<Outcome, Error> {
    if !is_valid_id(name) {
        return Err(Error::invalid(
            "invalid_value",
            "name",
            "name must be 1-128 letters, digits or ._:@-",
        ));
    }
    if name.eq_ignore_ascii_case(SYSTEM_ACTOR) {
        return Err(Error::invalid(
            "invalid_value",
            "name",
            format!("{SYSTEM_ACTOR:?} is the name fedcore itself acts under"),
        ));
    }
    // Separation of duties compares names exactly, so `Agent-7` would be another person than
    // `agent-7`: each name has one spelling.
    if let Some(other) = store::name_spelled_otherwise(ctx.tx, name)? {
        return Err(Error::invalid(
            "invalid_value",
            "name",
            format!(
                "{name:?} differs only in case from the name {other:?} tokens already have; \
                 separation of duties compares names exactly, so a name has one spelling"
            ),
        ));
    }
    if !is_hash(token_hash) {
        return Err(Error::invalid(
            "invalid_value",
            "token_hash",
            "a token hash is 64 lowercase hex characters",
        ));
    }
    let token = Token {
        token_id: ctx.new_id(),
        name: name.to_string(),
        role,
        created_at: ctx.now,
        created_by: actor.to_string(),
        revoked_at: None,
        revoked_by: None,
    };
    store::insert_token(ctx.tx, &token, token_hash)?;
    let evidence = ctx.evidence(&receipts::token_created_evidence(&token))?;
    ctx.audit(Draft {
        actor,
        action: "token.created",
        subject: format!("token:{name}"),
        message: format!(
            "Token {} for {name} created with role {role}",
            token.token_id
        ),
        evidence: Some(evidence),
        ..Draft::default()
    })?;
    Ok(Outcome::Token(token))
}

/// Revokes every live token of `name`, one audit entry each; 404 `unknown_token` when none is live.
pub(super) fn revoke_tokens(
    ctx: &mut Ctx<'_, '_>,
    name: &str,
    actor: &str,
) -> Result<Outcome, Error> {
    let live = store::live_tokens_named(ctx.tx, name)?;
    if live.is_empty() {
        return Err(Error::not_found(
            "unknown_token",
            format!("no live token is named {name:?}"),
        ));
    }
    let mut revoked = Vec::with_capacity(live.len());
    for mut token in live {
        store::revoke_token(ctx.tx, &token.token_id, ctx.now, actor)?;
        token.revoked_at = Some(ctx.now);
        token.revoked_by = Some(actor.to_string());
        let evidence = ctx.evidence(&receipts::token_revoked_evidence(&token, ctx.now))?;
        ctx.audit(Draft {
            actor,
            action: "token.revoked",
            subject: format!("token:{name}"),
            message: format!(
                "Token {} of {name} (role {}) revoked",
                token.token_id, token.role
            ),
            evidence: Some(evidence),
            ..Draft::default()
        })?;
        revoked.push(token);
    }
    Ok(Outcome::TokensRevoked(revoked))
}
