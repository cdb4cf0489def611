//! `fedcore`: parse the command line, run one command, map its outcome to an exit code.

use fedcore::bench;
use fedcore::cli::{self, BenchCommand, Cli, VerifyArgs};
use fedcore::engine::signing::PublicKey;
use fedcore::engine::verify;
use fedcore::http::{self, server::ServerConfig, ServeOptions};
use fedcore::keyfile;
use fedcore::store;
use std::process::ExitCode;

fn main() -> ExitCode {
    let command = match cli::parse(std::env::args_os().skip(1)) {
        Ok(command) => command,
        Err(e) => {
            eprintln!("fedcore: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Cli::Help(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Cli::Version => {
            println!("fedcore {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Cli::Export(args) => match fedcore::export::export_run(&args.db, &args.run_id, &args.out) {
            Ok(done) => {
                println!(
                    "exported run {} ({}) to {}: {} files, workflow receipt {}",
                    done.run_id,
                    done.status,
                    args.out.display(),
                    done.n_files,
                    done.receipt_hash
                        .as_deref()
                        .unwrap_or("none (the run has not ended)")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fedcore export: {e}");
                ExitCode::from(2)
            }
        },
        Cli::Serve(args) => {
            let options = ServeOptions {
                db: args.db,
                listen: args.listen,
                server: ServerConfig {
                    header_read_timeout: args.header_timeout,
                    request_timeout: args.request_timeout,
                    shutdown_grace: args.shutdown_grace,
                },
                key: args.key,
                durability: args.durability,
                bench_ceiling: args.bench_ceiling,
            };
            match http::serve(options) {
                Ok(()) => {
                    eprintln!("fedcore stopped");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("fedcore serve: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cli::Token(args) => {
            let done = fedcore::admin::run(&args);
            print!("{}", done.stdout);
            eprint!("{}", done.stderr);
            ExitCode::from(done.exit)
        }
        Cli::Verify(args) => {
            let pubkey = match args.pubkey.as_deref().map(keyfile::read_public_key) {
                None => None,
                Some(Ok(key)) => Some(key),
                Some(Err(e)) => {
                    return could_not_check(args.json, format!("fedcore verify --pubkey: {e}"))
                }
            };
            match args.receipts.clone() {
                Some(dir) => run_verify_folder(&dir, args.json, pubkey.as_ref()),
                None => run_verify(args, pubkey),
            }
        }
        Cli::KeyShow { db, key } => run_key_show(&db, key),
        Cli::Bench(command) => run_bench(command),
        Cli::Checkpoint { db } => {
            let latest = store::open_read_only(&db)
                .and_then(|reader| reader.snapshot(store::last_checkpoint)?);
            match latest {
                Ok(Some(checkpoint)) => {
                    print!("{}", checkpoint.note);
                    ExitCode::SUCCESS
                }
                Ok(None) => {
                    eprintln!(
                        "fedcore checkpoint: {} holds no checkpoint yet",
                        db.display()
                    );
                    ExitCode::from(2)
                }
                Err(e) => {
                    eprintln!("fedcore checkpoint: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cli::Proof { out } => match fedcore::proof::run(&out) {
            Ok(proof) => {
                let verdict = if proof.passed() { "PASS" } else { "FAIL" };
                let n = proof.checks().count();
                let passed = proof.checks().filter(|c| c.passed).count();
                println!("PT-004 proof: {verdict} ({passed} of {n} checks passed)");
                for c in proof.checks().filter(|c| !c.passed) {
                    println!("  failed: {} — {}", c.name, c.detail);
                }
                println!("report: {}", proof.report_path().display());
                ExitCode::from(if proof.passed() { 0 } else { 1 })
            }
            Err(e) => {
                eprintln!("fedcore proof: {e}");
                ExitCode::from(2)
            }
        },
    }
}

/// `bench load`: exit 0 clean, 1 when anything went wrong under load, 2 when it could not run.
fn run_bench_load(options: &fedcore::bench::load::LoadOptions, json: bool) -> ExitCode {
    match fedcore::bench::load::run(options) {
        Ok(report) => {
            if json {
                match serde_json::to_string(&report) {
                    Ok(text) => println!("{text}"),
                    Err(e) => {
                        eprintln!("fedcore bench load: {e}");
                        return ExitCode::from(2);
                    }
                }
            } else {
                print!("{}", report.to_text());
            }
            ExitCode::from(if report.clean() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("fedcore bench load: {e}");
            ExitCode::from(2)
        }
    }
}

/// Exit 0 intact, 1 broken, 2 could not check.
fn run_verify(args: VerifyArgs, pubkey: Option<PublicKey>) -> ExitCode {
    let options = verify::Options {
        expect_head: args.expect_head,
        replay: args.replay,
        pubkey,
    };
    match verify::verify_file(&args.db, &options) {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{report}");
            }
            ExitCode::from(if report.is_intact() { 0 } else { 1 })
        }
        Err(e) => could_not_check(args.json, format!("fedcore verify: {e}")),
    }
}

/// Exit 2, could not check: the reason on stderr and, under `--json`, as the one JSON object a
/// caller reads from stdout, `{"ok": false, "checked": false, "error": "…"}`.
fn could_not_check(json: bool, message: String) -> ExitCode {
    eprintln!("{message}");
    if json {
        println!(
            "{}",
            serde_json::json!({"ok": false, "checked": false, "error": message})
        );
    }
    ExitCode::from(2)
}

/// `bench load` (see `run_bench_load`); `bench seed` and `bench verify`: exit 0 done, 2 when a
/// database cannot be seeded or verified.
fn run_bench(command: BenchCommand) -> ExitCode {
    let done = match command {
        BenchCommand::Load { options, json } => return run_bench_load(&options, json),
        BenchCommand::Seed {
            db,
            workflows,
            durability,
            runs_only,
        } => match runs_only {
            true => bench::seed::seed_runs(&db, workflows, durability),
            false => bench::seed::seed(&db, workflows, durability),
        }
        .map(|seeded| print_seeded(&db, &seeded))
        .map_err(|e| format!("fedcore bench seed: {e}")),
        BenchCommand::Verify {
            entries,
            db: Some(db),
            rounds,
        } => bench_verify(&db, entries, rounds),
        BenchCommand::Verify {
            entries,
            db: None,
            rounds,
        } => {
            let dir =
                std::env::temp_dir().join(format!("fedcore-bench-verify-{}", std::process::id()));
            let done = std::fs::create_dir_all(&dir)
                .map_err(|e| format!("fedcore bench verify: {}: {e}", dir.display()))
                .and_then(|()| bench_verify(&dir.join("bench.db"), entries, rounds));
            let _ = std::fs::remove_dir_all(&dir);
            done
        }
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("{why}");
            ExitCode::from(2)
        }
    }
}

fn print_seeded(db: &std::path::Path, s: &bench::seed::SeedSummary) {
    let seconds = s.elapsed.as_secs_f64();
    let ended = match s.completed + s.failed {
        0 => "runs created only".to_string(),
        _ => format!("{} completed, {} failed", s.completed, s.failed),
    };
    println!(
        "seeded {} workflows ({ended}) into {} in {seconds:.1} s: \
         {} audit entries added ({:.0}/s); it holds {} runs, {} audit entries",
        s.workflows,
        db.display(),
        s.added_entries,
        s.added_entries as f64 / seconds.max(1e-9),
        s.runs,
        s.audit_entries
    );
}

/// Seeds `db` up to `entries` audit entries if it holds fewer, then times `verify` over it.
fn bench_verify(db: &std::path::Path, entries: u64, rounds: usize) -> Result<(), String> {
    let failed = |e: bench::verify::BenchError| format!("fedcore bench verify: {e}");
    if let Some(seeded) = bench::verify::seed_to(db, entries).map_err(failed)? {
        print_seeded(db, &seeded);
    }
    let line = |what: &str, r: &bench::verify::Round| {
        println!(
            "{what:<8} {:>9} entries {:>8.3} s {:>9.0} entries/s",
            r.entries,
            r.elapsed.as_secs_f64(),
            r.entries_per_second()
        )
    };
    let timed = bench::verify::time_verify(db, rounds, |i, round| {
        line(&format!("round {}", i + 1), round)
    })
    .map_err(failed)?;
    if let Some(median) = bench::verify::median(&timed) {
        line("median", &median);
    }
    Ok(())
}

/// `verify --receipts DIR`: exit 0 intact, 1 broken or unreadable, 2 no such folder or no
/// export in it (a mistyped path is not a forgery).
fn run_verify_folder(dir: &std::path::Path, json: bool, pubkey: Option<&PublicKey>) -> ExitCode {
    if !dir.is_dir() {
        let why = format!(
            "fedcore verify --receipts: {} is not a folder",
            dir.display()
        );
        return could_not_check(json, why);
    }
    // A folder with nothing of an export in it is a wrong path, not a forgery: exit 2. One that
    // holds an export's files but not its manifest is checked, and is broken (exit 1).
    let export_files = [
        "manifest.json",
        "run.json",
        "audit.jsonl",
        "receipts",
        "evidence",
    ];
    if !export_files.iter().any(|name| dir.join(name).exists()) {
        let why = format!(
            "fedcore verify --receipts: {} holds none of an export's files (manifest.json, \
             run.json, audit.jsonl, receipts/, evidence/): it is not a folder `fedcore export` \
             wrote; nothing was checked",
            dir.display()
        );
        return could_not_check(json, why);
    }
    let report = fedcore::export::verify_folder(dir, pubkey);
    if json {
        let failure = &report.failure;
        println!(
            "{}",
            serde_json::json!({"ok": report.is_intact(), "summary": report.summary(), "failure": failure})
        );
    } else {
        println!("{}", report.summary());
    }
    ExitCode::from(if report.is_intact() { 0 } else { 1 })
}

/// `key show`: the key file's public key, or the database's when there is no key file. Exit 1
/// when both exist and differ, 2 when neither can be read.
fn run_key_show(db: &std::path::Path, key: Option<std::path::PathBuf>) -> ExitCode {
    let key_path = key.unwrap_or_else(|| keyfile::default_path(db));
    let from_file = match key_path.exists() {
        true => match keyfile::load(&key_path) {
            Ok(signer) => Some(signer.public_key().clone()),
            Err(e) => {
                eprintln!("fedcore key show: {e}");
                return ExitCode::from(2);
            }
        },
        false => None,
    };
    let recorded = match db.exists() {
        true => {
            let keys = store::open_read_only(db)
                .and_then(|reader| reader.snapshot(store::signing_keys)?);
            match keys {
                Ok(keys) => keys,
                Err(e) => {
                    eprintln!("fedcore key show: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        false => Vec::new(),
    };
    let recorded: Vec<PublicKey> = recorded
        .iter()
        .filter_map(|k| PublicKey::from_hex(&k.key_name, &k.public_key).ok())
        .collect();
    let Some(public) = from_file.clone().or_else(|| recorded.first().cloned()) else {
        eprintln!(
            "fedcore key show: no key file at {} and no key recorded in {}",
            key_path.display(),
            db.display()
        );
        return ExitCode::from(2);
    };
    println!("{public}");
    println!("key name:   {}", public.name);
    println!("key id:     {}", public.key_id_hex());
    println!("public key: {} (Ed25519, hex)", public.public_hex());
    match (&from_file, recorded.first()) {
        (Some(file), Some(db_key)) if file != db_key => {
            eprintln!(
                "fedcore key show: the key file {} holds {} but {} records {}",
                key_path.display(),
                file,
                db.display(),
                db_key
            );
            ExitCode::from(1)
        }
        _ => ExitCode::SUCCESS,
    }
}
