//! The writer thread: it owns the one write connection. It takes every job waiting in the queue
//! (up to `MAX_BATCH`) into one `BEGIN IMMEDIATE … COMMIT` (group commit: one fsync for many
//! requests), runs each job inside its own savepoint so that a job that is refused, fails or
//! panics rolls back alone, reads the clock once per job, and hands each job its answer only after
//! the commit, so a response never acknowledges an uncommitted write. A lone request commits at
//! once; batches form only when requests arrive while a commit is under way. The queue is bounded;
//! a full queue is refused at once (`Busy`) instead of blocking the caller.

use super::{run_cached, StoreError, Tx};
use crate::model::Timestamp;
use rusqlite::{Connection, OpenFlags};
use std::cell::Cell;
use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Whether the transaction a job ran in should be committed.
pub type Commit = bool;

/// The most jobs one transaction holds.
const MAX_BATCH: usize = 64;

/// One unit of work for the writer thread.
pub trait Job: Send {
    /// Runs inside the open transaction at time `now`; returns whether to commit.
    fn run(&mut self, tx: &Tx<'_>, now: Timestamp) -> Commit;
    /// Called once after the transaction ended: `None` when it committed or was rolled back as the
    /// job asked (also when the transaction then failed, if the job kept nothing and read nothing
    /// another job of it wrote), the error when its changes were lost with the transaction or
    /// it panicked, `StoreError::Abandoned` when it was not run.
    fn finish(self: Box<Self>, failure: Option<StoreError>);
    /// Whether nobody waits for the answer any more (the request timed out, or its client went
    /// away). Such a job is not run (`finish` gets `StoreError::Abandoned`), so that a client told
    /// its request timed out is not left with a change it was never told of.
    fn abandoned(&self) -> bool {
        false
    }
}

/// Why a job was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum Busy {
    /// The queue is full: try again shortly.
    Full,
    /// The writer thread has stopped (it only does when the server shuts down).
    Stopped,
}

/// A handle to the writer thread. Cloning shares the queue; when every handle is dropped the
/// thread finishes the queued jobs and exits.
#[derive(Clone)]
pub struct Writer {
    sender: SyncSender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer thread over `conn`, with `clock` as the time source and `capacity` queued
    /// jobs at most.
    pub fn start(
        conn: Connection,
        clock: impl FnMut() -> Timestamp + Send + 'static,
        capacity: usize,
    ) -> std::io::Result<(Writer, JoinHandle<()>)> {
        Writer::start_with_last_job(conn, clock, capacity, None)
    }

    /// As `start`, and when the queue closes runs `last` (a final signed checkpoint) in its own
    /// transaction before folding the WAL back in.
    pub fn start_with_last_job(
        conn: Connection,
        mut clock: impl FnMut() -> Timestamp + Send + 'static,
        capacity: usize,
        last_job: Option<Box<dyn Job>>,
    ) -> std::io::Result<(Writer, JoinHandle<()>)> {
        let (sender, receiver) = sync_channel::<Box<dyn Job>>(capacity);
        let checkpointer = Checkpointer::start(&conn)?;
        let handle = std::thread::Builder::new()
            .name("fedcore-writer".into())
            .spawn(move || {
                let mut last = Timestamp::from_micros(i64::MIN);
                // The audit log's `at` never goes backwards, even if the wall clock does.
                let mut tick = move || {
                    last = clock().max(last);
                    last
                };
                while let Ok(first) = receiver.recv() {
                    let mut batch = vec![first];
                    while batch.len() < MAX_BATCH {
                        match receiver.try_recv() {
                            Ok(job) => batch.push(job),
                            Err(_) => break,
                        }
                    }
                    if run_batch(&conn, batch, &mut tick) {
                        if let Some(checkpointer) = &checkpointer {
                            checkpointer.after_commit(&conn);
                        }
                    }
                }
                if let Some(checkpointer) = checkpointer {
                    checkpointer.stop();
                }
                if let Some(job) = last_job {
                    run_batch(&conn, vec![job], &mut tick);
                }
                // Fold the WAL back into the main file so a copied .db is complete on its own.
                let _ = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            })?;
        Ok((Writer { sender }, handle))
    }

    /// Queues `job`, or refuses at once when the queue is full.
    pub fn submit(&self, job: Box<dyn Job>) -> Result<(), Busy> {
        match self.sender.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) => Err(Busy::Full),
            Err(TrySendError::Disconnected(_)) => Err(Busy::Stopped),
        }
    }
}

/// Runs `f` in one `BEGIN IMMEDIATE … COMMIT` on `conn`, on this thread: for the command line,
/// and for `serve` before it hands the connection to its writer thread. `f` returns its result
/// and whether to commit; an error from `f`'s own statements is its to report.
pub fn write_once<T>(
    conn: &Connection,
    f: impl FnOnce(&Tx<'_>) -> (T, Commit),
) -> Result<T, StoreError> {
    run_cached(conn, "BEGIN IMMEDIATE")?;
    let (out, commit) = f(&Tx { conn });
    let ended = run_cached(conn, if commit { "COMMIT" } else { "ROLLBACK" });
    if ended.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    ended?;
    Ok(out)
}

/// Runs `jobs` in one transaction, each in its own savepoint, commits once, then answers each;
/// returns whether it committed.
fn run_batch(
    conn: &Connection,
    jobs: Vec<Box<dyn Job>>,
    tick: &mut impl FnMut() -> Timestamp,
) -> bool {
    if let Err(e) = run_cached(conn, "BEGIN IMMEDIATE") {
        for job in jobs {
            job.finish(Some(StoreError::Transaction(format!(
                "could not begin: {e}"
            ))));
        }
        return false;
    }
    let tx = Tx { conn };
    // Each job run, what it left, and whether it ran before any job kept changes (so all it
    // read was committed).
    let mut ran: Vec<(Box<dyn Job>, Ran, bool)> = Vec::with_capacity(jobs.len());
    let mut dirty = false;
    let mut jobs = jobs.into_iter();
    while let Some(mut job) = jobs.next() {
        if job.abandoned() {
            job.finish(Some(StoreError::Abandoned));
            continue;
        }
        let now = tick();
        let outcome = run_in_savepoint(&tx, job.as_mut(), now);
        let read_clean = !dirty;
        dirty |= outcome.kept;
        if conn.is_autocommit() {
            // SQLite rolled the whole transaction back under this job (a full disk, an I/O
            // error): every change of the batch so far went with it and must not be answered as
            // kept. The jobs not yet run go on in a transaction of their own; none may run
            // outside one, where its savepoint would begin, and its release commit, a
            // transaction of its own, answered later as failed with the batch.
            let lost = || {
                StoreError::Transaction(
                    "the transaction was rolled back before it could commit (SQLite undoes the \
                     whole transaction on a full disk or an I/O error)"
                        .into(),
                )
            };
            for (job, ran, read_clean) in ran {
                job.finish(ran.without_commit(read_clean, lost));
            }
            job.finish(Some(outcome.failure.unwrap_or_else(lost)));
            let rest: Vec<Box<dyn Job>> = jobs.collect();
            return !rest.is_empty() && run_batch(conn, rest, tick);
        }
        ran.push((job, outcome, read_clean));
    }
    if let Err(e) = run_cached(conn, "COMMIT") {
        if !conn.is_autocommit() {
            // A failed COMMIT can leave the transaction open; never let it leak into the next batch.
            let _ = conn.execute_batch("ROLLBACK");
        }
        let failed = || StoreError::Transaction(format!("could not commit: {e}"));
        for (job, ran, read_clean) in ran {
            job.finish(ran.without_commit(read_clean, failed));
        }
        return false;
    }
    for (job, ran, _) in ran {
        job.finish(ran.failure);
    }
    true
}

/// How often, at most, the checkpointer copies the WAL back into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(200);

/// WAL frames (pages) past which the checkpointer makes the WAL start over (64 MiB of 4 KiB
/// pages), and the size the WAL file is cut back to when it does. Each restart holds one batch
/// back while the database file is synced: at 16 MiB the p99 of a step request under `bench
/// load` doubled (50-56 ms against 25-30 ms at 64 MiB, back-to-back runs on a busy machine).
const WAL_RESTART_FRAMES: i64 = 16384;
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;

/// WAL frames past which the checkpointer runs again at once instead of waiting for the next
/// nudge after `CHECKPOINT_EVERY`: under heavy load it copies continuously, on its own core.
const WAL_BUSY_FRAMES: i64 = 1024;

/// Copies committed WAL frames back into the database file on a thread and connection of its
/// own (`PRAGMA wal_checkpoint(PASSIVE)`), so that no commit waits for a checkpoint: SQLite's
/// automatic checkpoint would run inside the writer's COMMIT, stalling every request of the next
/// batch while pages are copied and the database file is synced. A passive checkpoint never
/// blocks the writer or a reader, and never loses a frame: frames it cannot copy yet (a reader
/// still needs them) stay in the WAL for the next one.
///
/// SQLite starts the WAL over only when a write transaction begins while every frame has been
/// copied, which under steady load almost never happens between two batches: the WAL would grow
/// for as long as the load lasts (and a checkpoint from this thread that waits for the writer
/// starves, the writer taking its lock again at once). So once a passive checkpoint finds
/// `WAL_RESTART_FRAMES` or more, the checkpointer raises a flag and pauses, and the writer,
/// between two batches, runs `wal_checkpoint(RESTART)` itself: it copies the few frames the
/// passive checkpoints left, waits a little (`RESTART_WAIT`) for readers of older snapshots, and
/// the next batch starts the WAL over; `journal_size_limit` then cuts the file back to
/// `WAL_SIZE_LIMIT`. Then the checkpointer goes on. A reader that holds its snapshot longer (a
/// `verify` of the live file, for seconds) makes the restart report busy; the writer then tries
/// again only after `RESTART_RETRY`, so such a reader costs the writes one short wait a second,
/// never a stall.
struct Checkpointer {
    nudge: SyncSender<()>,
    thread: JoinHandle<()>,
    /// Set when the WAL has grown past `WAL_RESTART_FRAMES`.
    wal_is_large: Arc<AtomicBool>,
    /// When the writer may try a restart again, after one a reader kept from happening.
    retry_restart_at: Cell<Option<Instant>>,
    /// Restarts readers kept from happening since the last one that did (logged at the first
    /// and when they end, so a reader that never lets go shows in the log).
    busy_restarts: Cell<u32>,
}

/// How long the writer's restart of the WAL waits for readers of older snapshots. Ordinary reads
/// take microseconds to milliseconds: without any wait a restart almost never succeeds while
/// reads go on, and the WAL grew without bound under a steady mix of reads and writes (a review
/// measured the whole 375 MiB written); 50 ms kept it to 80-90 MiB.
const RESTART_WAIT: Duration = Duration::from_millis(50);

/// After a restart a reader kept from happening, how long the writer waits before trying again:
/// a reader holding its snapshot for seconds then costs the writes one `RESTART_WAIT` a second.
/// (Waiting the full busy timeout each time, as it first did, stalled writes for as long as the
/// reader read: about one batch every 5 s during a `verify` of the live file.)
const RESTART_RETRY: Duration = Duration::from_secs(1);

impl Checkpointer {
    /// Starts the checkpointer for the file behind `conn` and turns the automatic checkpoint of
    /// `conn` off; `None` for an in-memory or temporary database, which keeps SQLite's own.
    fn start(conn: &Connection) -> std::io::Result<Option<Checkpointer>> {
        let Some(path) = conn.path().filter(|p| !p.is_empty()).map(PathBuf::from) else {
            return Ok(None);
        };
        let own = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(std::io::Error::other)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(std::io::Error::other)?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)
            .map_err(std::io::Error::other)?;
        let (nudge, nudged) = sync_channel::<()>(1);
        let wal_is_large = Arc::new(AtomicBool::new(false));
        let large = wal_is_large.clone();
        let thread = std::thread::Builder::new()
            .name("fedcore-checkpoint".into())
            .spawn(move || {
                let mut pending = false;
                while pending || nudged.recv().is_ok() {
                    let frames = checkpoint(&own, "PASSIVE").map_or(0, |(_, frames)| frames);
                    pending = false;
                    if frames >= WAL_RESTART_FRAMES {
                        // The writer restarts the WAL between two batches; stay out of its way
                        // (a checkpoint here would make its restart fail busy) until it has.
                        large.store(true, Ordering::Release);
                        while large.load(Ordering::Acquire) {
                            if nudged.recv().is_err() {
                                return;
                            }
                        }
                        continue;
                    }
                    if frames >= WAL_BUSY_FRAMES {
                        continue; // Heavy load: copy again at once.
                    }
                    // A quiet period: later nudges wait for its end, a stop does not.
                    let until = Instant::now() + CHECKPOINT_EVERY;
                    loop {
                        match nudged.recv_timeout(until.saturating_duration_since(Instant::now())) {
                            Ok(()) => pending = true,
                            Err(RecvTimeoutError::Timeout) => break,
                            Err(RecvTimeoutError::Disconnected) => return,
                        }
                    }
                }
            })?;
        Ok(Some(Checkpointer {
            nudge,
            thread,
            wal_is_large,
            retry_restart_at: Cell::new(None),
            busy_restarts: Cell::new(0),
        }))
    }

    /// Called by the writer between batches, on its connection `conn`: starts the WAL over when
    /// it has grown large, then asks for a passive checkpoint (nudges coalesce while one is
    /// pending).
    fn after_commit(&self, conn: &Connection) {
        if self.wal_is_large.load(Ordering::Acquire) {
            let now = Instant::now();
            if self.retry_restart_at.get().is_none_or(|at| now >= at) {
                let restarted = restart_wal(conn, RESTART_WAIT);
                self.retry_restart_at
                    .set((!restarted).then(|| now + RESTART_RETRY));
                let busy = self.busy_restarts.get();
                let line = match (restarted, busy) {
                    (false, 0) => Some(
                        "checkpoint: a reader holds an old snapshot, so the WAL cannot start \
                         over; it grows until the reader lets go (tried again every second)"
                            .to_string(),
                    ),
                    (true, n) if n > 0 => Some(format!(
                        "checkpoint: the WAL started over after {n} tries a reader held back"
                    )),
                    _ => None,
                };
                if let Some(line) = line {
                    let _ = writeln!(std::io::stderr().lock(), "{line}");
                }
                self.busy_restarts
                    .set(if restarted { 0 } else { busy.saturating_add(1) });
            }
            // Meanwhile the checkpointer copies what it can, and raises the flag again.
            self.wal_is_large.store(false, Ordering::Release);
        }
        let _ = self.nudge.try_send(());
    }

    /// Lets a pending checkpoint finish, then ends the thread.
    fn stop(self) {
        drop(self.nudge);
        let _ = self.thread.join();
    }
}

/// Starts the WAL over (`wal_checkpoint(RESTART)`), waiting at most `wait` for readers that
/// still need its frames (then it copies what it can and reports busy). Returns whether it
/// restarted. The connection's own busy timeout is put back after.
fn restart_wal(conn: &Connection, wait: Duration) -> bool {
    let _ = conn.busy_timeout(wait);
    let done = checkpoint(conn, "RESTART");
    let _ = conn.busy_timeout(super::BUSY_TIMEOUT);
    done.is_some_and(|(busy, _)| !busy)
}

/// Runs `wal_checkpoint(mode)` on `conn`; returns whether it was kept from finishing (busy) and
/// the frames the WAL held, `None` when the checkpoint failed (reported; the next one tries
/// again).
fn checkpoint(conn: &Connection, mode: &str) -> Option<(bool, i64)> {
    let sql = format!("PRAGMA wal_checkpoint({mode})");
    match conn.query_row(&sql, [], |r| {
        Ok((r.get::<_, i64>(0)? != 0, r.get::<_, i64>(1)?))
    }) {
        Ok(done) => Some(done),
        Err(e) => {
            let _ = writeln!(std::io::stderr().lock(), "checkpoint ({mode}): {e}");
            None
        }
    }
}

/// Runs one job inside `SAVEPOINT job`: kept when it asks to commit, undone when it does not,
/// undone (and reported) when it panics or its savepoint cannot be closed.
fn run_in_savepoint(tx: &Tx<'_>, job: &mut dyn Job, now: Timestamp) -> Ran {
    let failed = |e| Ran {
        kept: false,
        failure: Some(e),
    };
    if let Err(e) = tx.savepoint("job") {
        return failed(e);
    }
    let undo = || tx.rollback_to_savepoint("job").err();
    match catch_unwind(AssertUnwindSafe(|| job.run(tx, now))) {
        Ok(true) => match tx.release_savepoint("job") {
            Ok(()) => Ran {
                kept: true,
                failure: None,
            },
            Err(e) => {
                let _ = undo();
                failed(e)
            }
        },
        Ok(false) => Ran {
            kept: false,
            failure: undo(),
        },
        Err(_) => {
            // Never eprintln! here: a failed write to stderr would panic the writer itself.
            let _ = writeln!(
                std::io::stderr().lock(),
                "writer: an operation panicked; its changes were rolled back"
            );
            let _ = undo();
            failed(StoreError::Panicked)
        }
    }
}

/// What running one job in its savepoint left: whether its changes are in the transaction, and
/// the failure to answer it with, if any.
struct Ran {
    kept: bool,
    failure: Option<StoreError>,
}

impl Ran {
    /// The job's failure when the transaction around it did not commit (`why`). A job that kept
    /// nothing and ran before any other kept something (`read_clean`) keeps its own answer (a
    /// refusal that wrote nothing, on committed state); any other failed with the transaction:
    /// its changes were lost, or its answer may rest on a neighbour's that were (an idempotent
    /// replay of an answer stored in the same batch, a 404 for a token a lost revoke had
    /// revoked).
    fn without_commit(
        self,
        read_clean: bool,
        why: impl FnOnce() -> StoreError,
    ) -> Option<StoreError> {
        if !self.kept && read_clean {
            return self.failure;
        }
        Some(self.failure.unwrap_or_else(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Receiver, Sender};
    use std::time::Duration;

    /// A job that inserts one row, optionally waits for a signal first, optionally panics or
    /// ends the whole transaction as SQLite does on a full disk.
    struct TestJob {
        value: i64,
        wait: Option<(Sender<()>, Receiver<()>)>,
        panic: bool,
        roll_back_all: bool,
        gone: bool,
        done: Sender<(i64, Option<String>)>,
    }

    impl Job for TestJob {
        fn run(&mut self, tx: &Tx<'_>, _now: Timestamp) -> Commit {
            if let Some((started, release)) = &self.wait {
                let _ = started.send(());
                let _ = release.recv();
            }
            tx.conn
                .execute("INSERT INTO t (v) VALUES (?1)", [self.value])
                .unwrap();
            if self.panic {
                panic!("a job failed halfway");
            }
            if self.roll_back_all {
                tx.conn.execute_batch("ROLLBACK").unwrap();
                return false;
            }
            // A negative value stands for a refused request: its insert must not survive.
            self.value >= 0
        }
        fn finish(self: Box<Self>, failure: Option<StoreError>) {
            let _ = self.done.send((self.value, failure.map(|e| e.to_string())));
        }
        fn abandoned(&self) -> bool {
            self.gone
        }
    }

    fn writer_over(path: &std::path::Path, capacity: usize) -> (Writer, JoinHandle<()>) {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("CREATE TABLE IF NOT EXISTS t (v INTEGER)")
            .unwrap();
        Writer::start(conn, || Timestamp::from_micros(0), capacity).unwrap()
    }

    fn temp_db(name: &str) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("fedcore-writer-{name}-{}.db", std::process::id()));
        let _ = std::fs::remove_file(&path);
        path
    }

    #[test]
    fn commits_reach_the_database_file_without_waiting_for_shutdown() {
        let path = temp_db("checkpointer");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER); PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
        let (writer, thread) = Writer::start(conn, || Timestamp::from_micros(0), 16).unwrap();
        let (done, results) = channel();
        for value in 1..=5 {
            writer.submit(job(value, &done)).unwrap();
        }
        for _ in 1..=5 {
            assert_eq!(results.recv().unwrap().1, None);
        }
        // Five rows are one page, far below SQLite's automatic checkpoint (1000 pages): only the
        // checkpointer thread puts them into the main file while the writer runs. Read a copy of
        // the main file alone, without its WAL.
        let copy = temp_db("checkpointer-copy");
        let rows_in_file = || {
            let _ = std::fs::remove_file(&copy);
            std::fs::copy(&path, &copy).ok()?;
            let copied = Connection::open(&copy).ok()?;
            copied
                .query_row("SELECT count(*) FROM t", [], |r| r.get::<_, i64>(0))
                .ok()
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while rows_in_file() != Some(5) {
            assert!(
                std::time::Instant::now() < deadline,
                "the committed rows never reached the database file"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        drop(writer);
        thread.join().unwrap();
        for p in [&path, &copy] {
            let _ = std::fs::remove_file(p);
        }
    }

    /// A job that inserts a blob of `size` bytes.
    struct BlobJob {
        size: usize,
        done: Sender<(i64, Option<String>)>,
    }

    impl Job for BlobJob {
        fn run(&mut self, tx: &Tx<'_>, _now: Timestamp) -> Commit {
            tx.conn
                .execute("INSERT INTO b (v) VALUES (?1)", [vec![7u8; self.size]])
                .unwrap();
            true
        }
        fn finish(self: Box<Self>, failure: Option<StoreError>) {
            let _ = self.done.send((0, failure.map(|e| e.to_string())));
        }
    }

    #[test]
    fn the_wal_stays_bounded_under_steady_load() {
        let path = temp_db("wal-bound");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE b (v BLOB)").unwrap();
        let (writer, thread) = Writer::start(conn, || Timestamp::from_micros(0), 64).unwrap();
        let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
        let wal_size = || std::fs::metadata(&wal).map_or(0, |m| m.len());
        // Short reads all along, as a server answers them beside its writes: each holds a
        // snapshot for a moment, which a restart that never waited could not get past.
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..2)
            .map(|_| {
                let (path, stop) = (path.clone(), stop.clone());
                std::thread::spawn(move || {
                    let reader = Connection::open(&path).unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        reader.execute_batch("BEGIN").unwrap();
                        let _: Option<i64> = reader
                            .query_row("SELECT max(rowid) FROM b", [], |r| r.get(0))
                            .unwrap();
                        reader.execute_batch("COMMIT").unwrap();
                    }
                })
            })
            .collect();
        // About 375 MiB through the writer with the queue kept full, so that some batch is always
        // under way: six times the size at which the WAL is made to start over. How far past
        // that size it gets before a restart depends on how fast the checkpointer keeps up;
        // without restarts it holds everything written.
        let (done, results) = channel();
        let (jobs, size) = (24_000, 16 * 1024);
        let (mut sent, mut answered) = (0, 0);
        // The largest the WAL file gets, sampled as answers come: it is cut back after each
        // restart, so its size at the end says little.
        let mut largest = 0;
        while answered < jobs {
            while sent < jobs {
                match writer.submit(Box::new(BlobJob {
                    size,
                    done: done.clone(),
                })) {
                    Ok(()) => sent += 1,
                    Err(_) => break,
                }
            }
            if let Ok((_, failure)) = results.recv_timeout(Duration::from_secs(30)) {
                assert_eq!(failure, None);
                answered += 1;
                if answered % 200 == 0 {
                    largest = largest.max(wal_size());
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        for reader in readers {
            reader.join().unwrap();
        }
        let written = (jobs * size) as u64;
        let largest = largest.max(wal_size());
        assert!(
            largest < written / 2,
            "the WAL grew to {largest} bytes while {written} were written"
        );
        drop(writer);
        thread.join().unwrap();
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&wal);
    }

    /// A job that inserts `value` (refused when negative).
    fn job(value: i64, done: &Sender<(i64, Option<String>)>) -> Box<TestJob> {
        Box::new(TestJob {
            value,
            wait: None,
            panic: false,
            roll_back_all: false,
            gone: false,
            done: done.clone(),
        })
    }

    /// A writer whose first job (inserting 1) has left the queue and holds the writer until
    /// `release` is sent: jobs submitted meanwhile wait in the queue.
    struct Held {
        writer: Writer,
        thread: JoinHandle<()>,
        release: Sender<()>,
        done: Sender<(i64, Option<String>)>,
        results: Receiver<(i64, Option<String>)>,
    }

    fn held_writer(path: &std::path::Path, capacity: usize) -> Held {
        let (writer, thread) = writer_over(path, capacity);
        let (done, results) = channel();
        let (release, wait) = channel();
        let (started_tx, started) = channel();
        let mut first = job(1, &done);
        first.wait = Some((started_tx, wait));
        writer.submit(first).unwrap();
        started.recv_timeout(Duration::from_secs(30)).unwrap();
        Held {
            writer,
            thread,
            release,
            done,
            results,
        }
    }

    impl Held {
        /// Releases the first job, stops the writer and returns every job's answer in order.
        fn finish(self) -> Vec<(i64, Option<String>)> {
            self.release.send(()).unwrap();
            drop(self.writer);
            self.thread.join().unwrap();
            drop(self.done);
            self.results.iter().collect()
        }
    }

    fn rows(path: &std::path::Path) -> Vec<i64> {
        let conn = Connection::open(path).unwrap();
        let mut stmt = conn.prepare("SELECT v FROM t ORDER BY rowid").unwrap();
        let values = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        values
    }

    #[test]
    fn a_full_queue_is_refused_at_once_instead_of_blocking() {
        let path = temp_db("busy");
        let held = held_writer(&path, 1);
        held.writer.submit(job(2, &held.done)).unwrap(); // fills the one queue slot
        assert_eq!(
            held.writer.submit(job(3, &held.done)).err(),
            Some(Busy::Full),
            "expected a full queue to refuse the third job"
        );
        assert_eq!(held.finish(), vec![(1, None), (2, None)]);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_panicking_job_is_rolled_back_and_the_writer_goes_on() {
        let path = temp_db("panic");
        let held = held_writer(&path, 8);
        let mut panicking = job(2, &held.done);
        panicking.panic = true;
        held.writer.submit(panicking).unwrap();
        held.writer.submit(job(3, &held.done)).unwrap();
        let finished = held.finish();
        assert_eq!(finished[1].0, 2);
        assert!(
            finished[1].1.is_some(),
            "expected the panicking job to be answered with an error"
        );
        assert_eq!(finished[2], (3, None));
        assert_eq!(
            rows(&path),
            vec![1, 3],
            "expected the panicking job's insert rolled back"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn in_one_batch_a_refused_job_leaves_no_row_while_its_neighbours_commit() {
        let path = temp_db("batch");
        let held = held_writer(&path, 8);
        // These wait in the queue while job 1 holds the writer, so they run as one transaction.
        for value in [2, -3, 4] {
            held.writer.submit(job(value, &held.done)).unwrap();
        }
        assert_eq!(
            held.finish(),
            vec![(1, None), (2, None), (-3, None), (4, None)]
        );
        assert_eq!(
            rows(&path),
            vec![1, 2, 4],
            "expected the refused job's insert rolled back alone"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn when_sqlite_rolls_the_whole_batch_back_no_job_is_answered_as_kept_and_the_rest_commit() {
        let path = temp_db("rolled-back");
        let held = held_writer(&path, 8);
        // One batch: -7 (refused, on committed state), 2, -3 (refused after 2 kept a row it may
        // have read), then a job under which the transaction ends (as SQLITE_FULL during a
        // cache spill ends it), then 4 and 6, which must not commit one by one outside it.
        for value in [-7, 2, -3] {
            held.writer.submit(job(value, &held.done)).unwrap();
        }
        let mut ending = job(5, &held.done);
        ending.roll_back_all = true;
        held.writer.submit(ending).unwrap();
        for value in [4, 6] {
            held.writer.submit(job(value, &held.done)).unwrap();
        }
        let finished = held.finish();
        let answers: Vec<(i64, bool)> = finished.iter().map(|(v, f)| (*v, f.is_none())).collect();
        assert_eq!(
            answers,
            vec![
                (1, true),
                (-7, true),
                (2, false),
                (-3, false),
                (5, false),
                (4, true),
                (6, true)
            ],
            "-7 kept nothing and read only committed rows: its answer stands; 2 went with the \
             rolled-back transaction, and -3 ran after it; 4 and 6 ran in a new one: {finished:?}"
        );
        assert_eq!(
            rows(&path),
            vec![1, 4, 6],
            "exactly the rows answered as kept"
        );
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn a_wal_restart_a_reader_holds_back_reports_it_and_keeps_the_busy_timeout() {
        let path = temp_db("restart");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.busy_timeout(super::super::BUSY_TIMEOUT).unwrap();
        conn.execute_batch("CREATE TABLE t (v INTEGER); INSERT INTO t VALUES (1);")
            .unwrap();
        // A reader holding a snapshot that needs the WAL's frames, as verify does for seconds.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT count(*) FROM t", [], |r| r.get(0))
            .unwrap();
        conn.execute_batch("INSERT INTO t VALUES (2)").unwrap();
        assert!(
            !restart_wal(&conn, Duration::from_millis(1)),
            "the reader keeps the WAL from starting over, and the restart says so"
        );
        let timeout: i64 = conn
            .query_row("PRAGMA busy_timeout", [], |r| r.get(0))
            .unwrap();
        assert_eq!(timeout, 5000, "the connection's busy timeout is back");
        reader.execute_batch("COMMIT").unwrap();
        assert!(
            restart_wal(&conn, Duration::from_millis(1)),
            "with it gone it does"
        );
        drop((reader, conn));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
    }

    #[test]
    fn a_job_nobody_waits_for_any_more_is_not_run() {
        let path = temp_db("abandoned");
        let held = held_writer(&path, 8);
        let mut gone = job(2, &held.done);
        gone.gone = true;
        held.writer.submit(gone).unwrap();
        held.writer.submit(job(3, &held.done)).unwrap();
        let finished = held.finish();
        assert_eq!(finished[1].0, 2);
        assert_eq!(
            finished[1].1.as_deref(),
            Some(StoreError::Abandoned.to_string().as_str())
        );
        assert_eq!(finished[2], (3, None));
        assert_eq!(rows(&path), vec![1, 3], "the abandoned job wrote nothing");
        let _ = std::fs::remove_file(&path);
    }
}
