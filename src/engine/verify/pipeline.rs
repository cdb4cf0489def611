//! Checking in parallel what is read in order. A pass over a table cuts its keys into slices.
//! When the file can be read over several connections at once (it is opened `immutable`), each
//! thread reads and checks whole slices over its own connection (SQLite wants one thread per
//! connection); otherwise the calling thread reads every slice in turn and hands the rows out in
//! batches to worker threads that run the pure checks. Either way the results are put back in
//! read order, so the failure reported is the first one in that order whatever thread found it,
//! and work in flight is bounded, so memory does not grow with the table.

use super::{Broken, Counts, Stop};
use crate::store::{Db, Reader};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, sync_channel, Receiver};
use std::sync::Mutex;

/// One pass over a table: how many slices its keys are cut into, how one slice is read (and
/// what reading it gathers besides the items, such as an index), and the check of each item.
/// Items are read into one the reader keeps and reuses: a thread that checks what it reads
/// checks it there, allocating nothing per row; handed to another thread, it is taken.
pub(super) trait Pass: Sync {
    type Item: Default + Send;
    /// What reading one slice gathers for later passes; merged in slice order by the caller.
    type Gathered: Default + Send;

    fn slices(&self) -> usize;

    /// Reads slice `slice` over `db` in key order, handing each item to `sink`.
    fn read<D: Db>(
        &self,
        db: &D,
        slice: usize,
        gathered: &mut Self::Gathered,
        sink: &mut dyn FnMut(&mut Self::Item) -> Result<(), Stop>,
    ) -> Result<(), Stop>;

    /// Checks one item, counting what it checked; `buf` is a scratch buffer kept between items.
    fn check(
        &self,
        buf: &mut Vec<u8>,
        item: &Self::Item,
        counts: &mut Counts,
    ) -> Result<(), Box<Broken>>;
}

/// Runs `pass` over every slice: over this thread's `db` and the `siblings` (connections that
/// read the same file), one thread each, when there are siblings; otherwise reading on this
/// thread and checking on `workers` threads. Adds the counts of what was checked before the
/// first failure to `counts` and returns that failure, or what each slice gathered, in order.
pub(super) fn run_pass<P: Pass, D: Db>(
    db: &D,
    siblings: &mut [Reader],
    workers: usize,
    counts: &mut Counts,
    pass: &P,
) -> Result<Vec<P::Gathered>, Stop> {
    let n = pass.slices();
    if siblings.is_empty() {
        let mut gathered: Vec<P::Gathered> = (0..n).map(|_| P::Gathered::default()).collect();
        let mut read = |sink: &mut dyn FnMut(P::Item) -> Result<(), Stop>| {
            let mut take = |item: &mut P::Item| sink(std::mem::take(item));
            gathered
                .iter_mut()
                .enumerate()
                .try_for_each(|(slice, gathered)| pass.read(db, slice, gathered, &mut take))
        };
        let check =
            |buf: &mut Vec<u8>, item: &P::Item, counts: &mut Counts| pass.check(buf, item, counts);
        check_in_order(workers, counts, &mut read, &check)?;
        return Ok(gathered);
    }
    let next = AtomicUsize::new(0);
    let first_failed = AtomicUsize::new(usize::MAX);
    let done: Vec<Mutex<Option<SliceDone<P::Gathered>>>> =
        (0..n).map(|_| Mutex::new(None)).collect();
    let work = |db: &dyn SliceReader<P>| {
        let mut buf = Vec::with_capacity(4096);
        loop {
            let slice = next.fetch_add(1, Ordering::Relaxed);
            if slice >= n || slice > first_failed.load(Ordering::Relaxed) {
                break;
            }
            let mut tally = Counts::default();
            let mut gathered = P::Gathered::default();
            let result = db.read_slice(pass, slice, &mut gathered, &mut |item| {
                // A failure in an earlier slice is reported whatever this one holds.
                if first_failed.load(Ordering::Relaxed) < slice {
                    return Err(Stop::Halted);
                }
                pass.check(&mut buf, item, &mut tally).map_err(Stop::Broken)
            });
            if result.is_err() {
                first_failed.fetch_min(slice, Ordering::Relaxed);
            }
            *done[slice].lock().unwrap_or_else(|p| p.into_inner()) =
                Some((tally, gathered, result));
        }
    };
    std::thread::scope(|scope| {
        for sibling in siblings.iter_mut() {
            let work = &work;
            scope.spawn(move || work(&*sibling));
        }
        work(db);
    });
    let mut gathered = Vec::with_capacity(n);
    for slot in done {
        // A slice is left undone only after an earlier one failed, which returns first.
        let Some((tally, slice_gathered, result)) =
            slot.into_inner().unwrap_or_else(|p| p.into_inner())
        else {
            return Err(Stop::Halted);
        };
        counts.add(&tally);
        result?;
        gathered.push(slice_gathered);
    }
    Ok(gathered)
}

/// What a thread made of one slice: its counts, what it gathered, and how it ended.
type SliceDone<G> = (Counts, G, Result<(), Stop>);

/// A connection a pass can read a slice over, whatever its type: the calling thread's and the
/// siblings' differ.
trait SliceReader<P: Pass> {
    fn read_slice(
        &self,
        pass: &P,
        slice: usize,
        gathered: &mut P::Gathered,
        sink: &mut dyn FnMut(&mut P::Item) -> Result<(), Stop>,
    ) -> Result<(), Stop>;
}

impl<P: Pass, D: Db> SliceReader<P> for D {
    fn read_slice(
        &self,
        pass: &P,
        slice: usize,
        gathered: &mut P::Gathered,
        sink: &mut dyn FnMut(&mut P::Item) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        pass.read(self, slice, gathered, sink)
    }
}

/// How many items one worker checks at a time.
const BATCH: usize = 256;

/// Checks one item; counts what it checked into the `Counts`; the `Vec` is a scratch buffer
/// the worker keeps from item to item.
pub(super) type Check<'c, T> =
    &'c (dyn Fn(&mut Vec<u8>, &T, &mut Counts) -> Result<(), Box<Broken>> + Sync);

/// Reads items in order and passes each to the sink; stops when the sink says so.
pub(super) type Read<'r, T> =
    &'r mut dyn FnMut(&mut dyn FnMut(T) -> Result<(), Stop>) -> Result<(), Stop>;

/// Runs `read` on this thread and `check` on `workers` threads, adds the counts of every item
/// checked before the first failure to `counts`, and returns that failure, or the error that
/// stopped reading when no item before it failed.
pub(super) fn check_in_order<T: Send>(
    workers: usize,
    counts: &mut Counts,
    read: Read<'_, T>,
    check: Check<'_, T>,
) -> Result<(), Stop> {
    let (work, queue) = sync_channel::<(usize, Vec<T>)>(workers * 2);
    let queue = Mutex::new(queue);
    let (done, results) = channel();
    std::thread::scope(|scope| {
        for _ in 0..workers.max(1) {
            let (queue, done) = (&queue, done.clone());
            scope.spawn(move || {
                let mut buf = Vec::with_capacity(4096);
                while let Some((index, items)) = next_batch(queue) {
                    let mut tally = Counts::default();
                    let failure = items
                        .iter()
                        .find_map(|item| check(&mut buf, item, &mut tally).err());
                    if done.send((index, tally, failure)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(done);

        let mut merged = Merge::default();
        let mut batch = Vec::with_capacity(BATCH);
        let mut sent = 0;
        let read_result = read(&mut |item| {
            batch.push(item);
            if batch.len() < BATCH {
                return Ok(());
            }
            let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            // A worker only disappears by panicking, which the scope reports when it ends.
            let _ = work.send((sent, full));
            sent += 1;
            merged.take_ready(&results, counts);
            match merged.failure {
                Some(_) => Err(Stop::Halted),
                None => Ok(()),
            }
        });
        // The items read before a read error are checked too: a failure among them comes first.
        if !batch.is_empty() && merged.failure.is_none() {
            let _ = work.send((sent, batch));
            sent += 1;
        }
        drop(work);
        merged.take_all(&results, sent, counts);
        // Reading halts only once a failure is known, so a halt always comes with one.
        match (merged.failure, read_result) {
            (Some(broken), _) => Err(Stop::Broken(broken)),
            (None, read_result) => read_result,
        }
    })
}

fn next_batch<T>(queue: &Mutex<Receiver<(usize, Vec<T>)>>) -> Option<(usize, Vec<T>)> {
    let queue = queue
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    queue.recv().ok()
}

/// Results put back in batch order: counts added up to the first failure, which is kept.
#[derive(Default)]
struct Merge {
    next: usize,
    waiting: BTreeMap<usize, (Counts, Option<Box<Broken>>)>,
    failure: Option<Box<Broken>>,
}

type Done = (usize, Counts, Option<Box<Broken>>);

impl Merge {
    fn take_ready(&mut self, results: &Receiver<Done>, counts: &mut Counts) {
        while let Ok((index, tally, failure)) = results.try_recv() {
            self.waiting.insert(index, (tally, failure));
        }
        self.advance(counts);
    }

    /// Waits for the results of batches `next..sent`, unless a failure is already known.
    fn take_all(&mut self, results: &Receiver<Done>, sent: usize, counts: &mut Counts) {
        self.advance(counts);
        while self.failure.is_none() && self.next < sent {
            match results.recv() {
                Ok((index, tally, failure)) => {
                    self.waiting.insert(index, (tally, failure));
                    self.advance(counts);
                }
                Err(_) => break,
            }
        }
    }

    fn advance(&mut self, counts: &mut Counts) {
        while self.failure.is_none() {
            let Some((tally, failure)) = self.waiting.remove(&self.next) else {
                break;
            };
            counts.add(&tally);
            self.failure = failure;
            self.next += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_numbers(
        n: u64,
    ) -> impl FnMut(&mut dyn FnMut(u64) -> Result<(), Stop>) -> Result<(), Stop> {
        move |sink| (0..n).try_for_each(&mut *sink)
    }

    fn fail_at(
        bad: &'static [u64],
    ) -> impl Fn(&mut Vec<u8>, &u64, &mut Counts) -> Result<(), Box<Broken>> + Sync {
        move |_, item, counts| {
            if bad.contains(item) {
                return Err(Box::new(Broken {
                    table: "numbers",
                    id: item.to_string(),
                    field: "value",
                    expected: None,
                    found: None,
                    message: "bad".into(),
                }));
            }
            counts.evidence += 1;
            Ok(())
        }
    }

    #[test]
    fn every_item_is_checked_and_counted_once() {
        let mut counts = Counts::default();
        let result = check_in_order(3, &mut counts, &mut read_numbers(10_000), &fail_at(&[]));
        assert!(result.is_ok());
        assert_eq!(counts.evidence, 10_000);
    }

    #[test]
    fn the_failure_reported_is_the_first_in_read_order() {
        for workers in [1, 2, 7] {
            let mut counts = Counts::default();
            let check = fail_at(&[9_000, 5_000, 4_999, 7]);
            let result = check_in_order(workers, &mut counts, &mut read_numbers(20_000), &check);
            let Err(Stop::Broken(broken)) = result else {
                panic!("expected a failure");
            };
            assert_eq!(broken.id, "7");
            assert_eq!(counts.evidence, 7, "items before the failure, and no other");
        }
    }

    #[test]
    fn a_read_error_comes_after_the_failures_of_items_read_before_it() {
        let mut read = |sink: &mut dyn FnMut(u64) -> Result<(), Stop>| {
            (0..100).try_for_each(&mut *sink)?;
            Err(Stop::Broken(Box::new(Broken {
                table: "numbers",
                id: "100".into(),
                field: "row",
                expected: None,
                found: None,
                message: "unreadable".into(),
            })))
        };
        let mut counts = Counts::default();
        let Err(Stop::Broken(first)) = check_in_order(2, &mut counts, &mut read, &fail_at(&[50]))
        else {
            panic!("expected a failure");
        };
        assert_eq!(first.id, "50");

        let mut counts = Counts::default();
        let Err(Stop::Broken(first)) = check_in_order(2, &mut counts, &mut read, &fail_at(&[]))
        else {
            panic!("expected the read error");
        };
        assert_eq!(first.id, "100");
        assert_eq!(counts.evidence, 100);
    }
}
