//! The command line: commands and flags, parsed with lexopt, and their help texts. Nothing here
//! opens a database or a socket.

use crate::bench::load::LoadOptions;
use crate::engine::verify::Head;
use crate::model::Role;
use crate::store::Durability;
use lexopt::prelude::*;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_DB: &str = "fedcore.db";
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9405";

pub const USAGE: &str = "\
fedcore: an embedded, single-file workflow governance engine

Usage:
  fedcore serve [--db PATH] [--listen ADDR] [--key PATH]
                                              serve the HTTP API (defaults: ./fedcore.db, 127.0.0.1:9405)
  fedcore export --run RUN_ID --out DIR [--db PATH]
                                              write one run's receipts, audit entries and evidence as files
  fedcore verify [--db PATH] [--json] [--expect-head SEQ:HASH] [--replay] [--pubkey KEY]
                                              recompute every hash in the database, offline
  fedcore verify --receipts DIR [--json] [--pubkey KEY]
                                              check a folder written by export, without the database
  fedcore key show [--db PATH] [--key PATH]   print the public signing key
  fedcore checkpoint [--db PATH]              print the latest signed checkpoint of the audit log
  fedcore proof [--out DIR]                   run the PT-004 proof and write its report (default REPORT/PROOFS)
  fedcore bench load [--conns N] [--seconds S] [--rounds R] [--json]
                                              benchmark a server on a throwaway database over HTTP
  fedcore token create --name NAME --role agent|approver|admin|auditor [--db PATH]
                                              create a bearer token and print it, once
  fedcore token revoke --name NAME [--db PATH]
                                              revoke every live token of NAME
  fedcore token list [--db PATH]              list tokens (names, roles, ids; never the secrets)
  fedcore bench seed --db PATH --workflows N [--durability full|normal]
                                              add N PT-004 workflows to a database, through the engine
  fedcore bench verify [--entries N] [--db PATH] [--rounds R]
                                              time verify over a database of N audit entries
  fedcore --help | --version

Run `fedcore COMMAND --help` for a command's flags.
";

pub const SERVE_USAGE: &str = "\
fedcore serve: serve the HTTP API over one SQLite file

Usage: fedcore serve [--db PATH] [--listen ADDR] [--key PATH] [timeouts]

  --db PATH                 database file (default ./fedcore.db); created with the schema if it
                            does not exist, migrated forward if it does, refused if it is not a
                            fedcore database
  --key PATH                Ed25519 signing key file (default: the database path + .key);
                            created with mode 0600 on the first start, read on later ones. Its
                            public key is recorded in the database; a key file other than the
                            one the database records is refused
  --listen ADDR             address to listen on (default 127.0.0.1:9405; port 0 picks a free one)
  --header-timeout-ms N     close a connection that has not sent a request head in N ms
                            (default 10000; also bounds idle keep-alive connections)
  --request-timeout-ms N    answer 503 to a request not handled within N ms (default 30000)
  --shutdown-grace-ms N     on SIGINT/SIGTERM, let in-flight requests finish within N ms
                            (default 10000)
  --durability full|normal  full (default): every commit is synced, so an acknowledged write
                            survives a power cut as far as the disk honours fsync; normal: synced
                            at WAL checkpoints only, faster, survives a killed process but may lose
                            the last commits to a power cut
  --bench-ceiling           for `fedcore bench` only, on its throwaway databases: also serve
                            POST /bench/ceiling (role agent), which inserts one row into a table
                            of its own (bench_ceiling) outside the audit log: the trivial write
                            the benchmark measures as its ceiling. Never use it on a database
                            you keep

Every request but GET /health needs `Authorization: Bearer <token>` (see `fedcore token`). On a
database that has never had a token, serve creates the admin token `admin`, writes it to
<db>.admin-token (mode 0600, never overwriting an existing file) and prints that path. A
--listen address that is not loopback is refused (exit 2) while the database has no live token.

Every workflow receipt is signed, and a signed checkpoint of the audit head is written at every
run end, at least every 1000 entries and at shutdown. Logs one line per request to stderr.
Exits 0 after a clean shutdown, 2 when it cannot start.
";

pub const TOKEN_USAGE: &str = "\
fedcore token: bearer tokens, the identities requests act under

Usage: fedcore token create --name NAME --role ROLE [--db PATH] [--key PATH]
       fedcore token revoke --name NAME [--db PATH] [--key PATH]
       fedcore token list [--db PATH]

  --name NAME   who the token acts as: the actor of every request made with it (1-128 letters,
                digits or ._:@-)
  --role ROLE   agent     create runs, request and complete steps, request gates
                approver  approve or reject gates
                admin     policies, definitions, the registry, run status changes, tokens
                auditor   read only
                (every role may read)
  --db PATH     database file (default ./fedcore.db); create and revoke make it with the schema
                if it does not exist; list only reads, and needs it to exist
  --key PATH    the signing key, as for serve (default PATH.key beside the database): the audit
                entries of create and revoke extend the chain, whose checkpoints it signs

create prints the new token on stdout, once: fedcore keeps only its SHA-256. revoke revokes every
live token of NAME. Creating and revoking are audit entries (token.created, token.revoked on
subject token:NAME), written in one transaction that extends the audit chain; a running server
sees them on its next request.

Exit status: 0 done, 1 revoke found no live token of NAME, 2 usage or database error.
";

pub const EXPORT_USAGE: &str = "\
fedcore export: write one run as files that can be checked without the database

Usage: fedcore export --run RUN_ID --out DIR [--db PATH]

  --run RUN_ID   the run to export
  --out DIR      a new or empty folder to write into
  --db PATH      database file (default ./fedcore.db), opened read-only

Writes run.json (with attempts, gates, decisions), definition.json, policies/, decisions/,
receipts/ (each receipt as the exact JCS bytes that were hashed, so sha256(file) = receipt hash),
audit.jsonl (the run's audit entries), evidence/<hash>.json and manifest.json (every file's
SHA-256). Exits 0 on success, 2 when the run cannot be exported.
";

pub const VERIFY_USAGE: &str = "\
fedcore verify: check, offline and read-only, that nothing in a database was altered

Usage: fedcore verify [--db PATH] [--json] [--expect-head SEQ:HASH] [--replay] [--pubkey KEY]
       fedcore verify --receipts DIR [--json] [--pubkey KEY]

  --db PATH                 database file (default ./fedcore.db); opened read-only, never
                            created or changed
  --json                    print one JSON object: {\"ok\", \"counts\", \"head\", \"failure\"}, or
                            {\"ok\": false, \"checked\": false, \"error\"} when the file or folder
                            could not be checked (a usage error prints only the usage)
  --expect-head SEQ:HASH    also fail unless the log still holds the entry SEQ with entry_hash
                            HASH (a head printed by an earlier verify): detects a truncated or
                            rewritten log
  --replay                  also re-evaluate every decision with the policy version it names, on
                            the context recorded when it was made, and compare the outcome
  --pubkey KEY              the server's public key, as `fedcore key show` prints it, or a file
                            holding it: every receipt signature and signed checkpoint must
                            verify under it, and the database must record this key (else exit
                            1, naming the mismatch). Without it, signatures are checked against
                            the key the database records, which proves internal consistency only
  --receipts DIR            check a folder written by `fedcore export` instead of a database:
                            the manifest's file hashes, every evidence blob, the run's genesis,
                            decisions, step receipt chain, gate and workflow receipts, and each
                            audit entry's entry_hash, and the workflow receipt's signature
                            (receipts/workflow.sig.json; required with --pubkey). A folder
                            holding none of an export's files is not an export: exit 2

Recomputes every evidence hash, policy and definition hash, decision hash, step receipt chain,
gate receipt, workflow receipt and the whole audit chain, every signature and signed checkpoint
(each checkpoint's seq and entry_hash must be in the log), and checks the immutability triggers.
Prints the counts checked and the audit head (SEQ:HASH, worth writing down). On failure names
the first broken object: table, id or seq, field, expected and found hash.

Exit status: 0 intact, 1 broken, 2 could not check (usage, unreadable file, not a fedcore
database, a schema version reset to 0, or lowered or raised from what the file holds).
";

pub const PROOF_USAGE: &str = "\
fedcore proof: the PT-004 proof of governed workflow orchestration

Usage: fedcore proof [--out DIR]

  --out DIR   where to write (default REPORT/PROOFS)

Starts a real server on a free loopback port over a fresh database DIR/PT-004_workflow_orchestration/
pt004.db and, over HTTP as an agent and a separate approver, runs Test A (every step allowed),
Test B (a flagged step approved by a second person, then resumed) and Test C (a denied step that
fails the run closed). Exports each run to DIR/PT-004_workflow_orchestration/receipts/, verifies the
database and each exported folder, shows that a tampered copy is rejected and that a direct UPDATE
of the audit log is refused, and writes DIR/PT-004_workflow_orchestration_PROOF_REPORT.md.
Exit status: 0 when every check passed, 1 when one failed, 2 when the proof could not run.
";

pub const KEY_USAGE: &str = "\
fedcore key show: print the server's public signing key

Usage: fedcore key show [--db PATH] [--key PATH]

  --db PATH    database file (default ./fedcore.db), opened read-only
  --key PATH   key file (default: the database path + .key)

Prints the verifier key <name>+<key id>+<base64(0x01 || public key)> on the first line (give it
to `verify --pubkey`), then its name, key id and hex public key. Read from the key file, or from
the database when there is no key file. Exit 1 when the key file and the database disagree.
";

pub const CHECKPOINT_USAGE: &str = "\
fedcore checkpoint: print the latest signed checkpoint of the audit log

Usage: fedcore checkpoint [--db PATH]

  --db PATH   database file (default ./fedcore.db), opened read-only

Prints the C2SP signed note (tlog-checkpoint) of the latest checkpoint: origin fedcore/<key name>,
tree size (the audit seq), root hash (the entry_hash, base64), `time <at>`, a blank line and the
Ed25519 signature line. Keep it elsewhere: `verify --expect-head SEQ:HASH` checks the log still
holds it. Exit 2 when the database has no checkpoint.
";

pub const BENCH_USAGE: &str = "\
fedcore bench: benchmarks anyone can rerun (see BENCHMARKS.md)

Usage: fedcore bench load [--conns N] [--seconds S] [--warmup S] [--rounds R]
                          [--durability full|normal] [--keep DIR | --db PATH] [--no-verify]
                          [--json]
       fedcore bench seed --db PATH --workflows N [--runs-only] [--durability full|normal]
       fedcore bench verify [--entries N] [--db PATH] [--rounds R]

load starts `fedcore serve --bench-ceiling` as a child process on a throwaway database and drives
it from N client threads, each over its own keep-alive connection. Each round has two phases:
  ceiling    every thread loops POST /bench/ceiling: one authenticated row insert through the
             same writer and commit as any write, the most this server and machine can answer
  workflows  every thread runs governed workflows: create a run, then five steps each requested
             (policy-checked) and completed; 1 run in 10 is flagged (approved by a second actor,
             resumed by an admin), 1 in 20 is denied and fails closed. Every answer is checked
Only requests that start and end inside the window after the warm-up count.

  --conns N                 client threads and connections (default 32)
  --seconds S               measured window of each phase (default 10)
  --warmup S                warm-up before each window (default 2)
  --rounds R                rounds; the report gives medians (default 3)
  --durability full|normal  the server's durability (default full)
  --keep DIR                put the database in DIR and keep it (default: a temporary folder)
  --db PATH                 run against this existing database instead (kept; e.g. one built by
                            `fedcore bench seed`), to measure a request's cost on a large file
  --no-verify               skip `fedcore verify` over the database afterwards
  --json                    print one JSON object instead of the text report

Reports workflows/s, step requests/s, p50/p99/max step latency, the ceiling and the ratio to it,
errors, connections never answered, the server's peak RSS, the database's bytes per workflow and
(Linux) the CPU time per request of the server, of its writer thread and of the client, per phase.
seed adds N workflows of the PT-004 definition to the database at PATH (created with its key
file beside it if missing, appended to otherwise), applying through the engine, without HTTP,
the very commands a server applies for the same requests: a run, each of its five steps
requested then completed; every 10th workflow flagged at `decide`, approved by a second person
and resumed by an admin; every 20th denied at `decide`, failing closed. About 1000 commands go
in one transaction, at the wall clock's time (at least 1 us apart). Prints runs, audit entries
and the time taken.

  --workflows N             how many workflows to add
  --runs-only               stop each workflow once its run is created (PENDING): the quick way
                            to a database holding a million runs
  --durability full|normal  how commits reach the disk (default normal: a benchmark fixture)

verify times `fedcore verify` end to end (open read-only, every check) R times over a database
of at least N audit entries and prints entries, seconds and entries/s for each round and their
median. Without --db it seeds a new database in a temporary folder and removes it afterwards;
with --db it uses PATH, seeding (appending) only when PATH holds fewer than N entries, and keeps it.

  --entries N   audit entries to verify (default 1000000)
  --db PATH     database to reuse
  --rounds R    how many times to verify (default 3)

Exit status of load: 0 clean, 1 errors or unanswered connections or a database that does not
verify, 2 could not run. Of seed and verify: 0 done, 2 when the database cannot be seeded or
verified, or is not intact.
";

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Cli {
    Help(&'static str),
    Version,
    Serve(ServeArgs),
    Export(ExportArgs),
    Verify(VerifyArgs),
    Proof { out: PathBuf },
    KeyShow { db: PathBuf, key: Option<PathBuf> },
    Checkpoint { db: PathBuf },
    Token(TokenArgs),
    Bench(BenchCommand),
}

/// `fedcore bench …`.
#[derive(Debug, Clone, PartialEq)]
pub enum BenchCommand {
    Load {
        options: LoadOptions,
        json: bool,
    },
    Seed {
        db: PathBuf,
        workflows: u64,
        durability: Durability,
        /// Create the runs only (`--runs-only`).
        runs_only: bool,
    },
    Verify {
        entries: u64,
        /// A database to reuse (and keep); `None` for a temporary one.
        db: Option<PathBuf>,
        rounds: usize,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct TokenArgs {
    pub db: PathBuf,
    /// The signing key file; `None` is the one beside the database.
    pub key: Option<PathBuf>,
    pub command: TokenCommand,
}

#[derive(Debug, Clone, PartialEq)]
pub enum TokenCommand {
    Create { name: String, role: Role },
    Revoke { name: String },
    List,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExportArgs {
    pub db: PathBuf,
    pub run_id: String,
    pub out: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ServeArgs {
    pub db: PathBuf,
    pub listen: SocketAddr,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
    pub shutdown_grace: Duration,
    pub key: Option<PathBuf>,
    pub durability: Durability,
    /// Serve `POST /bench/ceiling` (for `fedcore bench` only).
    pub bench_ceiling: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct VerifyArgs {
    pub db: PathBuf,
    pub json: bool,
    pub expect_head: Option<Head>,
    pub replay: bool,
    /// Check an exported folder instead of a database.
    pub receipts: Option<PathBuf>,
    /// The public key signatures must verify under: a key or a path to a file holding one.
    pub pubkey: Option<String>,
}

/// Parses `args` (without the program name).
pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Cli, lexopt::Error> {
    let mut parser = lexopt::Parser::from_args(args);
    match parser.next()? {
        None => Ok(Cli::Help(USAGE)),
        Some(Short('h') | Long("help")) => Ok(Cli::Help(USAGE)),
        Some(Short('V') | Long("version")) => Ok(Cli::Version),
        Some(Value(command)) => match command.to_str() {
            Some("serve") => parse_serve(&mut parser),
            Some("export") => parse_export(&mut parser),
            Some("verify") => parse_verify(&mut parser),
            Some("proof") => parse_proof(&mut parser),
            Some("token") => parse_token(&mut parser),
            Some("key") => parse_key(&mut parser),
            Some("checkpoint") => parse_checkpoint(&mut parser),
            Some("bench") => parse_bench(&mut parser),
            Some("help") => Ok(Cli::Help(USAGE)),
            _ => Err(lexopt::Error::Custom(
                format!("unknown command {command:?}\n\n{USAGE}").into(),
            )),
        },
        Some(other) => Err(other.unexpected()),
    }
}

fn millis(parser: &mut lexopt::Parser) -> Result<Duration, lexopt::Error> {
    let n: u64 = parser.value()?.parse()?;
    if n == 0 {
        return Err(lexopt::Error::Custom(
            "a timeout must be at least 1 ms".into(),
        ));
    }
    Ok(Duration::from_millis(n))
}

fn durability(parser: &mut lexopt::Parser) -> Result<Durability, lexopt::Error> {
    let text = parser.value()?.string()?;
    Durability::parse(&text).ok_or_else(|| {
        lexopt::Error::Custom(format!("--durability is full or normal, not {text:?}").into())
    })
}

fn parse_serve(parser: &mut lexopt::Parser) -> Result<Cli, lexopt::Error> {
    let mut args = ServeArgs {
        db: PathBuf::from(DEFAULT_DB),
        listen: DEFAULT_LISTEN.parse().expect("the default address parses"),
        header_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
        shutdown_grace: Duration::from_secs(10),
        key: None,
        durability: Durability::Full,
        bench_ceiling: false,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help(SERVE_USAGE)),
            Long("db") => args.db = path(parser, "--db")?,
            Long("listen") => args.listen = parser.value()?.parse()?,
            Long("key") => args.key = Some(path(parser, "--key")?),
            Long("durability") => args.durability = durability(parser)?,
            Long("bench-ceiling") => args.bench_ceiling = true,
            Long("header-timeout-ms") => args.header_timeout = millis(parser)?,
            Long("request-timeout-ms") => args.request_timeout = millis(parser)?,
            Long("shutdown-grace-ms") => args.shutdown_grace = millis(parser)?,
            other => return Err(other.unexpected()),
        }
    }
    Ok(Cli::Serve(args))
}

fn parse_bench_load(parser: &mut lexopt::Parser) -> Result<Cli, lexopt::Error> {
    let mut options = LoadOptions::default();
    let mut json = false;
    let seconds = |parser: &mut lexopt::Parser, flag: &str| -> Result<f64, lexopt::Error> {
        let s: f64 = parser.value()?.parse()?;
        match s.is_finite() && (0.0..=3600.0).contains(&s) {
            true => Ok(s),
            false => Err(lexopt::Error::Custom(
                format!("{flag} is a number of seconds from 0 to 3600, not {s}").into(),
            )),
        }
    };
    let at_least_one = |parser: &mut lexopt::Parser, flag: &str| -> Result<usize, lexopt::Error> {
        let n: usize = parser.value()?.parse()?;
        match n {
            0 => Err(lexopt::Error::Custom(
                format!("{flag} must be at least 1").into(),
            )),
            n => Ok(n),
        }
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help(BENCH_USAGE)),
            Long("conns") => options.conns = at_least_one(parser, "--conns")?,
            Long("rounds") => options.rounds = at_least_one(parser, "--rounds")?,
            Long("seconds") => options.seconds = seconds(parser, "--seconds")?,
            Long("warmup") => options.warmup = seconds(parser, "--warmup")?,
            Long("durability") => options.durability = durability(parser)?,
            Long("keep") => options.keep = Some(path(parser, "--keep")?),
            Long("db") => options.db = Some(path(parser, "--db")?),
            Long("no-verify") => options.verify = false,
            Long("json") => json = true,
            other => return Err(other.unexpected()),
        }
    }
    if options.keep.is_some() && options.db.is_some() {
        return Err(lexopt::Error::Custom(
            "--keep and --db exclude each other (--db is kept)".into(),
        ));
    }
    if options.seconds <= 0.0 {
        return Err(lexopt::Error::Custom(
            "--seconds must be more than 0".into(),
        ));
    }
    Ok(Cli::Bench(BenchCommand::Load { options, json }))
}

fn parse_export(parser: &mut lexopt::Parser) -> Result<Cli, lexopt::Error> {
    let (mut db, mut run_id, mut out) = (PathBuf::from(DEFAULT_DB), None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help(EXPORT_USAGE)),
            Long("db") => db = path(parser, "--db")?,
            Long("run") => run_id = Some(parser.value()?.string()?),
            Long("out") => out = Some(path(parser, "--out")?),
            other => return Err(other.unexpected()),
        }
    }
    let run_id = run_id.ok_or(lexopt::Error::MissingValue {
        option: Some("--run".into()),
    })?;
    let out = out.ok_or(lexopt::Error::MissingValue {
        option: Some("--out".into()),
    })?;
    Ok(Cli::Export(ExportArgs { db, run_id, out }))
}

fn parse_verify(parser: &mut lexopt::Parser) -> Result<Cli, lexopt::Error> {
    let mut args = VerifyArgs {
        db: PathBuf::from(DEFAULT_DB),
        json: false,
        expect_head: None,
        replay: false,
        receipts: None,
        pubkey: None,
    };
    let mut db_given = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help(VERIFY_USAGE)),
            Long("db") => {
                args.db = path(parser, "--db")?;
                db_given = true;
            }
            Long("json") => args.json = true,
            Long("replay") => args.replay = true,
            Long("receipts") => args.receipts = Some(path(parser, "--receipts")?),
            Long("pubkey") => args.pubkey = Some(parser.value()?.string()?),
            Long("expect-head") => args.expect_head = Some(head(&parser.value()?.string()?)?),
            other => return Err(other.unexpected()),
        }
    }
    if args.receipts.is_some() && (db_given || args.replay || args.expect_head.is_some()) {
        return Err(lexopt::Error::Custom(
            "--receipts checks a folder without the database: it takes no --db, --replay or --expect-head".into(),
        ));
    }
    Ok(Cli::Verify(args))
}

fn parse_proof(parser: &mut lexopt::Parser) -> Result<Cli, lexopt::Error> {
    let mut out = PathBuf::from("REPORT/PROOFS");
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help(PROOF_USAGE)),
            Long("out") => out = path(parser, "--out")?,
            other => return Err(other.unexpected()),
        }
    }
    Ok(Cli::Proof { out })
}

/// The path an option names. An empty one is refused (SQLite would take `""` for a private
/// temporary database, a different one on each connection), and so is one that is another option:
/// `verify --db --json` forgot the path.
fn path(parser: &mut lexopt::Parser, option: &str) -> Result<PathBuf, lexopt::Error> {
    let value = parser.value()?;
    let refused = |why: String| Err(lexopt::Error::Custom(why.into()));
    if value.is_empty() {
        return refused(format!("{option} wants a path, and was given an empty one"));
    }
    if value.to_string_lossy().starts_with("--") {
        return refused(format!(
            "{option} wants a path, not the option {} (write ./{} for a file of that name)",
            value.to_string_lossy(),
            value.to_string_lossy()
        ));
    }
    Ok(value.into())
}

fn parse_token(parser: &mut lexopt::Parser) -> Result<Cli, lexopt::Error> {
    let usage = || {
        lexopt::Error::Custom(format!("token wants create, revoke or list\n\n{TOKEN_USAGE}").into())
    };
    let action = match parser.next()? {
        Some(Short('h') | Long("help")) => return Ok(Cli::Help(TOKEN_USAGE)),
        Some(Value(action)) => action.string()?,
        _ => return Err(usage()),
    };
    let (mut db, mut key, mut name, mut role) = (PathBuf::from(DEFAULT_DB), None, None, None);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help(TOKEN_USAGE)),
            Long("db") => db = path(parser, "--db")?,
            Long("key") if action != "list" => key = Some(path(parser, "--key")?),
            Long("name") if action != "list" => name = Some(parser.value()?.string()?),
            Long("role") if action == "create" => {
                let text = parser.value()?.string()?;
                role = Some(Role::parse(&text).ok_or_else(|| {
                    lexopt::Error::Custom(
                        format!("--role must be agent, approver, admin or auditor, not {text:?}")
                            .into(),
                    )
                })?);
            }
            other => return Err(other.unexpected()),
        }
    }
    let missing = |option: &str| lexopt::Error::MissingValue {
        option: Some(option.into()),
    };
    let command = match action.as_str() {
        "create" => TokenCommand::Create {
            name: name.ok_or_else(|| missing("--name"))?,
            role: role.ok_or_else(|| missing("--role"))?,
        },
        "revoke" => TokenCommand::Revoke {
            name: name.ok_or_else(|| missing("--name"))?,
        },
        "list" => TokenCommand::List,
        _ => return Err(usage()),
    };
    Ok(Cli::Token(TokenArgs { db, key, command }))
}

fn parse_key(parser: &mut lexopt::Parser) -> Result<Cli, lexopt::Error> {
    match parser.next()? {
        Some(Value(sub)) if sub == "show" => {}
        Some(Short('h') | Long("help")) | None => return Ok(Cli::Help(KEY_USAGE)),
        Some(other) => return Err(other.unexpected()),
    }
    let (mut db, mut key) = (PathBuf::from(DEFAULT_DB), None);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help(KEY_USAGE)),
            Long("db") => db = path(parser, "--db")?,
            Long("key") => key = Some(path(parser, "--key")?),
            other => return Err(other.unexpected()),
        }
    }
    Ok(Cli::KeyShow { db, key })
}

fn parse_checkpoint(parser: &mut lexopt::Parser) -> Result<Cli, lexopt::Error> {
    let mut db = PathBuf::from(DEFAULT_DB);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help(CHECKPOINT_USAGE)),
            Long("db") => db = path(parser, "--db")?,
            other => return Err(other.unexpected()),
        }
    }
    Ok(Cli::Checkpoint { db })
}

fn parse_bench(parser: &mut lexopt::Parser) -> Result<Cli, lexopt::Error> {
    let action = match parser.next()? {
        Some(Short('h') | Long("help")) | None => return Ok(Cli::Help(BENCH_USAGE)),
        Some(Value(action)) => action.string()?,
        Some(other) => return Err(other.unexpected()),
    };
    if action == "load" {
        return parse_bench_load(parser);
    }
    let (mut db, mut workflows, mut durability_given) = (None, None, None);
    let (mut entries, mut rounds, mut runs_only) = (1_000_000u64, 3usize, false);
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Cli::Help(BENCH_USAGE)),
            Long("db") => db = Some(path(parser, "--db")?),
            Long("workflows") if action == "seed" => workflows = Some(parser.value()?.parse()?),
            Long("durability") if action == "seed" => durability_given = Some(durability(parser)?),
            Long("runs-only") if action == "seed" => runs_only = true,
            Long("entries") if action == "verify" => entries = parser.value()?.parse()?,
            Long("rounds") if action == "verify" => rounds = parser.value()?.parse()?,
            other => return Err(other.unexpected()),
        }
    }
    let missing = |option: &str| lexopt::Error::MissingValue {
        option: Some(option.into()),
    };
    let command = match action.as_str() {
        "seed" => BenchCommand::Seed {
            db: db.ok_or_else(|| missing("--db"))?,
            workflows: workflows.ok_or_else(|| missing("--workflows"))?,
            durability: durability_given.unwrap_or(Durability::Normal),
            runs_only,
        },
        "verify" if rounds == 0 => {
            return Err(lexopt::Error::Custom("--rounds must be at least 1".into()))
        }
        "verify" => BenchCommand::Verify {
            entries,
            db,
            rounds,
        },
        _ => {
            return Err(lexopt::Error::Custom(
                format!("bench wants load, seed or verify\n\n{BENCH_USAGE}").into(),
            ))
        }
    };
    Ok(Cli::Bench(command))
}

/// `SEQ:HASH` as `verify` prints it.
fn head(text: &str) -> Result<Head, lexopt::Error> {
    Head::parse(text).ok_or_else(|| {
        let why = format!("--expect-head wants SEQ:HASH as verify prints it, not {text:?}");
        lexopt::Error::Custom(why.into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_strs(args: &[&str]) -> Result<Cli, lexopt::Error> {
        parse(args.iter().map(std::ffi::OsString::from))
    }

    #[test]
    fn serve_has_the_contract_defaults() {
        let Cli::Serve(args) = parse_strs(&["serve"]).unwrap() else {
            panic!("not serve")
        };
        assert_eq!(args.db, PathBuf::from("fedcore.db"));
        assert_eq!(args.listen, "127.0.0.1:9405".parse().unwrap());
    }

    #[test]
    fn durability_is_full_unless_normal_is_asked_for() {
        let Cli::Serve(args) = parse_strs(&["serve"]).unwrap() else {
            panic!("not serve")
        };
        assert_eq!(args.durability, Durability::Full);
        let Cli::Serve(args) = parse_strs(&["serve", "--durability", "normal"]).unwrap() else {
            panic!("not serve")
        };
        assert_eq!(args.durability, Durability::Normal);
        assert!(parse_strs(&["serve", "--durability", "fast"]).is_err());
    }

    #[test]
    fn serve_flags_are_read() {
        let Cli::Serve(args) = parse_strs(&[
            "serve",
            "--db",
            "x.db",
            "--listen",
            "127.0.0.1:0",
            "--header-timeout-ms",
            "500",
        ])
        .unwrap() else {
            panic!("not serve")
        };
        assert_eq!(args.db, PathBuf::from("x.db"));
        assert_eq!(args.header_timeout, Duration::from_millis(500));
    }

    #[test]
    fn verify_reads_its_flags_and_refuses_a_malformed_head() {
        let hash = "0a".repeat(32);
        let expect = format!("42:{hash}");
        let parsed = parse_strs(&[
            "verify",
            "--db",
            "x.db",
            "--json",
            "--replay",
            "--expect-head",
            &expect,
        ]);
        let Ok(Cli::Verify(args)) = parsed else {
            panic!("not verify: {parsed:?}")
        };
        assert_eq!(args.db, PathBuf::from("x.db"));
        assert!(args.json && args.replay);
        assert_eq!(
            args.expect_head,
            Some(Head {
                seq: 42,
                entry_hash: hash
            })
        );
        assert!(parse_strs(&["verify", "--expect-head", "42"]).is_err());
        assert!(parse_strs(&["verify", "--expect-head", "42:nothex"]).is_err());
        assert_eq!(
            parse_strs(&["verify", "--help"]).unwrap(),
            Cli::Help(VERIFY_USAGE)
        );
        let Ok(Cli::Verify(defaults)) = parse_strs(&["verify"]) else {
            panic!("not verify")
        };
        assert_eq!(defaults.db, PathBuf::from("fedcore.db"));
        assert!(!defaults.json && !defaults.replay && defaults.expect_head.is_none());
    }

    #[test]
    fn every_command_has_help_and_bad_flags_are_errors() {
        assert_eq!(parse_strs(&["--help"]).unwrap(), Cli::Help(USAGE));
        assert_eq!(
            parse_strs(&["serve", "--help"]).unwrap(),
            Cli::Help(SERVE_USAGE)
        );
        assert!(parse_strs(&["serve", "--bogus"]).is_err());
        assert!(parse_strs(&["frobnicate"]).is_err());
        assert!(parse_strs(&["serve", "--listen", "nowhere"]).is_err());
        assert_eq!(
            parse_strs(&["token", "--help"]).unwrap(),
            Cli::Help(TOKEN_USAGE)
        );
    }

    #[test]
    fn bench_commands_read_their_flags_and_default_to_a_million_entries() {
        assert_eq!(
            parse_strs(&["bench", "seed", "--db", "b.db", "--workflows", "10"]).unwrap(),
            Cli::Bench(BenchCommand::Seed {
                db: PathBuf::from("b.db"),
                workflows: 10,
                durability: Durability::Normal,
                runs_only: false
            })
        );
        assert!(parse_strs(&["bench", "seed", "--db", "b.db"]).is_err());
        assert!(parse_strs(&["bench", "seed", "--workflows", "10"]).is_err());
        assert_eq!(
            parse_strs(&["bench", "verify"]).unwrap(),
            Cli::Bench(BenchCommand::Verify {
                entries: 1_000_000,
                db: None,
                rounds: 3
            })
        );
        assert_eq!(
            parse_strs(&[
                "bench",
                "verify",
                "--entries",
                "5000",
                "--db",
                "v.db",
                "--rounds",
                "1"
            ])
            .unwrap(),
            Cli::Bench(BenchCommand::Verify {
                entries: 5000,
                db: Some(PathBuf::from("v.db")),
                rounds: 1
            })
        );
        assert!(parse_strs(&["bench", "verify", "--rounds", "0"]).is_err());
        assert!(parse_strs(&["bench", "verify", "--workflows", "3"]).is_err());
        assert!(parse_strs(&["bench", "unload"]).is_err());
        assert!(matches!(
            parse_strs(&["bench", "load", "--conns", "8"]).unwrap(),
            Cli::Bench(BenchCommand::Load { options, json: false }) if options.conns == 8
        ));
        assert_eq!(parse_strs(&["bench"]).unwrap(), Cli::Help(BENCH_USAGE));
        assert_eq!(
            parse_strs(&["bench", "verify", "--help"]).unwrap(),
            Cli::Help(BENCH_USAGE)
        );
    }

    #[test]
    fn token_commands_read_their_flags() {
        assert_eq!(
            parse_strs(&["token", "create", "--name", "agent-7", "--role", "agent"]).unwrap(),
            Cli::Token(TokenArgs {
                db: PathBuf::from(DEFAULT_DB),
                key: None,
                command: TokenCommand::Create {
                    name: "agent-7".into(),
                    role: Role::Agent
                }
            })
        );
        assert!(parse_strs(&["token", "create", "--name", "x", "--role", "root"]).is_err());
        assert!(parse_strs(&["token", "create", "--name", "x"]).is_err());
        assert!(parse_strs(&["token", "revoke"]).is_err());
        assert!(parse_strs(&["token", "list", "--name", "x"]).is_err());
        assert!(parse_strs(&["token", "mint"]).is_err());
        let Ok(Cli::Token(args)) = parse_strs(&["token", "list", "--db", "x.db"]) else {
            panic!("not token list")
        };
        assert_eq!(args.db, PathBuf::from("x.db"));
    }
}
