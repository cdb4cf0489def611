//! The HTTP accept loop: it owns the listening socket, one tokio task per connection, and the
//! rules that keep a connection from hanging (a deadline for the request head, a deadline for the
//! handler) and a panic from taking the server down. Every request passes through one guard that
//! writes exactly one log line to stderr and turns a timeout or a panic into a JSON error. On
//! shutdown it stops accepting at once, lets in-flight requests finish within a grace period, and
//! returns. It knows nothing about routes, the engine or the store; it serves whatever router it
//! is given.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::header::{HeaderValue, CONTENT_TYPE};
use axum::http::{Method, Request, Response, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};
use tower::ServiceExt;

/// Deadlines of the server. None of them may be zero in practice: a zero header timeout closes
/// every connection before it can speak.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// A connection that has not sent a full request head in this time is closed. This also
    /// bounds how long an idle keep-alive connection stays open between requests.
    pub header_read_timeout: Duration,
    /// A handler taking longer than this is abandoned and the client gets
    /// 503 `{"error":{"code":"timeout",..}}`.
    pub request_timeout: Duration,
    /// On shutdown, in-flight requests get this long to finish before `serve` returns anyway.
    pub shutdown_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops accepting, lets in-flight
/// requests finish within `shutdown_grace`, and returns.
///
/// Accept errors (for example running out of file descriptors) are logged and retried after a
/// short pause, never returned, so a burst of connections cannot stop the server.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(config.header_read_timeout);

    // Every connection task holds a receiver; one send tells all of them to finish their current
    // response and close.
    let (shutdown_sender, shutdown_receiver) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);

    loop {
        tokio::select! {
            // Shutdown is checked first so that a steady stream of new connections cannot delay it.
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    connections.spawn(serve_connection(
                        stream,
                        builder.clone(),
                        router.clone(),
                        config.request_timeout,
                        shutdown_receiver.clone(),
                    ));
                }
                Err(error) if is_per_connection_error(&error) => {
                    // The failed connection is gone; the listener itself is fine.
                }
                Err(error) => {
                    // Errors such as EMFILE persist until some connection closes; retrying at once
                    // would spin a core, and giving up would take the server down.
                    log_line(format_args!("accept error: {error}; retrying in {ACCEPT_BACKOFF:?}"));
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            // Reaping finished connection tasks keeps the set from growing without bound.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }

    // Dropping the listener closes the socket, so new clients are refused rather than left waiting
    // in a backlog nobody will read.
    drop(listener);
    // The send fails only when no connection is open, and then there is nobody to tell.
    let _ = shutdown_sender.send(());

    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        log_line(format_args!(
            "shutdown grace of {:?} elapsed; closing {} connections",
            config.shutdown_grace,
            connections.len()
        ));
        connections.shutdown().await;
    }
    Ok(())
}

/// Binds a listener on `addr` with a backlog of 1024 pending connections.
///
/// `TcpListener::bind` uses a backlog of 128; on this machine a burst of 256 simultaneous
/// connects overflowed it and the dropped SYNs were retried by the clients only a second later.
/// Address reuse is on, as with `TcpListener::bind`, so a restarted server can bind again at once.
pub async fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Resolves on the first SIGINT or SIGTERM.
///
/// If a handler cannot be installed, that signal is logged and ignored, and the function waits
/// for the other one; it never resolves on its own, which would shut the server down unasked.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    // The handlers are installed here, at once, not when the future is first polled: a SIGTERM
    // that arrives after the server announced its address but before the accept loop started
    // must still shut it down cleanly instead of killing the process.
    #[cfg(unix)]
    let (mut interrupt, mut terminate) = {
        use tokio::signal::unix::{signal, SignalKind};
        let install = |kind: SignalKind, name: &str| match signal(kind) {
            Ok(stream) => Some(stream),
            Err(error) => {
                log_line(format_args!("cannot listen for {name}: {error}"));
                None
            }
        };
        (
            install(SignalKind::interrupt(), "SIGINT"),
            install(SignalKind::terminate(), "SIGTERM"),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let interrupt = async {
                match interrupt.as_mut() {
                    Some(stream) => {
                        stream.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let terminate = async {
                match terminate.as_mut() {
                    Some(stream) => {
                        stream.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = interrupt => {}
                () = terminate => {}
            }
        }
        #[cfg(not(unix))]
        {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

/// How many connections the kernel may hold for `accept`; Linux caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 1024;

/// How long the accept loop pauses after an error that is not about a single connection.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Serves one connection until the client closes it, a deadline closes it, or shutdown is
/// signalled and the request in flight (if any) has been answered.
async fn serve_connection(
    stream: TcpStream,
    builder: http1::Builder,
    router: Router,
    request_timeout: Duration,
    mut shutdown: watch::Receiver<()>,
) {
    // Responses are small and written whole; Nagle's algorithm would only hold them back while
    // waiting for an ACK. Failing to set it costs latency, not correctness, so it is not fatal.
    let _ = stream.set_nodelay(true);

    let service = service_fn(move |request: Request<Incoming>| {
        guard_request(router.clone(), request, request_timeout)
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);

    // Connection errors (the client went away, a head that was too slow or malformed) are not
    // logged: hyper has already answered what can be answered, and a line per idle keep-alive
    // client that timed out would drown the request log.
    tokio::select! {
        _ = connection.as_mut() => {}
        // Either a send or the sender being dropped means the server is stopping.
        _ = shutdown.changed() => {
            connection.as_mut().graceful_shutdown();
            let _ = connection.await;
        }
    }
}

/// Runs one request through the router with a deadline and a panic boundary, and logs it.
async fn guard_request(
    router: Router,
    request: Request<Incoming>,
    request_timeout: Duration,
) -> Result<Response<Body>, Infallible> {
    let mut log = RequestLog::new(request.method(), request.uri().path());

    // Whether the client finished sending its body decides who a timeout blames: a body that
    // never arrived is the client's fault (408), a slow handler is ours (503).
    let (parts, body) = request.into_parts();
    let body = TrackedBody::new(body);
    let body_received = body.received.clone();
    let request = Request::from_parts(parts, body);

    // The handler runs in its own task so that a panic unwinds that task only and comes back
    // here as a JoinError, instead of tearing down the connection without an answer.
    // Set before a timeout is answered, and when this future ends or is dropped (the client
    // left): a write the handler queued and the writer has not started is then not run.
    let gone = Arc::new(AtomicBool::new(false));
    let mut handler =
        tokio::spawn(super::REQUEST_GONE.scope(gone.clone(), router.oneshot(request)));
    // Nothing should keep running for a request nobody waits for any more, whether it timed out
    // or the client went away: the guard aborts the handler when this future ends or is dropped.
    let _abort = AbortOnDrop(handler.abort_handle(), gone.clone());

    let outcome = tokio::time::timeout(request_timeout, &mut handler).await;
    if outcome.is_err() {
        // The handler first, so that a write the writer skips from now on never wakes it to
        // report a dropped job.
        handler.abort();
        gone.store(true, Ordering::Release);
    }
    let response = match outcome {
        Ok(Ok(Ok(response))) => response,
        Ok(Ok(Err(infallible))) => match infallible {},
        Ok(Err(join_error)) => {
            let reason = if join_error.is_panic() {
                panic_message(join_error.into_panic().as_ref())
            } else {
                "handler task was cancelled".to_owned()
            };
            log_line(format_args!("PANIC {} {}: {reason}", log.method, log.path));
            error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                r#"{"error":{"code":"internal","message":"internal error","details":{}}}"#
                    .to_owned(),
            )
        }
        Err(_elapsed) if !body_received.load(Ordering::Acquire) => error_response(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                r#"{{"error":{{"code":"request_timeout","message":"the request body did not arrive within {} ms","details":{{}}}}}}"#,
                request_timeout.as_millis()
            ),
        ),
        Err(_elapsed) => error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                r#"{{"error":{{"code":"timeout","message":"request took longer than {} ms","details":{{}}}}}}"#,
                request_timeout.as_millis()
            ),
        ),
    };
    log.status = Some(response.status());
    Ok(response)
}

/// The request body as hyper delivers it, noting when the last of it has arrived.
struct TrackedBody {
    inner: Incoming,
    received: Arc<AtomicBool>,
}

impl TrackedBody {
    fn new(inner: Incoming) -> TrackedBody {
        let received = Arc::new(AtomicBool::new(hyper::body::Body::is_end_stream(&inner)));
        TrackedBody { inner, received }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None)) || self.inner.is_end_stream() {
            self.received.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// One request's log line, written when the request is done. Writing it from `Drop` makes it
/// exactly one line per request even when the client disconnects before the answer, in which
/// case the status is logged as 499 (the client closed the request), as nginx does.
struct RequestLog {
    method: Method,
    path: String,
    started: Instant,
    status: Option<StatusCode>,
}

impl RequestLog {
    fn new(method: &Method, path: &str) -> Self {
        RequestLog {
            method: method.clone(),
            path: path.to_owned(),
            started: Instant::now(),
            status: None,
        }
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let status = self.status.map_or(499, |status| status.as_u16());
        log_line(format_args!(
            "{} {} {} {}us",
            self.method,
            self.path,
            status,
            self.started.elapsed().as_micros()
        ));
    }
}

/// Aborts a task when dropped; aborting a task that already finished does nothing.
struct AbortOnDrop(AbortHandle, Arc<AtomicBool>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.1.store(true, Ordering::Release);
        self.0.abort();
    }
}

/// A JSON error answer in the contract's error shape.
fn error_response(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The text a panic was raised with, on one line so the log stays one line per event.
fn panic_message(payload: &(dyn Any + Send)) -> String {
    let message = if let Some(text) = payload.downcast_ref::<&str>() {
        text
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.as_str()
    } else {
        "panic without a message"
    };
    message.replace('\n', "\\n")
}

/// Whether an accept error concerns only the connection being accepted, so the next accept can
/// follow at once.
fn is_per_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Writes one line to stderr in a single write while holding the lock, so lines from
/// concurrent requests never interleave. A failed write is dropped: losing a log line must not
/// fail a request, and `eprintln!` would panic instead.
pub(crate) fn log_line(line: std::fmt::Arguments<'_>) {
    let mut text = line.to_string();
    text.push('\n');
    let _ = io::stderr().lock().write_all(text.as_bytes());
}
