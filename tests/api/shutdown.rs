//! Stopping and restarting `fedcore serve` (contract §1, §8). SIGTERM and SIGINT end the server
//! cleanly with exit status 0; every write that was acknowledged, even just before a `kill -9`, is
//! there after a restart, with the audit chain unbroken. A file that is not a fedcore database is
//! refused with a message naming it and is left byte for byte as it was; an existing fedcore
//! database is reopened, never recreated.

use crate::races::{
    assert_audit_chain_is_linked, audit_entries, create_run, created_run_ids, expect_status,
    get_run, install_workflow, list_run_ids, new_run_body, run_id_of, send_once, WORKFLOW_ID,
};
use crate::support::{bin, Client, Server, TempDir};
use std::collections::BTreeSet;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a signalled server may take to exit before the test fails (instead of hanging).
const EXIT_LIMIT: Duration = Duration::from_secs(30);

/// Sends `kill -SIGNAL` to the server, waits (at most `EXIT_LIMIT`) until the process has exited,
/// then reaps it and returns its exit code (None when a signal killed it).
///
/// `Server::terminate` alone would wait forever on a server that ignores the signal, and could
/// only send SIGTERM; here the process is only reaped once it is seen to have exited.
pub(crate) fn stop_with_signal(server: &mut Server, signal: &str) -> Option<i32> {
    let pid = server.pid();
    let sent = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .status();
    assert!(
        sent.is_ok_and(|s| s.success()),
        "expected `kill -{signal} {pid}` to succeed"
    );
    let deadline = Instant::now() + EXIT_LIMIT;
    while !has_exited(pid) {
        assert!(
            Instant::now() < deadline,
            "expected fedcore serve to exit within {EXIT_LIMIT:?} of SIG{signal}"
        );
        thread::sleep(Duration::from_millis(20));
    }
    // The process is a zombie now: the SIGTERM that `terminate` sends has no effect, it only reaps.
    server.terminate()
}

/// True once process `pid` has exited (it is a zombie awaiting its parent's wait, or gone).
fn has_exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state letter follows the parenthesised command name, which may itself hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state == "Z" || state == "X"),
        Err(_) => true,
    }
}

/// What one writer thread saw while creating runs until the server went away.
struct WriterLog {
    acknowledged: Vec<String>,
    other_statuses: Vec<u16>,
}

/// Creates runs on one keep-alive connection until the connection fails (the server stopped) or a
/// generous deadline passes, or `give_up` is set. Counts acknowledged runs in `n_acknowledged`.
fn create_runs_until_the_server_stops(
    addr: SocketAddr,
    n_acknowledged: &AtomicUsize,
    give_up: &AtomicBool,
) -> WriterLog {
    let mut log = WriterLog {
        acknowledged: Vec::new(),
        other_statuses: Vec::new(),
    };
    let mut client = Client::connect(addr);
    let deadline = Instant::now() + Duration::from_secs(90);
    for _ in 0..100_000 {
        if Instant::now() > deadline || give_up.load(Ordering::SeqCst) {
            break;
        }
        match send_once(&mut client, "POST", "/workflows/runs", &new_run_body()) {
            Ok(response) if response.status == 201 => {
                log.acknowledged.push(run_id_of(&response));
                n_acknowledged.fetch_add(1, Ordering::SeqCst);
            }
            Ok(response) => log.other_statuses.push(response.status),
            Err(_) => break,
        }
    }
    log
}

/// Sets its flag when dropped, also while unwinding from a failed assertion.
struct SetOnDrop<'a>(&'a AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Waits (bounded) until `condition` holds.
fn wait_until(what: &str, limit: Duration, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !condition() {
        assert!(
            Instant::now() < deadline,
            "expected {what} within {limit:?}"
        );
        thread::sleep(Duration::from_millis(10));
    }
}

/// Checks, over HTTP, everything a restarted server must still hold: each acknowledged run, an
/// unbroken audit chain, and exactly one `run.created` entry for each stored run (no half-written
/// run, no entry without its run).
fn assert_restart_kept(server: &Server, acknowledged: &[String]) {
    let mut client = server.client();
    for run_id in acknowledged {
        let run = get_run(&mut client, run_id);
        assert_eq!(
            run["run_id"],
            run_id.as_str(),
            "expected the stored run to carry its own id"
        );
    }
    let entries = audit_entries(&mut client);
    assert_audit_chain_is_linked(&entries);
    let listed: BTreeSet<String> = list_run_ids(&mut client, WORKFLOW_ID).into_iter().collect();
    assert_eq!(
        created_run_ids(&entries),
        listed,
        "expected exactly one run.created entry per stored run"
    );
    let acknowledged: BTreeSet<String> = acknowledged.iter().cloned().collect();
    assert!(
        acknowledged.is_subset(&listed),
        "expected every acknowledged run to be listed"
    );
}

fn health_schema_version(client: &mut Client) -> u64 {
    let health = client.get("/health");
    expect_status(&health, 200, "GET /health");
    let body = health.json();
    body["schema_version"]
        .as_u64()
        .unwrap_or_else(|| panic!("expected an integer schema_version in {body}"))
}

#[test]
fn sigterm_during_a_stream_of_writes_exits_zero_and_keeps_every_acknowledged_run() {
    let dir = TempDir::new();
    let db = dir.path().join("fedcore.db");
    let mut server = Server::start_on(&db, &[]);
    install_workflow(&mut server.client());
    let addr = server.addr;
    let n_acknowledged = AtomicUsize::new(0);
    let give_up = AtomicBool::new(false);

    let (exit, logs) = thread::scope(|scope| {
        let writers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| create_runs_until_the_server_stops(addr, &n_acknowledged, &give_up))
            })
            .collect();
        // Should an assertion below fail, the writers stop at once instead of at their deadline.
        let _release_writers = SetOnDrop(&give_up);
        wait_until(
            "the writers to get 8 runs acknowledged",
            Duration::from_secs(30),
            || n_acknowledged.load(Ordering::SeqCst) >= 8,
        );
        thread::sleep(Duration::from_millis(300));
        let exit = stop_with_signal(&mut server, "TERM");
        let logs: Vec<WriterLog> = writers
            .into_iter()
            .map(|w| w.join().expect("writer thread"))
            .collect();
        (exit, logs)
    });

    assert_eq!(
        exit,
        Some(0),
        "expected fedcore serve to exit with status 0 on SIGTERM"
    );
    let other_statuses: Vec<u16> = logs
        .iter()
        .flat_map(|l| l.other_statuses.iter().copied())
        .collect();
    assert!(
        other_statuses.iter().all(|&s| s == 503),
        "expected every answer other than 201 to be 503 busy while shutting down, got {other_statuses:?}"
    );
    let acknowledged: Vec<String> = logs.into_iter().flat_map(|l| l.acknowledged).collect();
    assert!(
        acknowledged.len() >= 8,
        "expected at least 8 acknowledged runs"
    );

    let restarted = Server::start_on(&db, &[]);
    assert_restart_kept(&restarted, &acknowledged);
}

#[test]
fn sigint_stops_an_idle_server_with_exit_status_zero() {
    let mut server = Server::start();
    expect_status(
        &server.client().get("/health"),
        200,
        "GET /health before SIGINT",
    );
    assert_eq!(
        stop_with_signal(&mut server, "INT"),
        Some(0),
        "expected exit status 0 on SIGINT"
    );
}

#[test]
fn runs_acknowledged_before_a_kill_9_survive_a_restart() {
    let dir = TempDir::new();
    let db = dir.path().join("fedcore.db");
    let mut server = Server::start_on(&db, &[]);
    let mut client = server.client();
    install_workflow(&mut client);
    let acknowledged: Vec<String> = (0..20).map(|_| create_run(&mut client)).collect();
    server.kill9();

    let restarted = Server::start_on(&db, &[]);
    assert_restart_kept(&restarted, &acknowledged);
    let listed = list_run_ids(&mut restarted.client(), WORKFLOW_ID);
    assert_eq!(
        listed.len(),
        20,
        "expected exactly the 20 acknowledged runs after kill -9"
    );
}

/// Runs `fedcore serve` over `db`, expecting it to refuse and exit (bounded); returns its exit
/// code and stderr. A server that starts instead is killed and fails the test.
fn serve_expecting_refusal(db: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(bin())
        .arg("serve")
        .arg("--db")
        .arg(db)
        .args(["--listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fedcore serve");
    let mut stderr_pipe = child.stderr.take().expect("stderr");
    let stderr_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + EXIT_LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let stderr = stderr_reader.join().unwrap_or_default();
            panic!(
                "expected serve to refuse {} and exit, but it kept running; stderr:\n{stderr}",
                db.display()
            );
        }
        thread::sleep(Duration::from_millis(20));
    };
    (status.code(), stderr_reader.join().expect("stderr reader"))
}

/// The names of the entries of `dir`, sorted.
fn dir_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read temp dir")
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// Serve must refuse `file`, name it on stderr, and leave it (and its directory) as they were.
pub(crate) fn assert_refused_and_untouched(file: &Path) {
    let dir = file.parent().expect("file has a parent");
    let bytes_before = std::fs::read(file).expect("read file before");
    let listing_before = dir_listing(dir);

    let (code, stderr) = serve_expecting_refusal(file);

    assert!(
        matches!(code, Some(c) if c != 0),
        "expected a non-zero exit status, got {code:?}; stderr:\n{stderr}"
    );
    let file_name = file
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned();
    assert!(
        stderr.contains(&file_name),
        "expected stderr to name the refused file {file_name}, got:\n{stderr}"
    );
    assert!(
        !stderr.contains("listening on"),
        "expected serve not to start listening, got:\n{stderr}"
    );
    assert_eq!(
        std::fs::read(file).expect("read file after"),
        bytes_before,
        "expected the refused file's bytes to be unchanged"
    );
    assert_eq!(
        dir_listing(dir),
        listing_before,
        "expected no file to be created or removed beside the refused one"
    );
}

#[test]
fn a_file_that_is_not_a_database_is_refused_and_left_untouched() {
    let dir = TempDir::new();
    let file = dir.path().join("notes-not-a-db.txt");
    std::fs::write(&file, b"hello, not a database").expect("write file");
    assert_refused_and_untouched(&file);
}

#[test]
fn a_sqlite_database_of_another_program_is_refused_and_left_untouched() {
    let dir = TempDir::new();
    let file = dir.path().join("someone-elses.db");
    {
        let conn = rusqlite::Connection::open(&file).expect("create foreign database");
        conn.execute_batch("CREATE TABLE t(x); INSERT INTO t(x) VALUES ('theirs');")
            .expect("create table t");
    }
    assert_refused_and_untouched(&file);
}

#[test]
fn an_existing_database_is_reopened_not_recreated() {
    let dir = TempDir::new();
    let db = dir.path().join("fedcore.db");
    let mut server = Server::start_on(&db, &[]);
    let mut client = server.client();
    install_workflow(&mut client);
    let run_id = create_run(&mut client);
    let run_before = get_run(&mut client, &run_id);
    let schema_before = health_schema_version(&mut client);
    let entries_before = audit_entries(&mut client);
    drop(client);
    assert_eq!(
        stop_with_signal(&mut server, "TERM"),
        Some(0),
        "expected a clean stop before reopening"
    );

    let restarted = Server::start_on(&db, &[]);
    let mut client = restarted.client();
    assert_eq!(
        health_schema_version(&mut client),
        schema_before,
        "expected the same schema_version after reopening"
    );
    let run_after = get_run(&mut client, &run_id);
    for field in [
        "run_id",
        "created_at",
        "genesis_hash",
        "input_hash",
        "status",
    ] {
        assert_eq!(
            run_after[field], run_before[field],
            "expected the reopened run's {field} to be unchanged"
        );
    }
    assert_eq!(
        audit_entries(&mut client),
        entries_before,
        "expected the audit log to be unchanged by reopening"
    );

    // The reopened database keeps extending the same chain.
    create_run(&mut client);
    let entries_after = audit_entries(&mut client);
    assert!(
        entries_after.len() > entries_before.len(),
        "expected a new run to add audit entries"
    );
    assert_audit_chain_is_linked(&entries_after);
}
