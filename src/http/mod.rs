//! The HTTP face of fedcore, and the only async code: a small tokio runtime, the accept loop
//! (`server`), routes, request decoding and error mapping. Writes are handed to the writer thread
//! as jobs and awaited; reads run on the blocking pool over read connections. The clock is read
//! here (by the writer's clock function), never in the engine.

mod auth;
mod error;
mod request;
mod routes;
pub mod server;
mod wire;
#[cfg(test)]
mod workload;

pub use error::ApiError;

use crate::engine::signing::Signer;
use crate::engine::{self, Command, Outcome};
use crate::model::Timestamp;
use crate::store::{self, ReadPool, StoreError, Tx, Writer};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use request::Idempotency;
use server::ServerConfig;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How many write jobs may wait for the writer before requests are refused with 503.
/// Bodies are at most 1 MiB, so this also bounds what queued jobs can hold.
const WRITER_QUEUE: usize = 1024;

/// How often the background sweep looks for gates past their deadline.
const SWEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    writer: Writer,
    readers: ReadPool,
    /// The signing key, lent to the engine inside each write transaction.
    signer: Arc<Signer>,
}

/// What `fedcore serve` needs to run.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub db: PathBuf,
    pub listen: SocketAddr,
    pub server: ServerConfig,
    /// The signing key file; `None` for the default beside the database (`<db>.key`).
    pub key: Option<PathBuf>,
    pub durability: store::Durability,
    /// Serve `POST /bench/ceiling`, the benchmark's trivial write (see `store::bench`).
    pub bench_ceiling: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `serve` will not start as asked (a non-loopback address with no token, a stale admin
    /// token file); the message says what to do.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Key(#[from] crate::keyfile::KeyFileError),
    #[error("{0}")]
    KeyMismatch(String),
}

/// The wall clock, in the engine's time type.
pub fn now() -> Timestamp {
    Timestamp::from_micros(chrono::Utc::now().timestamp_micros())
}

/// Runs the server until SIGINT or SIGTERM: opens (or creates) the database, starts the writer
/// thread, serves, then drains in-flight requests and the writer queue before returning.
pub fn serve(options: ServeOptions) -> Result<(), ServeError> {
    let db = options.db.clone();
    serve_until(options, server::shutdown_signal, move |addr| {
        eprintln!(
            "fedcore {} over {} listening on http://{addr}",
            env!("CARGO_PKG_VERSION"),
            db.display()
        );
    })
}

/// Serves until `shutdown` resolves; `on_ready` is called with the bound address before the
/// first connection is accepted.
/// `shutdown` makes the future that ends serving; it is called inside the runtime before the
/// address is announced, so signal handlers are in place by the time a client can connect.
fn serve_until<F: std::future::Future<Output = ()> + Send + 'static>(
    options: ServeOptions,
    shutdown: impl FnOnce() -> F,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let conn = store::open_for_writing(&options.db)?;
    store::set_durability(&conn, options.durability)?;
    let signer = Arc::new(open_signer(&conn, &options.db, options.key.as_deref())?);
    bootstrap(&conn, &options, &signer)?;
    if options.bench_ceiling {
        store::bench::create_ceiling_table(&conn)?;
    }
    let last_checkpoint = Box::new(ShutdownCheckpoint(signer.clone()));
    let (writer, writer_thread) =
        Writer::start_with_last_job(conn, now, WRITER_QUEUE, Some(last_checkpoint))?;
    let state = AppState {
        writer,
        readers: ReadPool::new(&options.db),
        signer,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("fedcore-http")
        .enable_all()
        .build()?;
    let served = runtime.block_on(async {
        let listener = server::bind(options.listen).await?;
        let shutdown = shutdown();
        on_ready(listener.local_addr()?);
        let sweeper = tokio::spawn(sweep_expired_gates(state.clone()));
        let result = server::serve(
            listener,
            routes::router(state, options.bench_ceiling),
            options.server,
            shutdown,
        )
        .await;
        sweeper.abort();
        result
    });
    // Dropping the runtime drops every handle to the writer; the writer then finishes its queue,
    // checkpoints the WAL and exits.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if writer_thread.join().is_err() {
        server::log_line(format_args!("the writer thread panicked"));
    }
    Ok(served?)
}

/// Where the first admin token of a new database is written: `<db>.admin-token`.
pub fn admin_token_path(db: &Path) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push(".admin-token");
    PathBuf::from(path)
}

/// Before serving: refuses a non-loopback address while no live token exists (nobody could be
/// let in, and a fresh admin token should not be the first thing a network sees), and on a
/// database that has never had a token creates the admin token `admin`, written to
/// `<db>.admin-token` with mode 0600 (never overwriting a file that is there) and announced on
/// stderr. The token's creation is an audit entry by `fedcore` itself.
fn bootstrap(
    conn: &store::WriteConnection,
    options: &ServeOptions,
    signer: &Signer,
) -> Result<(), ServeError> {
    let (ever, live) = store::write_once(conn, |tx| (store::count_tokens(tx), false))??;
    if live == 0 && !options.listen.ip().is_loopback() {
        return Err(ServeError::Refused(format!(
            "refusing to listen on {} (not a loopback address): {} has no live token; \
             create one first with `fedcore token create --name NAME --role admin --db {}`",
            options.listen,
            options.db.display(),
            options.db.display()
        )));
    }
    if ever > 0 {
        return Ok(());
    }
    let path = admin_token_path(&options.db);
    let token = crate::secret::new_token().map_err(|e| ServeError::Io(std::io::Error::other(e)))?;
    write_secret_file(&path, &token).map_err(|e| {
        ServeError::Refused(format!(
            "cannot create the admin token file {}: {e}; a database without tokens writes its \
             first admin token there and never overwrites a file (remove a stale one)",
            path.display()
        ))
    })?;
    let command = Command::CreateToken {
        name: ADMIN_NAME.to_string(),
        role: crate::model::Role::Admin,
        token_hash: crate::secret::token_hash(&token),
        actor: engine::SYSTEM_ACTOR.to_string(),
    };
    let created = store::write_once(conn, |tx| engine::apply(tx, now(), signer, &command))
        .map_err(ServeError::from)
        .and_then(|applied| {
            applied.map_err(|e| ServeError::Refused(format!("cannot create the admin token: {e}")))
        });
    if let Err(e) = created {
        // No token was stored: take the file back, so the next start can try again.
        let _ = std::fs::remove_file(&path);
        return Err(e);
    }
    eprintln!(
        "fedcore: created the admin token `{ADMIN_NAME}`; it is in {}",
        path.display()
    );
    Ok(())
}

/// The name of the admin token `serve` creates on a new database.
pub const ADMIN_NAME: &str = "admin";

/// Writes `secret` and a newline to a new file readable by its owner only.
fn write_secret_file(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    writeln!(file, "{secret}")?;
    file.sync_all()
}

/// Loads (or on the first start creates) the key file and records its public key in the
/// database; refuses a key other than the one the database already records.
pub fn open_signer(
    conn: &store::WriteConnection,
    db: &Path,
    key: Option<&Path>,
) -> Result<Signer, ServeError> {
    let path = key.map_or_else(|| crate::keyfile::default_path(db), Path::to_path_buf);
    let recorded_names = |recorded: &[store::KeyRow]| {
        let names: Vec<String> = recorded
            .iter()
            .map(|k| format!("{} ({})", k.key_name, k.key_id))
            .collect();
        names.join(", ")
    };
    // A new key is made only for a database that records none: one made for a database signed
    // with another key could never be used, and would lie beside it looking like its key.
    if !path.exists() {
        let recorded = store::recorded_signing_keys(conn)?;
        if !recorded.is_empty() {
            return Err(ServeError::KeyMismatch(format!(
                "there is no key file at {}, and {} records the signing key {}; refusing to \
                 make another (pass --key with the key this database was signed with)",
                path.display(),
                db.display(),
                recorded_names(&recorded)
            )));
        }
    }
    let (signer, created) = crate::keyfile::load_or_create(&path)?;
    if created {
        eprintln!("created signing key {} (mode 0600)", path.display());
    }
    let public = signer.public_key();
    let row = store::KeyRow {
        key_id: public.key_id_hex(),
        key_name: public.name.clone(),
        public_key: public.public_hex(),
        created_at: String::new(),
        first_seq: 0,
        signature: String::new(),
    };
    let sign_record = |first_seq| signer.sign_key_record(first_seq);
    if let Some(recorded) = store::record_signing_key(conn, &row, now(), sign_record)? {
        return Err(ServeError::KeyMismatch(format!(
            "the key file {} holds key {} ({}), but {} records the signing key {}; \
             refusing to start (pass --key with the key this database was signed with)",
            path.display(),
            public.name,
            public.key_id_hex(),
            db.display(),
            recorded_names(&recorded)
        )));
    }
    Ok(signer)
}

/// The writer's last job: a signed checkpoint of the head as the server stops.
struct ShutdownCheckpoint(Arc<Signer>);

impl store::Job for ShutdownCheckpoint {
    fn run(&mut self, tx: &Tx<'_>, now: Timestamp) -> bool {
        match engine::write_checkpoint(tx, now, &self.0) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("shutdown checkpoint: {e}");
                false
            }
        }
    }

    fn finish(self: Box<Self>, failure: Option<StoreError>) {
        if let Some(e) = failure {
            eprintln!("shutdown checkpoint: {e}");
        }
    }
}

/// A server running on its own thread, for `fedcore proof`: a real server on a loopback port
/// that a client in the same process talks to over HTTP.
pub struct Background {
    pub addr: SocketAddr,
    stop: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<Result<(), ServeError>>,
}

impl Background {
    /// Starts serving and returns once the address is bound.
    pub fn start(options: ServeOptions) -> Result<Background, ServeError> {
        let (ready, bound) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("fedcore-background".into())
            .spawn(move || {
                let shutdown = move || async move {
                    let _ = stopped.await;
                };
                serve_until(options, shutdown, move |addr| {
                    let _ = ready.send(addr);
                })
            })?;
        match bound.recv() {
            Ok(addr) => Ok(Background { addr, stop, thread }),
            // The thread ended before binding: its result says why.
            Err(_) => match thread.join() {
                Ok(Err(e)) => Err(e),
                _ => Err(ServeError::Io(std::io::Error::other(
                    "the server stopped before it was ready",
                ))),
            },
        }
    }

    /// Shuts down as SIGTERM would, waiting for in-flight requests and the writer.
    pub fn stop(self) -> Result<(), ServeError> {
        let _ = self.stop.send(());
        self.thread.join().unwrap_or_else(|_| {
            Err(ServeError::Io(std::io::Error::other(
                "the server thread panicked",
            )))
        })
    }
}

/// Expires gates whose deadline passed even when nobody touches their run.
async fn sweep_expired_gates(state: AppState) {
    let mut tick = tokio::time::interval(SWEEP_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let due = read(&state, |db| {
            Ok(store::runs_with_expired_gates(db, now(), 1)?.is_empty())
        })
        .await;
        if let Ok(false) = due {
            let done = write(&state, None, Command::ExpireGates, None, |_| {
                Ok((StatusCode::OK, Vec::new()))
            })
            .await;
            if let Err(e) = done {
                server::log_line(format_args!("gate sweep: {}", e.message));
            }
        }
    }
}

/// How long an idempotency key is remembered: at least 24 hours (contract: issue 4).
const IDEMPOTENCY_SECONDS: i64 = 24 * 3600;

/// Turns a command's outcome into the status and JSON body of its answer. Without an idempotency
/// key it runs on the request's task after the commit, so it must not panic: a panic there would
/// answer 500 for a write that was kept (encoders return `Err` for what they cannot encode).
pub(crate) type Encoder = Box<dyn Fn(Outcome) -> Encoded + Send>;

/// An encoder's result: the status and the JSON bytes of an answer.
pub(crate) type Encoded = Result<(StatusCode, Vec<u8>), ApiError>;

/// An answer as sent: status, JSON body bytes, and whether it replays an earlier one.
struct Answer {
    status: StatusCode,
    body: Vec<u8>,
    replayed: bool,
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            [(header::CONTENT_TYPE, "application/json")],
            self.body,
        )
            .into_response();
        if self.replayed {
            response
                .headers_mut()
                .insert("idempotent-replayed", HeaderValue::from_static("true"));
        }
        response
    }
}

/// A write job: one engine command, (under an idempotency key) encoded and remembered inside the
/// command's own transaction, answered over a oneshot channel after that transaction ended.
struct CommandJob {
    /// The token the request was made with; `None` for fedcore's own writes (the gate sweep).
    token_id: Option<String>,
    command: Command,
    signer: Arc<Signer>,
    idempotency: Option<Idempotency>,
    encode: Encoder,
    result: Option<Result<Done, ApiError>>,
    /// The writer sends back what the transaction produced with the encoder: without an
    /// idempotency key the answer is encoded by the request's own task, not on the writer thread,
    /// which every write waits for.
    reply: oneshot::Sender<Result<(Done, Encoder), ApiError>>,
    /// Set by the request's guard when it stops waiting (its deadline passed, its client left),
    /// before it answers; `None` outside a guarded request.
    gone: Option<Arc<AtomicBool>>,
}

tokio::task_local! {
    /// The flag a request's guard sets when it stops waiting for the handler, seen by the write
    /// jobs the handler submits (`CommandJob::abandoned`).
    pub(crate) static REQUEST_GONE: Arc<AtomicBool>;
}

/// What a command's transaction produced: its answer, or only its outcome when nothing inside the
/// transaction needs the answer's bytes.
enum Done {
    Answered(Answer),
    Outcome(Box<Outcome>),
}

impl Done {
    /// The answer, encoding the outcome with `encode` when it was not encoded yet.
    fn into_answer(self, encode: &Encoder) -> Result<Answer, ApiError> {
        match self {
            Done::Answered(answer) => Ok(answer),
            Done::Outcome(outcome) => encode_answer(encode, *outcome),
        }
    }
}

/// Encodes a fresh (not replayed) answer.
fn encode_answer(encode: &Encoder, outcome: Outcome) -> Result<Answer, ApiError> {
    let (status, body) = encode(outcome)?;
    Ok(Answer {
        status,
        body,
        replayed: false,
    })
}

impl CommandJob {
    /// Runs the job's transaction body; returns what it produced and whether to commit.
    fn execute(&self, tx: &Tx<'_>, now: Timestamp) -> (Result<Done, ApiError>, bool) {
        if let Some(refused) = self.token_id.as_deref().and_then(|t| token_revoked(tx, t)) {
            return (Err(refused), false);
        }
        if let Some(idem) = &self.idempotency {
            match store::get_idempotency(tx, &idem.actor, &idem.key) {
                Ok(Some(first)) if first.request_hash == idem.request_hash => {
                    let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK);
                    return (
                        Ok(Done::Answered(Answer {
                            status,
                            body: first.response,
                            replayed: true,
                        })),
                        false,
                    );
                }
                Ok(Some(_)) => {
                    let refused = ApiError {
                        details: serde_json::json!({"path": "Idempotency-Key"}),
                        ..ApiError::new(
                            StatusCode::UNPROCESSABLE_ENTITY,
                            "idempotency_key_reused",
                            "this Idempotency-Key was already used for a different request",
                        )
                    };
                    return (Err(refused), false);
                }
                Ok(None) => {}
                Err(e) => return (Err(ApiError::internal(e)), false),
            }
        }
        let (result, commit) = engine::apply(tx, now, &self.signer, &self.command);
        let Some(idem) = &self.idempotency else {
            let done = result.map(|outcome| Done::Outcome(Box::new(outcome)));
            return (done.map_err(ApiError::from), commit);
        };
        let Keyed {
            answer,
            commit,
            remember,
        } = Keyed::of(result, commit, &self.encode);
        if remember {
            let (status, response) = match &answer {
                Ok(a) => (a.status.as_u16(), a.body.clone()),
                Err(e) => (
                    e.status.as_u16(),
                    serde_json::to_vec(&e.body()).unwrap_or_default(),
                ),
            };
            let stored = store::StoredAnswer {
                request_hash: idem.request_hash.clone(),
                status,
                response,
            };
            let keep_since = now.plus_seconds(-IDEMPOTENCY_SECONDS);
            if let Err(e) =
                store::put_idempotency(tx, &idem.actor, &idem.key, &stored, now, keep_since)
            {
                return (Err(ApiError::internal(e)), false);
            }
        }
        (answer.map(Done::Answered), commit)
    }
}

/// What a job under an idempotency key does with the engine's result and `commit`.
struct Keyed {
    answer: Result<Answer, ApiError>,
    /// Whether the job's transaction commits.
    commit: bool,
    /// Whether the answer is stored for a retry to replay.
    remember: bool,
}

impl Keyed {
    fn of(result: Result<Outcome, engine::Error>, commit: bool, encode: &Encoder) -> Keyed {
        let answer = match result {
            Ok(outcome) => match encode_answer(encode, outcome) {
                // The command succeeded but its answer is a server error, which is not kept: so
                // neither is the change, or the retry the key exists for would make it again.
                Err(e) if e.status.is_server_error() => {
                    return Keyed {
                        answer: Err(e),
                        commit: false,
                        remember: false,
                    }
                }
                encoded => encoded,
            },
            // A failed command's own writes are already undone; what `commit` still keeps (a
            // recorded refusal, a gate expired on the way) stays.
            Err(e) => Err(ApiError::from(e)),
        };
        // A committed answer (a success, a recorded refusal, an error after a gate expired on the
        // way) is what a retry must see again; a server error is not an answer to keep, and a
        // retry runs its command afresh.
        let server_error = matches!(&answer, Err(e) if e.status.is_server_error());
        Keyed {
            answer,
            commit,
            remember: commit && !server_error,
        }
    }
}

/// 401 when the request's token was revoked after it was authenticated. A request is
/// authenticated when its headers arrive; its body may come many seconds later, and the
/// revocation may be committed meanwhile. Checked in the transaction that would write, so the
/// log never holds a change made under a token after that token's `token.revoked`.
fn token_revoked(tx: &Tx<'_>, token_id: &str) -> Option<ApiError> {
    match store::token_is_live(tx, token_id) {
        Ok(true) => None,
        Ok(false) => Some(ApiError::unauthenticated(
            "the bearer token was revoked before this request was carried out",
        )),
        Err(e) => Some(ApiError::internal(e)),
    }
}

impl store::Job for CommandJob {
    fn run(&mut self, tx: &Tx<'_>, now: Timestamp) -> bool {
        let (answer, commit) = self.execute(tx, now);
        self.result = Some(answer);
        commit
    }

    fn finish(self: Box<Self>, failure: Option<StoreError>) {
        if matches!(failure, Some(StoreError::Abandoned)) {
            // Not an error of the server's: the request was answered (503 timeout) or left.
            server::log_line(format_args!(
                "SKIPPED a write{} whose request had gone (its deadline passed or its client \
                 left): not run",
                self.command
                    .run_id()
                    .map_or_else(String::new, |id| format!(" to run {id}"))
            ));
            return;
        }
        let reply = match (failure, self.result) {
            (Some(e), _) => Err(ApiError::internal(e)),
            (None, Some(Ok(done))) => Ok((done, self.encode)),
            (None, Some(Err(e))) => Err(e),
            (None, None) => Err(ApiError::internal("the operation produced no result")),
        };
        // The client may have gone away; its answer is then simply dropped.
        let _ = self.reply.send(reply);
    }

    /// The request's guard stopped waiting (it answers 503 `timeout` right after setting the
    /// flag, or its client left), or the handler's task dropped its end of the answer.
    fn abandoned(&self) -> bool {
        self.gone
            .as_ref()
            .is_some_and(|gone| gone.load(Ordering::Acquire))
            || self.reply.is_closed()
    }
}

/// Sends `command` to the writer thread and waits for its committed, encoded answer.
async fn write(
    state: &AppState,
    token_id: Option<String>,
    command: Command,
    idempotency: Option<Idempotency>,
    encode: impl Fn(Outcome) -> Encoded + Send + 'static,
) -> Result<Response, ApiError> {
    let encode: Encoder = Box::new(encode);
    let (reply, answer) = oneshot::channel();
    let job = CommandJob {
        token_id,
        command,
        signer: state.signer.clone(),
        idempotency,
        encode,
        result: None,
        reply,
        gone: REQUEST_GONE.try_with(Arc::clone).ok(),
    };
    submit(state, Box::new(job))?;
    let (done, encode) = answer
        .await
        .map_err(|_| ApiError::internal("the writer dropped a job"))??;
    Ok(done.into_answer(&encode)?.into_response())
}

/// The benchmark's ceiling write: one row inserted in its own savepoint of the writer's batch,
/// under the same check of its token, answered after the commit, exactly as a command's job is.
struct CeilingJob {
    token_id: String,
    id: Option<Result<i64, ApiError>>,
    reply: oneshot::Sender<Result<i64, ApiError>>,
}

impl store::Job for CeilingJob {
    fn run(&mut self, tx: &Tx<'_>, now: Timestamp) -> bool {
        let inserted = match token_revoked(tx, &self.token_id) {
            Some(refused) => Err(refused),
            None => store::bench::insert_ceiling_row(tx, now).map_err(ApiError::internal),
        };
        let commit = inserted.is_ok();
        self.id = Some(inserted);
        commit
    }

    fn finish(self: Box<Self>, failure: Option<StoreError>) {
        let answer = match (failure, self.id) {
            (Some(e), _) => Err(ApiError::internal(e)),
            (None, Some(answer)) => answer,
            (None, None) => Err(ApiError::internal("the operation produced no result")),
        };
        let _ = self.reply.send(answer);
    }
}

/// Queues `job` for the writer: 503 `busy` when the queue is full.
fn submit(state: &AppState, job: Box<dyn store::Job>) -> Result<(), ApiError> {
    state.writer.submit(job).map_err(|busy| match busy {
        store::Busy::Full => ApiError::busy(),
        store::Busy::Stopped => ApiError::writer_stopped(),
    })
}

/// Inserts one ceiling row through the writer and waits for its commit.
async fn write_ceiling_row(state: &AppState, token_id: String) -> Result<i64, ApiError> {
    let (reply, answer) = oneshot::channel();
    let job = CeilingJob {
        token_id,
        id: None,
        reply,
    };
    submit(state, Box::new(job))?;
    answer
        .await
        .map_err(|_| ApiError::internal("the writer dropped a job"))?
}

/// Runs a read on the blocking pool over a read connection, in one snapshot.
async fn read<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&store::Reader) -> Result<T, engine::Error> + Send + 'static,
) -> Result<T, ApiError> {
    let readers = state.readers.clone();
    match tokio::task::spawn_blocking(move || readers.read(f)).await {
        Ok(Ok(Ok(value))) => Ok(value),
        Ok(Ok(Err(e))) => Err(e.into()),
        Ok(Err(e)) => Err(ApiError::internal(e)),
        Err(e) => Err(ApiError::internal(e)),
    }
}
