//! Connection handling under load and abuse (contract §4: "no input may cause … a hung
//! connection"). Hundreds of keep-alive connections opened at once are all served; a thousand idle
//! ones do not keep a new client waiting; half-sent request heads and bodies that never arrive
//! neither block other clients nor stay open forever. Raw sockets throughout, and every read has a
//! timeout, so a server that hangs fails a test instead of blocking it.

use crate::races::{create_run, install_workflow};
use crate::support::{read_response, Client, Response, Server};
use std::io::{BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const HEALTH_REQUEST: &[u8] = b"GET /health HTTP/1.1\r\nHost: fedcore\r\n\r\n";
/// A request head without its final blank line: the server cannot know the head is complete.
const HALF_HEAD: &[u8] = b"GET /health HTTP/1.1\r\nHost: fedcore\r\n";
/// A complete head declaring a 1,000-byte body, followed by only the body's first bytes.
const STALLED_BODY: &[u8] = b"POST /workflows/runs HTTP/1.1\r\nHost: fedcore\r\n\
Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"workflow_id\": \"race_spine\", \"input\": {";

const CONNECT_LIMIT: Duration = Duration::from_secs(10);
const READ_LIMIT: Duration = Duration::from_secs(20);
/// How long a new client may wait to be served while other connections idle or stall.
const FRESH_CLIENT_LIMIT: Duration = Duration::from_secs(10);

/// One raw keep-alive connection with a buffered reader kept across responses.
struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = open_stream(addr)?;
        let writer = stream.try_clone()?;
        Ok(Conn {
            reader: BufReader::new(stream),
            writer,
        })
    }

    fn get_health(&mut self) -> std::io::Result<Response> {
        self.writer.write_all(HEALTH_REQUEST)?;
        read_response(&mut self.reader)
    }
}

/// A TCP connection to the server with bounded connect, read and write waits.
fn open_stream(addr: SocketAddr) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, CONNECT_LIMIT)?;
    stream.set_read_timeout(Some(READ_LIMIT))?;
    stream.set_write_timeout(Some(READ_LIMIT))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Opens a connection and writes `bytes` on it; returns it with the moment the bytes were sent.
fn open_and_send(addr: SocketAddr, bytes: &[u8]) -> std::io::Result<(TcpStream, Instant)> {
    let mut stream = open_stream(addr)?;
    stream.write_all(bytes)?;
    Ok((stream, Instant::now()))
}

/// Fails early, with advice, when this process may not open enough sockets for the test.
fn assert_enough_file_descriptors(needed: u64) {
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    let soft_limit = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))
        .and_then(|line| line.split_whitespace().nth(3))
        .and_then(|value| value.parse::<u64>().ok());
    if let Some(soft_limit) = soft_limit {
        assert!(
            soft_limit >= needed,
            "expected an open-files limit of at least {needed} for this test (it is {soft_limit}); \
             raise it with `ulimit -n {needed}`"
        );
    }
}

/// Has a brand-new client, on its own thread, read /health and make one write (registering an
/// agent). Fails the test unless both are answered 200 within `FRESH_CLIENT_LIMIT`.
fn assert_a_fresh_client_is_served(addr: SocketAddr, while_what: &str) {
    let (done, outcome) = mpsc::channel();
    thread::spawn(move || {
        let mut client = Client::connect(addr);
        let health = client.get("/health").status;
        let agent = serde_json::json!({"agent_id": "agent-fresh", "status": "active",
                                       "capabilities": [], "tier": "T2", "actor": "admin"});
        let write = client.put("/registry/agents/agent-fresh", &agent).status;
        let _ = done.send((health, write));
    });
    match outcome.recv_timeout(FRESH_CLIENT_LIMIT) {
        Ok(statuses) => assert_eq!(
            statuses,
            (200, 200),
            "expected a fresh client's GET /health and PUT agent to be answered 200 {while_what}"
        ),
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!(
                "expected a fresh client to be served within {FRESH_CLIENT_LIMIT:?} {while_what}"
            )
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            panic!(
                "expected a fresh client to be served {while_what}; its thread failed (see above)"
            )
        }
    }
}

/// How a connection we stopped writing to ended.
enum Ending {
    /// The server closed it (EOF or reset) `after` this long, having sent `bytes` first.
    Closed { after: Duration, bytes: Vec<u8> },
    /// Still open when the limit passed, having sent `bytes`.
    StillOpen { bytes: Vec<u8> },
}

/// Reads from `stream` until the server closes it or `limit` has passed since `since`.
fn wait_for_close(stream: &mut TcpStream, since: Instant, limit: Duration) -> Ending {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    for _ in 0..100_000 {
        let elapsed = since.elapsed();
        if elapsed >= limit {
            break;
        }
        let remaining = (limit - elapsed).max(Duration::from_millis(1));
        if stream.set_read_timeout(Some(remaining)).is_err() {
            return Ending::Closed {
                after: since.elapsed(),
                bytes,
            };
        }
        match stream.read(&mut buf) {
            Ok(0) => {
                return Ending::Closed {
                    after: since.elapsed(),
                    bytes,
                }
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            // Reset or aborted by the server: closed as well.
            Err(_) => {
                return Ending::Closed {
                    after: since.elapsed(),
                    bytes,
                }
            }
        }
    }
    Ending::StillOpen { bytes }
}

/// An ending in words, with the first line of whatever the server sent.
fn describe(ending: &Ending) -> String {
    let first_line = |bytes: &[u8]| {
        let text = String::from_utf8_lossy(bytes).into_owned();
        text.lines().next().unwrap_or("").to_string()
    };
    match ending {
        Ending::Closed { after, bytes } => {
            format!(
                "closed after {after:?}, having sent {:?}",
                first_line(bytes)
            )
        }
        Ending::StillOpen { bytes } => format!("still open, having sent {:?}", first_line(bytes)),
    }
}

/// Whatever the server sent before giving up on a request must be nothing or a 4xx answer
/// (a 408 Request Timeout, say).
fn is_nothing_or_client_error(bytes: &[u8]) -> bool {
    bytes.is_empty() || bytes.starts_with(b"HTTP/1.1 4")
}

/// The first few entries of a list of failures, for assertion messages.
fn first_few(failures: &[String]) -> &[String] {
    &failures[..failures.len().min(5)]
}

#[test]
fn two_hundred_fifty_six_keep_alive_connections_opened_at_once_are_all_served() {
    const N_CONNECTIONS: usize = 256;
    const PER_THREAD: usize = 8;
    const REQUESTS_EACH: usize = 3;
    assert_enough_file_descriptors(4 * N_CONNECTIONS as u64);
    let server = Server::start_with(&["--header-timeout-ms", "1000"]);

    let mut conns: Vec<Conn> = (0..N_CONNECTIONS)
        .map(|i| {
            Conn::open(server.addr)
                .unwrap_or_else(|e| panic!("expected to open connection {i}: {e}"))
        })
        .collect();

    // Each thread takes turns over its connections, so none waits long for its first request.
    let failures: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = conns
            .chunks_mut(PER_THREAD)
            .enumerate()
            .map(|(chunk_index, chunk)| {
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    for round in 0..REQUESTS_EACH {
                        for (k, conn) in chunk.iter_mut().enumerate() {
                            let i = chunk_index * PER_THREAD + k;
                            match conn.get_health() {
                                Ok(r) if r.status == 200 => {}
                                Ok(r) => failures.push(format!(
                                    "connection {i} request {round}: status {}",
                                    r.status
                                )),
                                Err(e) => {
                                    failures.push(format!("connection {i} request {round}: {e}"))
                                }
                            }
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("client thread panicked"))
            .collect()
    });

    assert!(
        failures.is_empty(),
        "expected all {} requests answered 200 on their keep-alive connections; {} were not, first: {:?}",
        N_CONNECTIONS * REQUESTS_EACH,
        failures.len(),
        first_few(&failures)
    );
}

#[test]
fn a_thousand_idle_keep_alive_connections_do_not_keep_a_new_client_waiting() {
    const N_PAIRS: usize = 500;
    assert_enough_file_descriptors(4_096);
    // A long header timeout keeps every idle connection open for the whole test, so a server that
    // tied a worker to each connection would keep the new client waiting far beyond the limit.
    let server = Server::start_with(&["--header-timeout-ms", "60000"]);

    let mut served_once = Vec::with_capacity(N_PAIRS);
    let mut never_spoke = Vec::with_capacity(N_PAIRS);
    for i in 0..N_PAIRS {
        let mut conn = Conn::open(server.addr)
            .unwrap_or_else(|e| panic!("expected to open connection {i}: {e}"));
        let response = conn
            .get_health()
            .unwrap_or_else(|e| panic!("expected GET /health on connection {i}: {e}"));
        assert_eq!(
            response.status, 200,
            "expected GET /health on connection {i} to answer 200"
        );
        served_once.push(conn);
        never_spoke.push(
            open_stream(server.addr)
                .unwrap_or_else(|e| panic!("expected to open silent connection {i}: {e}")),
        );
    }

    assert_a_fresh_client_is_served(server.addr, "while 1,000 keep-alive connections sit idle");
    drop(served_once);
    drop(never_spoke);
}

#[test]
fn half_sent_request_heads_do_not_block_other_clients() {
    const N_HALF: usize = 200;
    assert_enough_file_descriptors(4 * N_HALF as u64);
    // With a long header timeout the half heads hang for the whole test.
    let server = Server::start_with(&["--header-timeout-ms", "60000"]);
    let half_open: Vec<TcpStream> = (0..N_HALF)
        .map(|i| {
            open_and_send(server.addr, HALF_HEAD)
                .unwrap_or_else(|e| panic!("expected to send half a head on connection {i}: {e}"))
                .0
        })
        .collect();

    assert_a_fresh_client_is_served(
        server.addr,
        "while 200 connections hang on half a request head",
    );
    drop(half_open);
}

#[test]
fn a_half_sent_request_head_is_closed_after_the_header_timeout() {
    const N_HALF: usize = 200;
    const NOT_BEFORE: Duration = Duration::from_millis(500);
    const CLOSE_LIMIT: Duration = Duration::from_secs(15);
    assert_enough_file_descriptors(4 * N_HALF as u64);
    let server = Server::start_with(&["--header-timeout-ms", "1000"]);
    let addr = server.addr;
    let (sent_tx, sent_rx) = mpsc::channel::<()>();

    // One thread per connection, each reading as soon as it has sent, so each one's closing time
    // is seen as it happens.
    let endings: Vec<Result<Ending, String>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..N_HALF)
            .map(|_| {
                let sent_tx = sent_tx.clone();
                scope.spawn(move || {
                    let sent = open_and_send(addr, HALF_HEAD);
                    let _ = sent_tx.send(());
                    match sent {
                        Ok((mut stream, at)) => Ok(wait_for_close(&mut stream, at, CLOSE_LIMIT)),
                        Err(e) => Err(format!("could not send half a head: {e}")),
                    }
                })
            })
            .collect();
        for _ in 0..N_HALF {
            // Every thread reports once, whether or not its connection worked.
            sent_rx
                .recv_timeout(READ_LIMIT)
                .expect("expected every half head sent within 20 s");
        }
        let mut normal = Client::connect(addr);
        let health = normal.get("/health");
        assert_eq!(
            health.status, 200,
            "expected a normal client to be served while half heads hang"
        );
        handles
            .into_iter()
            .map(|h| h.join().expect("half-head thread panicked"))
            .collect()
    });

    let failures: Vec<String> = endings
        .iter()
        .enumerate()
        .filter_map(|(i, ending)| match ending {
            Ok(Ending::Closed { after, bytes })
                if *after >= NOT_BEFORE && is_nothing_or_client_error(bytes) =>
            {
                None
            }
            Ok(other) => Some(format!("connection {i}: {}", describe(other))),
            Err(setup) => Some(format!("connection {i}: {setup}")),
        })
        .collect();
    assert!(
        failures.is_empty(),
        "expected every half-head connection closed by the server between {NOT_BEFORE:?} and {CLOSE_LIMIT:?} \
         after it stalled (with nothing or a 4xx sent); {} were not, first: {:?}",
        failures.len(),
        first_few(&failures)
    );
}

#[test]
fn a_request_body_that_never_arrives_does_not_block_other_clients() {
    const N_STALLED: usize = 16;
    // Default timeouts: the stalled bodies stay stalled for the whole test.
    let server = Server::start();
    let stalled: Vec<TcpStream> = (0..N_STALLED)
        .map(|i| {
            open_and_send(server.addr, STALLED_BODY)
                .unwrap_or_else(|e| {
                    panic!("expected to send a stalled body on connection {i}: {e}")
                })
                .0
        })
        .collect();

    assert_a_fresh_client_is_served(server.addr, "while 16 request bodies never arrive");
    // Writes that go through the engine are not held up either.
    let (done, outcome) = mpsc::channel();
    let addr = server.addr;
    thread::spawn(move || {
        let mut client = Client::connect(addr);
        install_workflow(&mut client);
        let _ = done.send(create_run(&mut client));
    });
    let run_id = outcome.recv_timeout(FRESH_CLIENT_LIMIT);
    assert!(
        run_id.is_ok(),
        "expected a client to install a workflow and create a run within {FRESH_CLIENT_LIMIT:?} \
         while bodies stall ({run_id:?})"
    );
    drop(stalled);
}

#[test]
fn a_request_body_that_never_arrives_is_given_up_after_the_request_timeout() {
    const N_STALLED: usize = 16;
    const GIVE_UP_LIMIT: Duration = Duration::from_secs(20);
    let server = Server::start_with(&[
        "--header-timeout-ms",
        "1000",
        "--request-timeout-ms",
        "2000",
    ]);
    let mut stalled: Vec<(TcpStream, Instant)> = (0..N_STALLED)
        .map(|i| {
            open_and_send(server.addr, STALLED_BODY).unwrap_or_else(|e| {
                panic!("expected to send a stalled body on connection {i}: {e}")
            })
        })
        .collect();

    let failures: Vec<String> = stalled
        .iter_mut()
        .enumerate()
        .filter_map(
            |(i, (stream, at))| match wait_for_close(stream, *at, GIVE_UP_LIMIT) {
                Ending::Closed { bytes, .. } if is_nothing_or_client_error(&bytes) => None,
                Ending::StillOpen { bytes } if bytes.starts_with(b"HTTP/1.1 4") => None,
                other => Some(format!("connection {i}: {}", describe(&other))),
            },
        )
        .collect();
    assert!(
        failures.is_empty(),
        "expected every stalled body to be answered with a 4xx (408: the client is at fault, and no \
         input may cause a 5xx) or closed within {GIVE_UP_LIMIT:?}; {} were not, first: {:?}",
        failures.len(),
        first_few(&failures)
    );
}

#[test]
fn a_write_answered_503_timeout_before_it_ran_is_never_made() {
    let server = Server::start_with(&["--request-timeout-ms", "2000"]);
    let mut client = server.client();
    install_workflow(&mut client);
    // The first run also makes the agent's token, which is a write too.
    let first = create_run(&mut client);
    // Another process holds the write lock, so the writer's next transaction waits for it
    // (up to its 5 s busy timeout) while the request's deadline passes.
    let blocker = rusqlite::Connection::open(&server.db).expect("open the database");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("take the write lock");
    let timed_out = client.post("/workflows/runs", &crate::races::new_run_body());
    assert_eq!(timed_out.status, 503, "{}", timed_out.json());
    assert_eq!(timed_out.json()["error"]["code"], "timeout");
    blocker.execute_batch("COMMIT").expect("let go");
    // A write after it is answered only once the writer has passed the abandoned one.
    let kept = create_run(&mut client);
    let listed = client.get("/workflows/runs").json();
    let runs: Vec<&str> = listed["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .filter_map(|r| r["run_id"].as_str())
        .collect();
    assert_eq!(
        runs,
        vec![first.as_str(), kept.as_str()],
        "the request answered 503 made no run: {listed}"
    );
}
