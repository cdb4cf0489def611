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
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fedcore serve: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Cli::Verify(args) => run_verify(args),
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
