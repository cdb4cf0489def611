//! `fedcore bench verify`: how fast `fedcore verify` checks a database of a given size. Each
//! round goes through `verify::verify_file`, the path the command itself takes (open the file
//! read-only, every check, the report), so a round measures what a user waits for.

use super::seed::{self, SeedError, SeedSummary};
use crate::engine::verify;
use crate::store::{self, Durability, StoreError};
use std::path::Path;
use std::time::{Duration, Instant};

/// One timed run of `verify`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Round {
    pub entries: u64,
    pub elapsed: Duration,
}

impl Round {
    pub fn entries_per_second(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Seed(#[from] SeedError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A benchmark times a database that verifies; a broken one is a fixture gone wrong.
    #[error("verify found the database broken: {0}")]
    Broken(String),
}

/// Seeds the database at `db` (created if missing, appended to otherwise) until it holds at
/// least `entries` audit entries. `None` when it already did.
pub fn seed_to(db: &Path, entries: u64) -> Result<Option<SeedSummary>, BenchError> {
    let (runs, held) = held_by(db)?;
    let missing = i64::try_from(entries).unwrap_or(i64::MAX) - held;
    if missing <= 0 {
        return Ok(None);
    }
    let mut workflows = seed::workflows_for(runs, missing);
    if held == 0 {
        workflows = seed::workflows_for(0, missing - seed::SETUP_ENTRIES);
    }
    // A benchmark fixture need not survive a power cut.
    Ok(Some(seed::seed(db, workflows, Durability::Normal)?))
}

/// The runs and audit entries of the database at `db`; none when there is no file.
fn held_by(db: &Path) -> Result<(u64, i64), StoreError> {
    if !db.exists() {
        return Ok((0, 0));
    }
    store::open_read_only(db)?.snapshot(|r| {
        let entries = store::audit_head(r)?.map_or(0, |(seq, _)| seq);
        Ok((store::count_runs(r)?.max(0) as u64, entries))
    })?
}

/// Runs `verify` over `db` `rounds` times, calling `each` with every round as it ends.
pub fn time_verify(
    db: &Path,
    rounds: usize,
    mut each: impl FnMut(usize, &Round),
) -> Result<Vec<Round>, BenchError> {
    let mut timed = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let started = Instant::now();
        let report = verify::verify_file(db, &verify::Options::default())?;
        let elapsed = started.elapsed();
        if let Some(broken) = &report.failure {
            return Err(BenchError::Broken(format!(
                "{} {} {}: {}",
                broken.table, broken.id, broken.field, broken.message
            )));
        }
        let round = Round {
            entries: report.counts.audit_entries,
            elapsed,
        };
        each(i, &round);
        timed.push(round);
    }
    Ok(timed)
}

/// The round of median time (the upper one of an even number).
pub fn median(rounds: &[Round]) -> Option<Round> {
    let mut sorted = rounds.to_vec();
    sorted.sort_by_key(|r| r.elapsed);
    sorted.get(sorted.len() / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeding_to_a_size_reaches_it_and_the_median_is_the_middle_round() {
        let dir = std::env::temp_dir().join(format!("fedcore-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("bench.db");
        let seeded = seed_to(&db, 500)
            .unwrap()
            .expect("an empty database is seeded");
        assert!(seeded.audit_entries >= 500, "{seeded:?}");
        assert!(
            seeded.audit_entries < 500 + seed::FLAGGED_ENTRIES,
            "no more than one workflow beyond: {seeded:?}"
        );
        assert_eq!(seed_to(&db, 500).unwrap(), None, "already big enough");
        let rounds = time_verify(&db, 3, |_, _| {}).unwrap();
        assert_eq!(rounds.len(), 3);
        assert!(rounds
            .iter()
            .all(|r| r.entries == seeded.audit_entries as u64));
        let ms = |n| Round {
            entries: 1,
            elapsed: Duration::from_millis(n),
        };
        assert_eq!(median(&[ms(5), ms(1), ms(9)]), Some(ms(5)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
