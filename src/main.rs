//! `fedcore`: parse the command line, run one command, map its outcome to an exit code.

use fedcore::cli::{self, Cli};
use fedcore::http::{self, server::ServerConfig, ServeOptions};
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
    }
}
