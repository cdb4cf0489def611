//! The HTTP face of fedcore, and the only async code: a small tokio runtime, the accept loop
//! (`server`), routes, request decoding and error mapping. Writes are handed to the writer thread
//! as jobs and awaited; reads run on the blocking pool over read connections. The clock is read
//! here (by the writer's clock function), never in the engine.

mod error;
mod request;
mod routes;
pub mod server;

pub use error::ApiError;

use crate::engine::signing::Signer;
use crate::engine::{self, Command, Outcome};
use crate::model::Timestamp;
use crate::store::{self, ReadPool, StoreError, Tx, Writer};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use request::Idempotency;
use serde_json::Value;
use server::ServerConfig;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How many write jobs may wait for the writer before requests are refused with 503.
const WRITER_QUEUE: usize = 4096;

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
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Store(#[from] StoreError),
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
    serve_until(options, server::shutdown_signal(), move |addr| {
        eprintln!(
            "fedcore {} over {} listening on http://{addr}",
            env!("CARGO_PKG_VERSION"),
            db.display()
        );
    })
}

/// Serves until `shutdown` resolves; `on_ready` is called with the bound address before the
/// first connection is accepted.
fn serve_until(
    options: ServeOptions,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ServeError> {
    let conn = store::open_for_writing(&options.db)?;
    let signer = Arc::new(signing_key(&conn, &options)?);
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
        on_ready(listener.local_addr()?);
        let sweeper = tokio::spawn(sweep_expired_gates(state.clone()));
        let result = server::serve(listener, routes::router(state), options.server, shutdown).await;
        sweeper.abort();
        result
    });
    // Dropping the runtime drops every handle to the writer; the writer then finishes its queue,
    // checkpoints the WAL and exits.
    runtime.shutdown_timeout(Duration::from_secs(1));
    if writer_thread.join().is_err() {
        eprintln!("the writer thread panicked");
    }
    Ok(served?)
}

/// Loads (or on the first start creates) the key file and records its public key in the
/// database; refuses a key other than the one the database already records.
fn signing_key(
    conn: &store::WriteConnection,
    options: &ServeOptions,
) -> Result<Signer, ServeError> {
    let path = (options.key.clone()).unwrap_or_else(|| crate::keyfile::default_path(&options.db));
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
        let names: Vec<String> = recorded
            .iter()
            .map(|k| format!("{} ({})", k.key_name, k.key_id))
            .collect();
        return Err(ServeError::KeyMismatch(format!(
            "the key file {} holds key {} ({}), but {} records the signing key {}; \
             refusing to start (pass --key with the key this database was signed with)",
            path.display(),
            public.name,
            public.key_id_hex(),
            options.db.display(),
            names.join(", ")
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
                let shutdown = async move {
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
            let done = write(&state, Command::ExpireGates, None, |_| {
                Ok((StatusCode::OK, Value::Null))
            })
            .await;
            if let Err(e) = done {
                eprintln!("gate sweep: {}", e.message);
            }
        }
    }
}

/// How long an idempotency key is remembered: at least 24 hours (contract: issue 4).
const IDEMPOTENCY_SECONDS: i64 = 24 * 3600;

/// Turns a command's outcome into the status and JSON body of its answer.
type Encoder = fn(Outcome) -> Result<(StatusCode, Value), ApiError>;

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

/// A write job: one engine command, encoded and (under an idempotency key) remembered inside the
/// command's own transaction, answered over a oneshot channel after that transaction ended.
struct CommandJob {
    command: Command,
    signer: Arc<Signer>,
    idempotency: Option<Idempotency>,
    encode: Encoder,
    result: Option<Result<Answer, ApiError>>,
    reply: oneshot::Sender<Result<Answer, ApiError>>,
}

impl CommandJob {
    /// Runs the job's transaction body; returns the answer and whether to commit.
    fn execute(&self, tx: &Tx<'_>, now: Timestamp) -> (Result<Answer, ApiError>, bool) {
        if let Some(idem) = &self.idempotency {
            match store::get_idempotency(tx, &idem.actor, &idem.key) {
                Ok(Some(first)) if first.request_hash == idem.request_hash => {
                    let status = StatusCode::from_u16(first.status).unwrap_or(StatusCode::OK);
                    return (
                        Ok(Answer {
                            status,
                            body: first.response,
                            replayed: true,
                        }),
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
        let answer = result.map_err(ApiError::from).and_then(|outcome| {
            let (status, value) = (self.encode)(outcome)?;
            let body = serde_json::to_vec(&value).map_err(ApiError::internal)?;
            Ok(Answer {
                status,
                body,
                replayed: false,
            })
        });
        if let (Some(idem), true) = (&self.idempotency, commit) {
            // A committed answer, success or recorded refusal, is what a retry must see again.
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
        (answer, commit)
    }
}

impl store::Job for CommandJob {
    fn run(&mut self, tx: &Tx<'_>, now: Timestamp) -> bool {
        let (answer, commit) = self.execute(tx, now);
        self.result = Some(answer);
        commit
    }

    fn finish(self: Box<Self>, failure: Option<StoreError>) {
        let answer = match (failure, self.result) {
            (Some(e), _) => Err(ApiError::internal(e)),
            (None, Some(result)) => result,
            (None, None) => Err(ApiError::internal("the operation produced no result")),
        };
        // The client may have gone away; its answer is then simply dropped.
        let _ = self.reply.send(answer);
    }
}

/// Sends `command` to the writer thread and waits for its committed, encoded answer.
async fn write(
    state: &AppState,
    command: Command,
    idempotency: Option<Idempotency>,
    encode: Encoder,
) -> Result<Response, ApiError> {
    let (reply, answer) = oneshot::channel();
    let job = CommandJob {
        command,
        signer: state.signer.clone(),
        idempotency,
        encode,
        result: None,
        reply,
    };
    state
        .writer
        .submit(Box::new(job))
        .map_err(|_| ApiError::busy())?;
    let answer = answer
        .await
        .map_err(|_| ApiError::internal("the writer dropped a job"))??;
    Ok(answer.into_response())
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
