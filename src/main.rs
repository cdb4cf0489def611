//! `fedcore`: parse the command line, run one command, map its outcome to an exit code.

use fedcore::cli::{self, Cli, VerifyArgs};
use fedcore::engine::verify;
use fedcore::http::{self, server::ServerConfig, ServeOptions};
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
        Cli::Verify(args) => match args.receipts.clone() {
            Some(dir) => run_verify_folder(&dir, args.json),
            None => run_verify(args),
        },
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

/// Exit 0 intact, 1 broken, 2 could not check.
fn run_verify(args: VerifyArgs) -> ExitCode {
    let options = verify::Options {
        expect_head: args.expect_head,
        replay: args.replay,
    };
    let checked = store::open_read_only(&args.db)
        .and_then(|reader| reader.snapshot(|r| verify::verify(r, &options))?);
    match checked {
        Ok(report) => {
            if args.json {
                println!("{}", report.to_json());
            } else {
                print!("{report}");
            }
            ExitCode::from(if report.is_intact() { 0 } else { 1 })
        }
        Err(e) => {
            eprintln!("fedcore verify: {e}");
            ExitCode::from(2)
        }
    }
}

/// `verify --receipts DIR`: exit 0 intact, 1 broken or unreadable, 2 no such folder.
fn run_verify_folder(dir: &std::path::Path, json: bool) -> ExitCode {
    if !dir.is_dir() {
        eprintln!(
            "fedcore verify --receipts: {} is not a folder",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let report = fedcore::export::verify_folder(dir);
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
