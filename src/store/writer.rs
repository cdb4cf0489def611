//! The writer thread: it owns the one write connection and runs each submitted job inside its own
//! `BEGIN IMMEDIATE … COMMIT`, reading the clock once per transaction. A job hands its answer back
//! only after the commit, so a response never acknowledges an uncommitted write. The queue is
//! bounded; a full queue is refused at once (`Busy`) instead of blocking the caller.

use super::{StoreError, Tx};
use crate::model::Timestamp;
use rusqlite::Connection;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::thread::JoinHandle;

/// Whether the transaction a job ran in should be committed.
pub type Commit = bool;

/// One unit of work for the writer thread.
pub trait Job: Send {
    /// Runs inside the open transaction at time `now`; returns whether to commit.
    fn run(&mut self, tx: &Tx<'_>, now: Timestamp) -> Commit;
    /// Called once after the transaction ended: `None` when it committed or was rolled back as the
    /// job asked, the error when the commit failed or the job panicked.
    fn finish(self: Box<Self>, failure: Option<StoreError>);
}

/// The writer's queue is full: try again shortly.
#[derive(Debug)]
pub struct Busy;

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
        mut clock: impl FnMut() -> Timestamp + Send + 'static,
        capacity: usize,
    ) -> std::io::Result<(Writer, JoinHandle<()>)> {
        let (sender, receiver) = sync_channel::<Box<dyn Job>>(capacity);
        let handle = std::thread::Builder::new()
            .name("fedcore-writer".into())
            .spawn(move || {
                let mut last = Timestamp::from_micros(i64::MIN);
                for job in receiver {
                    // The audit log's `at` never goes backwards, even if the wall clock does.
                    let now = clock().max(last);
                    last = now;
                    run_one(&conn, job, now);
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
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => Err(Busy),
        }
    }
}

fn run_one(conn: &Connection, mut job: Box<dyn Job>, now: Timestamp) {
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        job.finish(Some(e.into()));
        return;
    }
    let tx = Tx { conn };
    let ran = catch_unwind(AssertUnwindSafe(|| job.run(&tx, now)));
    let failure = match ran {
        Ok(true) => conn.execute_batch("COMMIT").err().map(StoreError::from),
        Ok(false) => conn.execute_batch("ROLLBACK").err().map(StoreError::from),
        Err(_) => {
            eprintln!("writer: an operation panicked; its transaction was rolled back");
            let _ = conn.execute_batch("ROLLBACK");
            Some(StoreError::Panicked)
        }
    };
    if failure.is_some() && !conn.is_autocommit() {
        // A failed COMMIT can leave the transaction open; never let it leak into the next job.
        let _ = conn.execute_batch("ROLLBACK");
    }
    job.finish(failure);
}
