//! `fedcore token`: create, revoke and list bearer tokens on a database file, outside a server.
//! Each change is one engine command in one `BEGIN IMMEDIATE … COMMIT` on its own connection,
//! so it extends the same audit chain a running server writes (SQLite serialises the two
//! writers). The secret is printed once and only its SHA-256 is stored.

use crate::cli::{TokenArgs, TokenCommand};
use crate::engine::{self, Command, Outcome, SYSTEM_ACTOR};
use crate::model::{Timestamp, Token};
use crate::store::Db as _;
use crate::{secret, store};
use std::fmt::Write as _;

/// What a token command printed, and how it ended.
pub struct Done {
    pub stdout: String,
    pub stderr: String,
    /// 0 done, 1 nothing to revoke, 2 could not run.
    pub exit: u8,
}

fn now() -> Timestamp {
    Timestamp::from_micros(chrono::Utc::now().timestamp_micros())
}

/// Runs one `fedcore token` command. Changes are made in the name of `fedcore` itself, the
/// operator at the command line having no token of their own.
pub fn run(args: &TokenArgs) -> Done {
    match try_run(args) {
        Ok(done) => done,
        Err(why) => Done {
            stdout: String::new(),
            stderr: format!("fedcore token: {why}\n"),
            exit: 2,
        },
    }
}

fn try_run(args: &TokenArgs) -> Result<Done, String> {
    match &args.command {
        TokenCommand::List => list(args),
        TokenCommand::Create { .. } | TokenCommand::Revoke { .. } => change(args),
    }
}

/// A read: never creates, migrates or signs anything.
fn list(args: &TokenArgs) -> Result<Done, String> {
    let reader = store::open_read_only(&args.db).map_err(|e| e.to_string())?;
    // Files from before tokens existed (schema version 1) hold none; they are not migrated here.
    let tokens = match reader.schema_version() < store::TOKENS_SINCE_VERSION {
        true => Vec::new(),
        false => store::list_tokens(&reader).map_err(|e| e.to_string())?,
    };
    Ok(Done {
        stdout: tokens.iter().map(line).collect(),
        stderr: String::new(),
        exit: 0,
    })
}

fn change(args: &TokenArgs) -> Result<Done, String> {
    let conn = store::open_for_writing(&args.db).map_err(|e| e.to_string())?;
    // Token changes extend the same chain a server writes, so they sign (checkpoints) with the
    // same key, the one the database records.
    let signer = crate::http::open_signer(&conn, &args.db, args.key.as_deref())
        .map_err(|e| e.to_string())?;
    let apply = |command: Command| {
        store::write_once(&conn, |tx| engine::apply(tx, now(), &signer, &command))
            .map_err(|e| e.to_string())
    };
    match &args.command {
        TokenCommand::Create { name, role } => {
            let token = secret::new_token().map_err(|e| format!("no randomness: {e}"))?;
            let command = Command::CreateToken {
                name: name.clone(),
                role: *role,
                token_hash: secret::token_hash(&token),
                actor: SYSTEM_ACTOR.to_string(),
            };
            match apply(command)? {
                Ok(Outcome::Token(t)) => Ok(Done {
                    stdout: format!("{token}\n"),
                    stderr: format!(
                        "created token {} for {} (role {}); it is shown only this once\n",
                        t.token_id, t.name, t.role
                    ),
                    exit: 0,
                }),
                Ok(other) => Err(format!("unexpected outcome {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        }
        TokenCommand::Revoke { name } => {
            let command = Command::RevokeTokens {
                name: name.clone(),
                actor: SYSTEM_ACTOR.to_string(),
            };
            match apply(command)? {
                Ok(Outcome::TokensRevoked(tokens)) => Ok(Done {
                    stdout: tokens.iter().map(line).collect(),
                    stderr: format!("revoked {} token(s) of {name}\n", tokens.len()),
                    exit: 0,
                }),
                Ok(other) => Err(format!("unexpected outcome {other:?}")),
                Err(engine::Error::NotFound { message, .. }) => Ok(Done {
                    stdout: String::new(),
                    stderr: format!("fedcore token revoke: {message}\n"),
                    exit: 1,
                }),
                Err(e) => Err(e.to_string()),
            }
        }
        TokenCommand::List => list(args),
    }
}

/// `NAME ROLE TOKEN_ID CREATED_AT live|revoked REVOKED_AT`, tab-separated.
fn line(t: &Token) -> String {
    let mut out = format!("{}\t{}\t{}\t{}", t.name, t.role, t.token_id, t.created_at);
    match &t.revoked_at {
        Some(at) => write!(out, "\trevoked\t{at}").expect("a String takes writes"),
        None => out.push_str("\tlive"),
    }
    out.push('\n');
    out
}
