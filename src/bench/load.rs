//! `fedcore bench load`: starts `fedcore serve` as a child process on a throwaway database and
//! drives it over keep-alive HTTP from N client threads, the way agents would use it.
//!
//! Each round has two phases of the same length, run by the same client threads:
//! - **ceiling**: every thread loops `POST /bench/ceiling`, one authenticated row insert through
//!   the same writer, group commit and fsync: the most write requests this server, client and
//!   machine can answer;
//! - **workflows**: every thread runs whole governed workflows one after another: create a run,
//!   then five steps (observe, decide, gate, act, transform), each requested (policy-checked) and
//!   completed. One run in 10 is flagged at `decide` (an approver approves the gate, an admin
//!   resumes the run); one in 20 is denied there and fails closed. Every answer is checked: a
//!   wrong status or a wrong decision counts as an error.
//!
//! Only requests that start and end inside the measured window (after a warm-up) count. The
//! report gives medians over the rounds, the server's peak RSS (VmHWM), the database's bytes per
//! workflow by table, the CPU time per request of the server, its writer thread and the client
//! in each phase's window (Linux), and, unless skipped, `fedcore verify` over the database the
//! run produced.

use super::client::{request, string_field, Conn};
use super::seed::Shape;
use crate::engine::verify;
use crate::store::{self, Durability};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadOptions {
    pub conns: usize,
    pub seconds: f64,
    pub warmup: f64,
    pub rounds: usize,
    pub durability: Durability,
    /// Keep the database in this folder (created) instead of a temporary one removed at the end.
    pub keep: Option<PathBuf>,
    /// Run against this existing database (kept) instead of a new one: to measure the cost of a
    /// request on a large database (`fedcore bench seed` builds one).
    pub db: Option<PathBuf>,
    pub verify: bool,
}

impl Default for LoadOptions {
    fn default() -> LoadOptions {
        LoadOptions {
            conns: 32,
            seconds: 10.0,
            warmup: 2.0,
            rounds: 3,
            durability: Durability::Full,
            keep: None,
            db: None,
            verify: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the server did not start: {0}")]
    Server(String),
    #[error("setting up the workload failed: {0}")]
    Setup(String),
    #[error(transparent)]
    Store(#[from] store::StoreError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LoadError {
    let what = what.into();
    move |source| LoadError::Io { what, source }
}

/// One round's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    /// Workflows that ended inside the window (completed or denied), per second.
    pub workflows_per_s: f64,
    /// Step requests (`POST …/steps` and `PATCH …/steps/{id}`) answered inside the window, per s.
    pub step_requests_per_s: f64,
    /// Every request of the workflow phase, per second.
    pub requests_per_s: f64,
    pub step_p50_ms: f64,
    pub step_p99_ms: f64,
    pub step_max_ms: f64,
    pub ceiling_requests_per_s: f64,
    pub ceiling_p50_ms: f64,
    pub ceiling_p99_ms: f64,
    /// `step_requests_per_s / ceiling_requests_per_s`.
    pub ratio_to_ceiling: f64,
    pub workflows_completed: u64,
    pub workflows_denied: u64,
    pub workflows_flagged: u64,
    pub errors: u64,
    pub connections_opened: u64,
    pub connections_unserved: u64,
    /// Bytes the server passed to write() during the workflow phase (WAL frames, checkpoints, its
    /// log lines and its HTTP responses), per run started in it, when the platform tells (Linux:
    /// `wchar` in /proc/PID/io).
    pub server_written_bytes_per_workflow: Option<f64>,
    /// CPU time per request answered in the ceiling phase's window, when the platform tells.
    pub ceiling_cpu: Option<CpuPerRequest>,
    /// CPU time per request answered in the workflow phase's window (every request of the mix,
    /// not only the step requests), when the platform tells.
    pub workflow_cpu: Option<CpuPerRequest>,
}

/// CPU time (user + system) used during a phase's window, per request answered in it, in µs:
/// by the whole server process, by its writer thread alone (the one thread every write waits
/// for), and by this client process. Linux only (`/proc`), at the clock tick's 10 ms grain, so
/// figures from windows of a few seconds are rough. The divisor is the requests the phase
/// counts (answered as expected, started and ended inside the window): CPU spent on errors and
/// on requests across the window's edges is in the numerator only.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct CpuPerRequest {
    pub server_us: f64,
    pub writer_us: f64,
    pub client_us: f64,
}

/// CPU seconds used so far by the server, its writer thread and this client process.
#[derive(Debug, Clone, Copy)]
struct CpuTimes {
    server: f64,
    writer: f64,
    client: f64,
}

impl CpuTimes {
    /// What was used between `self` and `later`, per request of `requests`.
    fn per_request(self, later: CpuTimes, requests: usize) -> Option<CpuPerRequest> {
        let n = requests as f64;
        (requests > 0).then(|| CpuPerRequest {
            server_us: (later.server - self.server) * 1e6 / n,
            writer_us: (later.writer - self.writer) * 1e6 / n,
            client_us: (later.client - self.client) * 1e6 / n,
        })
    }
}

/// Clock ticks per second of `/proc/*/stat`'s times: USER_HZ, which Linux fixes at 100 for
/// userspace on every architecture but Alpha (1024).
const TICKS_PER_SECOND: f64 = 100.0;

/// User plus system CPU seconds of the process or thread whose `/proc/…/stat` line is `stat`.
fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name, in parentheses, may itself hold spaces and parentheses: the fields
    // start after the last ')'. utime and stime are the 14th and 15th fields of the line, the
    // 12th and 13th after the name (the state is the first).
    let fields: Vec<&str> = stat
        .get(stat.rfind(')')? + 1..)?
        .split_whitespace()
        .collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Bytes a table (with its indexes) holds per workflow.
#[derive(Debug, Clone, Serialize)]
pub struct TableBytes {
    pub table: String,
    pub bytes: u64,
    pub bytes_per_workflow: f64,
}

/// The whole run's report.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    pub conns: usize,
    pub seconds: f64,
    pub durability: &'static str,
    pub cpus: usize,
    pub rounds: Vec<Round>,
    /// Whether the ceiling was measured (not on a database of the user's own, `--db`).
    pub ceiling_measured: bool,
    /// Medians over the rounds.
    pub workflows_per_s: f64,
    pub step_requests_per_s: f64,
    pub ceiling_requests_per_s: f64,
    pub ratio_to_ceiling: f64,
    pub step_p50_ms: f64,
    pub step_p99_ms: f64,
    /// The largest step latency of any round.
    pub step_max_ms: f64,
    /// Totals over the rounds.
    pub errors: u64,
    pub connections_unserved: u64,
    pub error_samples: Vec<String>,
    /// The server process's peak resident set (VmHWM), when the platform tells.
    pub server_peak_rss_bytes: Option<u64>,
    /// Runs this benchmark added (every workflow started, warm-ups and cut-off ones included),
    /// and their audit entries; on a fresh database, all it holds.
    pub runs: u64,
    pub audit_entries: u64,
    /// The database's bytes (every table and index but the ceiling's) per run, and by table.
    pub db_bytes_per_workflow: f64,
    pub db_tables: Vec<TableBytes>,
    /// Median over the rounds of the server's write() bytes per workflow (see `Round`).
    pub server_written_bytes_per_workflow: Option<f64>,
    /// Medians over the rounds of the CPU per request of each phase (see `Round`).
    pub ceiling_cpu: Option<CpuPerRequest>,
    pub workflow_cpu: Option<CpuPerRequest>,
    /// `fedcore verify` over the database afterwards: intact, and how long it took.
    pub verified: Option<bool>,
    pub verify_seconds: Option<f64>,
    pub db_path: Option<PathBuf>,
}

/// Runs the benchmark.
pub fn run(options: &LoadOptions) -> Result<LoadReport, LoadError> {
    if let Some(db) = &options.db {
        if !db.is_file() {
            return Err(LoadError::Setup(format!(
                "{} is not a database file",
                db.display()
            )));
        }
        // The server's log goes to a temporary folder, not beside the user's database.
        let logs = std::env::temp_dir().join(format!("fedcore-bench-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&logs).map_err(io(format!("create {}", logs.display())))?;
        let result = run_in(&logs, db, options);
        let _ = std::fs::remove_dir_all(&logs);
        let mut report = result?;
        report.db_path = Some(db.clone());
        return Ok(report);
    }
    let (dir, temporary) = match &options.keep {
        Some(dir) => (dir.clone(), false),
        None => (
            std::env::temp_dir().join(format!("fedcore-bench-{}", uuid::Uuid::now_v7())),
            true,
        ),
    };
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let db = dir.join("bench.db");
    let result = run_in(&dir, &db, options);
    if temporary {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let mut report = result?;
    report.db_path = (!temporary).then_some(db);
    Ok(report)
}

fn run_in(dir: &Path, db: &Path, options: &LoadOptions) -> Result<LoadReport, LoadError> {
    // An existing database has had tokens, so serve writes no admin token file: make one.
    let admin = match options.db {
        Some(_) => Some(admin_token(db)?),
        None => None,
    };
    // On a database of the user's own, no ceiling (its table would stay in the file), and the
    // sizes reported are what this run added.
    let ceiling = options.db.is_none();
    let before = match options.db {
        Some(_) => Some(store::bench::sizes(db)?),
        None => None,
    };
    let mut server = Server::start(dir, db, options.durability, ceiling)?;
    let workload = Workload::set_up(&server, admin)?;
    let mut rounds = Vec::new();
    let mut error_samples = Vec::new();
    // Run numbers go on across rounds, so the mix holds over the whole database.
    let next_run = AtomicU64::new(1);
    for _ in 0..options.rounds {
        let probe = || server.cpu_times();
        let (ceiling, ceiling_cpu) = match ceiling {
            true => drive(server.addr, options, &next_run, probe, |w| {
                w.ceiling(&workload)
            }),
            false => (Tally::default(), None),
        };
        let (written, started) = (server.written(), next_run.load(Ordering::Relaxed));
        let (flows, workflow_cpu) = drive(server.addr, options, &next_run, probe, |w| {
            w.workflows(&workload)
        });
        let runs_started = next_run.load(Ordering::Relaxed) - started;
        let written = server.written().zip(written).map(|(after, before)| {
            after.saturating_sub(before) as f64 / runs_started.max(1) as f64
        });
        for sample in ceiling.error_samples.iter().chain(&flows.error_samples) {
            if error_samples.len() < 10 {
                error_samples.push(sample.clone());
            }
        }
        let per_request = |cpu: Option<(CpuTimes, CpuTimes)>, requests: usize| {
            cpu.and_then(|(before, after)| before.per_request(after, requests))
        };
        rounds.push(Round {
            server_written_bytes_per_workflow: written,
            ceiling_cpu: per_request(ceiling_cpu, ceiling.ceiling_us.len()),
            workflow_cpu: per_request(workflow_cpu, flows.step_us.len() + flows.other_us.len()),
            ..Round::of(&ceiling, &flows, options.seconds)
        });
    }
    let peak_rss = server.peak_rss();
    server.stop()?;
    let sizes = store::bench::sizes(db)?.minus(before.as_ref());
    let (runs, audit_entries) = (sizes.runs, sizes.audit_entries);
    let total: u64 = sizes.tables.iter().map(|(_, bytes)| bytes).sum();
    let db_tables = sizes
        .tables
        .into_iter()
        .map(|(table, bytes)| TableBytes {
            table,
            bytes,
            bytes_per_workflow: bytes as f64 / runs.max(1) as f64,
        })
        .collect();
    let (verified, verify_seconds) = match options.verify {
        true => {
            let started = Instant::now();
            let reader = store::open_read_only(db)?;
            let report = reader.snapshot(|r| verify::verify(r, &verify::Options::default()))??;
            (
                Some(report.is_intact()),
                Some(started.elapsed().as_secs_f64()),
            )
        }
        false => (None, None),
    };
    let med = |f: fn(&Round) -> f64| median(rounds.iter().map(f).collect());
    Ok(LoadReport {
        conns: options.conns,
        seconds: options.seconds,
        durability: match options.durability {
            Durability::Full => "full",
            Durability::Normal => "normal",
        },
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        ceiling_measured: ceiling,
        workflows_per_s: med(|r| r.workflows_per_s),
        step_requests_per_s: med(|r| r.step_requests_per_s),
        ceiling_requests_per_s: med(|r| r.ceiling_requests_per_s),
        ratio_to_ceiling: med(|r| r.ratio_to_ceiling),
        step_p50_ms: med(|r| r.step_p50_ms),
        step_p99_ms: med(|r| r.step_p99_ms),
        step_max_ms: rounds.iter().map(|r| r.step_max_ms).fold(0.0, f64::max),
        errors: rounds.iter().map(|r| r.errors).sum(),
        connections_unserved: rounds.iter().map(|r| r.connections_unserved).sum(),
        error_samples,
        server_peak_rss_bytes: peak_rss,
        runs,
        audit_entries,
        db_bytes_per_workflow: total as f64 / runs.max(1) as f64,
        db_tables,
        server_written_bytes_per_workflow: rounds
            .iter()
            .map(|r| r.server_written_bytes_per_workflow)
            .collect::<Option<Vec<f64>>>()
            .map(median),
        ceiling_cpu: median_cpu(rounds.iter().map(|r| r.ceiling_cpu)),
        workflow_cpu: median_cpu(rounds.iter().map(|r| r.workflow_cpu)),
        verified,
        verify_seconds,
        db_path: None,
        rounds,
    })
}

/// The `fedcore serve` child process.
struct Server {
    child: Child,
    addr: SocketAddr,
    db: PathBuf,
}

impl Server {
    /// Starts `fedcore serve --bench-ceiling` on a free loopback port, its log in `dir`, and
    /// waits for it to announce its address.
    fn start(
        dir: &Path,
        db: &Path,
        durability: Durability,
        ceiling: bool,
    ) -> Result<Server, LoadError> {
        let exe = std::env::current_exe().map_err(io("find the fedcore executable"))?;
        let log_path = dir.join("server.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("create {}", log_path.display())))?;
        let durability = match durability {
            Durability::Full => "full",
            Durability::Normal => "normal",
        };
        let child = Command::new(exe)
            .arg("serve")
            .arg("--db")
            .arg(db)
            .args(["--listen", "127.0.0.1:0"])
            .args(ceiling.then_some("--bench-ceiling"))
            .args(["--durability", durability])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io("start fedcore serve"))?;
        let mut server = Server {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            db: db.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            if let Some(addr) = text
                .lines()
                .find_map(|l| l.split_once("listening on http://"))
                .and_then(|(_, addr)| addr.trim().parse().ok())
            {
                server.addr = addr;
                return Ok(server);
            }
            let exited = server.child.try_wait().map_err(io("watch fedcore serve"))?;
            if exited.is_some() || Instant::now() > deadline {
                return Err(LoadError::Server(text));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The peak resident set of the server so far (Linux: VmHWM in /proc).
    fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    }

    /// CPU seconds the server, its writer thread and this client have used so far (Linux).
    fn cpu_times(&self) -> Option<CpuTimes> {
        let proc = PathBuf::from(format!("/proc/{}", self.child.id()));
        let read = |path: &Path| std::fs::read_to_string(path).ok();
        let server = cpu_seconds(&read(&proc.join("stat"))?)?;
        let writer = std::fs::read_dir(proc.join("task"))
            .ok()?
            .filter_map(Result::ok)
            .find(|task| read(&task.path().join("comm")).as_deref() == Some("fedcore-writer\n"))
            .and_then(|task| cpu_seconds(&read(&task.path().join("stat"))?))?;
        let client = cpu_seconds(&read(Path::new("/proc/self/stat"))?)?;
        Some(CpuTimes {
            server,
            writer,
            client,
        })
    }

    /// Bytes the server has passed to write() so far (Linux: `wchar` in /proc/PID/io).
    fn written(&self) -> Option<u64> {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.child.id())).ok()?;
        let line = io.lines().find(|l| l.starts_with("wchar:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// Stops the server as an operator would (SIGTERM: drain, checkpoint, fold the WAL in).
    fn stop(&mut self) -> Result<(), LoadError> {
        let asked = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        if !asked {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return Err(LoadError::Server(
                "could not send it SIGTERM (is `kill` installed?); it was killed without its \
                 last checkpoint"
                    .into(),
            ));
        }
        let status = self.child.wait().map_err(io("wait for fedcore serve"))?;
        match status.success() {
            true => Ok(()),
            false => Err(LoadError::Server(format!("it stopped with {status}"))),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Creates an admin token for the benchmark on `db` as `fedcore token create` does.
fn admin_token(db: &Path) -> Result<String, LoadError> {
    let done = crate::admin::run(&crate::cli::TokenArgs {
        db: db.to_path_buf(),
        key: None,
        command: crate::cli::TokenCommand::Create {
            name: "bench-admin".to_string(),
            role: crate::model::Role::Admin,
        },
    });
    match done.exit {
        0 => Ok(done.stdout.trim().to_string()),
        _ => Err(LoadError::Setup(done.stderr)),
    }
}

/// Names of the workload's objects in the benchmark database.
const AGENT: &str = "bench-agent";
const APPROVER: &str = "bench-approver";
const WORKFLOW: &str = "bench_5step";
const STEPS: [&str; 5] = ["observe", "decide", "gate", "act", "transform"];
/// The step at which the flagged and denied runs are decided.
const DECIDING_STEP: &str = "decide";

/// The tokens and the prepared requests that do not depend on a run.
struct Workload {
    admin: String,
    agent: String,
    approver: String,
    ceiling: Vec<u8>,
}

impl Workload {
    /// Creates the tokens, registers the agent, the policy (the README's Test B policy) and the
    /// five-step definition.
    fn set_up(server: &Server, admin: Option<String>) -> Result<Workload, LoadError> {
        let admin = match admin {
            Some(token) => token,
            None => {
                let token_file = crate::http::admin_token_path(&server.db);
                std::fs::read_to_string(&token_file)
                    .map_err(io(format!("read {}", token_file.display())))?
                    .trim()
                    .to_string()
            }
        };
        let mut conn = Conn::new(server.addr);
        let mut call = |method: &str, path: &str, body: &str, expect: u16| {
            let (status, answer) = conn
                .call(&request(method, path, &admin, body))
                .map_err(|e| LoadError::Setup(format!("{method} {path}: {e}")))?;
            // A first PUT creates (201); the setup only needs the write to have happened.
            match status == expect || (method == "PUT" && status == 201) {
                true => Ok(answer.to_vec()),
                false => Err(LoadError::Setup(format!(
                    "{method} {path}: {status} {}",
                    String::from_utf8_lossy(answer)
                ))),
            }
        };
        let mut token = |name: &str, role: &str| {
            let body = format!(r#"{{"name":"{name}","role":"{role}"}}"#);
            let answer = call("POST", "/tokens", &body, 201)?;
            string_field(&answer, "token")
                .map(str::to_string)
                .ok_or_else(|| LoadError::Setup("POST /tokens answered no token".into()))
        };
        let agent = token(AGENT, "agent")?;
        let approver = token(APPROVER, "approver")?;
        call(
            "PUT",
            &format!("/registry/agents/{AGENT}"),
            r#"{"status":"active","capabilities":["observe","deploy"],"tier":"T2"}"#,
            200,
        )?;
        call(
            "PUT",
            "/policies/bench_policy",
            &super::seed::policy_document().to_string(),
            200,
        )?;
        let steps: Vec<String> = STEPS
            .iter()
            .map(|s| format!(r#"{{"step_id":"{s}","step_type":"{}"}}"#, s.to_uppercase()))
            .collect();
        call(
            "PUT",
            &format!("/workflows/definitions/{WORKFLOW}"),
            &format!(
                r#"{{"policy_id":"bench_policy","steps":[{}]}}"#,
                steps.join(",")
            ),
            200,
        )?;
        let ceiling = request("POST", "/bench/ceiling", &agent, "");
        Ok(Workload {
            admin,
            agent,
            approver,
            ceiling,
        })
    }
}

/// What kind of request a latency belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Step,
    Other,
    Ceiling,
}

/// How run `n` goes is `seed::Shape::of(n)`, the seeder's mix: 1 in 20 denied, 1 in 10 (another
/// one) flagged and approved. Here: what its requests carry and expect.
impl Shape {
    fn deciding_input(self, n: u64) -> String {
        format!(r#"{{"n":{n},"risk":"{}"}}"#, self.risk())
    }
}

/// What one client thread saw in one phase.
#[derive(Default)]
struct Tally {
    step_us: Vec<u32>,
    other_us: Vec<u32>,
    ceiling_us: Vec<u32>,
    completed: u64,
    denied: u64,
    flagged: u64,
    errors: u64,
    error_samples: Vec<String>,
    opened: u64,
    unserved: u64,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.step_us.extend(other.step_us);
        self.other_us.extend(other.other_us);
        self.ceiling_us.extend(other.ceiling_us);
        self.completed += other.completed;
        self.denied += other.denied;
        self.flagged += other.flagged;
        self.errors += other.errors;
        for sample in other.error_samples {
            if self.error_samples.len() < 10 {
                self.error_samples.push(sample);
            }
        }
        self.opened += other.opened;
        self.unserved += other.unserved;
    }
}

/// One client thread: its connection, its tally, the window that counts.
struct Worker<'a> {
    conn: Conn,
    tally: Tally,
    start: Instant,
    end: Instant,
    next_run: &'a AtomicU64,
}

/// Why a workflow stopped early: an error (counted), or the phase ended.
struct Stop;

impl Worker<'_> {
    fn counts(&self, started: Instant, done: Instant) -> bool {
        started >= self.start && done <= self.end
    }

    /// Sends one request and checks its status; records its latency when inside the window.
    fn call(&mut self, kind: Kind, bytes: &[u8], expect: u16) -> Result<&[u8], Stop> {
        let started = Instant::now();
        let answer = self.conn.call(bytes);
        let done = Instant::now();
        let inside = started >= self.start && done <= self.end;
        let tally = &mut self.tally;
        match answer {
            Ok((status, body)) if status == expect => {
                if inside {
                    let us =
                        u32::try_from(done.duration_since(started).as_micros()).unwrap_or(u32::MAX);
                    match kind {
                        Kind::Step => tally.step_us.push(us),
                        Kind::Other => tally.other_us.push(us),
                        Kind::Ceiling => tally.ceiling_us.push(us),
                    }
                }
                Ok(body)
            }
            Ok((status, body)) => {
                let line = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
                let line = line.lines().next().unwrap_or_default().to_string();
                let why = format!(
                    "{line}: expected {expect}, got {status} {}",
                    String::from_utf8_lossy(&body[..body.len().min(300)])
                );
                Err(tally.error(why))
            }
            Err(e) => {
                let line = String::from_utf8_lossy(&bytes[..bytes.len().min(80)]);
                let line = line.lines().next().unwrap_or_default().to_string();
                Err(tally.error(format!("{line}: {e}")))
            }
        }
    }

    fn ceiling(&mut self, workload: &Workload) {
        while Instant::now() < self.end {
            let _ = self.call(Kind::Ceiling, &workload.ceiling, 201);
        }
    }

    fn workflows(&mut self, workload: &Workload) {
        while Instant::now() < self.end {
            let n = self.next_run.fetch_add(1, Ordering::Relaxed);
            let started = Instant::now();
            if let Ok(fate) = self.workflow(workload, n) {
                if self.counts(started.max(self.start), Instant::now()) {
                    match fate {
                        Shape::Allowed => self.tally.completed += 1,
                        Shape::Flagged => {
                            self.tally.completed += 1;
                            self.tally.flagged += 1;
                        }
                        Shape::Denied => self.tally.denied += 1,
                    }
                }
            }
        }
    }

    /// Runs workflow `n` from creation to its end; checks every answer.
    fn workflow(&mut self, workload: &Workload, n: u64) -> Result<Shape, Stop> {
        let fate = Shape::of(n);
        let agent = &workload.agent;
        let body =
            format!(r#"{{"workflow_id":"{WORKFLOW}","input":{{"n":{n}}},"actor":"{AGENT}"}}"#);
        let created = self.call(
            Kind::Other,
            &request("POST", "/workflows/runs", agent, &body),
            201,
        )?;
        let run = field(created, "run_id").map_err(|e| self.tally.error(e))?;
        for step in STEPS {
            if Instant::now() >= self.end {
                return Err(Stop);
            }
            let deciding = step == DECIDING_STEP;
            let input = match deciding {
                true => fate.deciding_input(n),
                false => format!(r#"{{"n":{n}}}"#),
            };
            let body = format!(r#"{{"step_id":"{step}","input":{input},"actor":"{AGENT}"}}"#);
            let path = format!("/workflows/runs/{run}/steps");
            let answer = self.call(Kind::Step, &request("POST", &path, agent, &body), 201)?;
            let effect = field(answer, "effect");
            let gate = field(answer, "gate_id");
            let expected = if deciding { fate.effect() } else { "allow" };
            let effect = effect.map_err(|e| self.tally.error(e))?;
            if effect != expected {
                return Err(self.tally.error(format!(
                    "run {run} step {step}: decision {effect}, expected {expected}"
                )));
            }
            if deciding && fate == Shape::Denied {
                return Ok(fate);
            }
            if deciding && fate == Shape::Flagged {
                let gate = gate.map_err(|e| self.tally.error(e))?;
                let path = format!("/workflows/runs/{run}/gates/{gate}");
                let approve = request(
                    "PATCH",
                    &path,
                    &workload.approver,
                    r#"{"decision":"approve"}"#,
                );
                self.call(Kind::Other, &approve, 200)?;
                let path = format!("/workflows/runs/{run}/status");
                let resume = request("PATCH", &path, &workload.admin, r#"{"status":"RUNNING"}"#);
                self.call(Kind::Other, &resume, 200)?;
            }
            let body =
                format!(r#"{{"status":"COMPLETED","output":{{"n":{n}}},"actor":"{AGENT}"}}"#);
            let path = format!("/workflows/runs/{run}/steps/{step}");
            self.call(Kind::Step, &request("PATCH", &path, agent, &body), 200)?;
        }
        Ok(fate)
    }
}

impl Tally {
    fn error(&mut self, why: String) -> Stop {
        self.errors += 1;
        if self.error_samples.len() < 10 {
            self.error_samples.push(why);
        }
        Stop
    }
}

/// A field the workload needs from an answer, owned.
fn field(body: &[u8], name: &str) -> Result<String, String> {
    string_field(body, name).map(str::to_string).ok_or_else(|| {
        format!(
            "no {name} in the answer {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        )
    })
}

/// Drives `work` from `options.conns` client threads through the warm-up and the window, and
/// reads `probe` (CPU times) as the window opens and as it closes.
fn drive(
    addr: SocketAddr,
    options: &LoadOptions,
    next_run: &AtomicU64,
    probe: impl Fn() -> Option<CpuTimes> + Sync,
    work: impl Fn(&mut Worker<'_>) + Sync,
) -> (Tally, Option<(CpuTimes, CpuTimes)>) {
    let start = Instant::now() + Duration::from_secs_f64(options.warmup);
    let end = start + Duration::from_secs_f64(options.seconds);
    let mut cpu = None;
    let tallies: Vec<Tally> = std::thread::scope(|scope| {
        let probe = &probe;
        let sampler = scope.spawn(move || {
            std::thread::sleep(start.saturating_duration_since(Instant::now()));
            let before = probe();
            std::thread::sleep(end.saturating_duration_since(Instant::now()));
            before.zip(probe())
        });
        let threads: Vec<_> = (0..options.conns)
            .map(|_| {
                let work = &work;
                scope.spawn(move || {
                    let mut worker = Worker {
                        conn: Conn::new(addr),
                        tally: Tally::default(),
                        start,
                        end,
                        next_run,
                    };
                    work(&mut worker);
                    worker.conn.drop_connection();
                    worker.tally.opened = worker.conn.opened;
                    worker.tally.unserved = worker.conn.unserved;
                    worker.tally
                })
            })
            .collect();
        let tallies = threads
            .into_iter()
            .map(|t| {
                t.join().unwrap_or_else(|_| {
                    let mut lost = Tally::default();
                    let _ = lost.error("a client thread panicked; its requests are lost".into());
                    lost
                })
            })
            .collect();
        cpu = sampler.join().ok().flatten();
        tallies
    });
    let mut all = Tally::default();
    for tally in tallies {
        all.merge(tally);
    }
    (all, cpu)
}

impl Round {
    fn of(ceiling: &Tally, flows: &Tally, seconds: f64) -> Round {
        let mut step_us = flows.step_us.clone();
        let mut ceiling_us = ceiling.ceiling_us.clone();
        step_us.sort_unstable();
        ceiling_us.sort_unstable();
        let rate = |n: usize| n as f64 / seconds;
        let step_rate = rate(step_us.len());
        let ceiling_rate = rate(ceiling_us.len());
        Round {
            workflows_per_s: (flows.completed + flows.denied) as f64 / seconds,
            step_requests_per_s: step_rate,
            requests_per_s: rate(step_us.len() + flows.other_us.len()),
            step_p50_ms: percentile_ms(&step_us, 0.50),
            step_p99_ms: percentile_ms(&step_us, 0.99),
            step_max_ms: percentile_ms(&step_us, 1.0),
            ceiling_requests_per_s: ceiling_rate,
            ceiling_p50_ms: percentile_ms(&ceiling_us, 0.50),
            ceiling_p99_ms: percentile_ms(&ceiling_us, 0.99),
            ratio_to_ceiling: if ceiling_rate > 0.0 {
                step_rate / ceiling_rate
            } else {
                0.0
            },
            workflows_completed: flows.completed,
            workflows_denied: flows.denied,
            workflows_flagged: flows.flagged,
            errors: ceiling.errors + flows.errors,
            connections_opened: ceiling.opened + flows.opened,
            connections_unserved: ceiling.unserved + flows.unserved,
            server_written_bytes_per_workflow: None,
            ceiling_cpu: None,
            workflow_cpu: None,
        }
    }
}

/// The median of each figure over the rounds that have them all; `None` if a round lacks one.
fn median_cpu(rounds: impl Iterator<Item = Option<CpuPerRequest>>) -> Option<CpuPerRequest> {
    let rounds: Vec<CpuPerRequest> = rounds.collect::<Option<_>>()?;
    (!rounds.is_empty()).then(|| CpuPerRequest {
        server_us: median(rounds.iter().map(|c| c.server_us).collect()),
        writer_us: median(rounds.iter().map(|c| c.writer_us).collect()),
        client_us: median(rounds.iter().map(|c| c.client_us).collect()),
    })
}

/// The `q` quantile (nearest rank) of sorted microseconds, in milliseconds; 0 when empty.
fn percentile_ms(sorted_us: &[u32], q: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted_us.len() as f64).ceil() as usize).clamp(1, sorted_us.len());
    f64::from(sorted_us[rank - 1]) / 1000.0
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    match values.len() % 2 {
        1 => values[mid],
        _ => (values[mid - 1] + values[mid]) / 2.0,
    }
}

impl LoadReport {
    /// The report as text for a terminal.
    pub fn to_text(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "fedcore bench load: {} connections, {} s per phase, {} round(s), durability {}, {} CPUs",
            self.conns,
            self.seconds,
            self.rounds.len(),
            self.durability,
            self.cpus
        );
        let _ = writeln!(
            out,
            "round  workflows/s  step req/s  ceiling req/s  ratio  step p50 ms  p99 ms  max ms  errors  unserved"
        );
        for (i, r) in self.rounds.iter().enumerate() {
            let _ = writeln!(
                out,
                "{:>5}  {:>11.0}  {:>10.0}  {:>13.0}  {:>5.2}  {:>11.2}  {:>6.2}  {:>6.1}  {:>6}  {:>8}",
                i + 1,
                r.workflows_per_s,
                r.step_requests_per_s,
                r.ceiling_requests_per_s,
                r.ratio_to_ceiling,
                r.step_p50_ms,
                r.step_p99_ms,
                r.step_max_ms,
                r.errors,
                r.connections_unserved
            );
        }
        let _ = writeln!(
            out,
            "median {:>11.0}  {:>10.0}  {:>13.0}  {:>5.2}  {:>11.2}  {:>6.2}  {:>6.1}  {:>6}  {:>8}",
            self.workflows_per_s,
            self.step_requests_per_s,
            self.ceiling_requests_per_s,
            self.ratio_to_ceiling,
            self.step_p50_ms,
            self.step_p99_ms,
            self.step_max_ms,
            self.errors,
            self.connections_unserved
        );
        if !self.ceiling_measured {
            let _ = writeln!(
                out,
                "  (no ceiling on a database of your own: its table would stay in the file)"
            );
        }
        for sample in &self.error_samples {
            let _ = writeln!(out, "  error: {sample}");
        }
        let phases = [
            ("ceiling", self.ceiling_cpu, self.ceiling_measured),
            ("workflows", self.workflow_cpu, true),
        ];
        for (phase, cpu, _) in phases.into_iter().filter(|(_, _, ran)| *ran) {
            let _ = match cpu {
                Some(c) => writeln!(
                    out,
                    "CPU per request, {phase}: server {:.0} us (its writer thread {:.0} us), \
                     client {:.0} us",
                    c.server_us, c.writer_us, c.client_us
                ),
                None => writeln!(
                    out,
                    "CPU per request, {phase}: not measured (it needs /proc, and the server's \
                     fedcore-writer thread alive through every round)"
                ),
            };
        }
        if let Some(rss) = self.server_peak_rss_bytes {
            let _ = writeln!(
                out,
                "server peak RSS: {:.1} MiB",
                rss as f64 / (1024.0 * 1024.0)
            );
        }
        let _ = writeln!(
            out,
            "database: {} runs, {} audit entries ({:.1} per run), {:.0} bytes per run:",
            self.runs,
            self.audit_entries,
            self.audit_entries as f64 / self.runs.max(1) as f64,
            self.db_bytes_per_workflow
        );
        for t in self
            .db_tables
            .iter()
            .filter(|t| t.bytes_per_workflow >= 1.0)
        {
            let _ = writeln!(
                out,
                "  {:<22} {:>8.0} bytes/run",
                t.table, t.bytes_per_workflow
            );
        }
        if let Some(written) = self.server_written_bytes_per_workflow {
            let _ = writeln!(
                out,
                "server wrote {written:.0} bytes per workflow (WAL frames, checkpoints, log lines, \
                 HTTP responses)"
            );
        }
        if let (Some(ok), Some(seconds)) = (self.verified, self.verify_seconds) {
            let verdict = if ok { "intact" } else { "BROKEN" };
            let _ = writeln!(out, "fedcore verify: {verdict} ({seconds:.1} s)");
        }
        if let Some(db) = &self.db_path {
            let _ = writeln!(out, "database kept at {}", db.display());
        }
        out
    }

    /// Whether the run was clean: no errors, no unserved connection, and (when checked) a
    /// database that verifies.
    pub fn clean(&self) -> bool {
        self.errors == 0 && self.connections_unserved == 0 && self.verified != Some(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_read_utime_and_stime_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (fedcore (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 75 0 0 20 0";
        assert_eq!(cpu_seconds(stat), Some(3.25));
        assert_eq!(cpu_seconds("4242 (fedcore) S 1"), None);
    }

    #[test]
    fn the_mix_is_one_in_twenty_denied_and_one_in_ten_flagged() {
        let fates: Vec<Shape> = (0..200).map(Shape::of).collect();
        let count = |f: Shape| fates.iter().filter(|&&x| x == f).count();
        assert_eq!(count(Shape::Denied), 10);
        assert_eq!(count(Shape::Flagged), 20);
        assert_eq!(count(Shape::Allowed), 170);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let us: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_ms(&us, 0.50), 50.0);
        assert_eq!(percentile_ms(&us, 0.99), 99.0);
        assert_eq!(percentile_ms(&us, 1.0), 100.0);
        assert_eq!(percentile_ms(&[], 0.5), 0.0);
    }

    #[test]
    fn the_median_of_an_even_count_is_the_mean_of_the_middle_two() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
