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
