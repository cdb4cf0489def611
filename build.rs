//! Records the commit the binary is built from, for the provenance of `fedcore proof`'s report:
//! `FEDCORE_BUILD_COMMIT` is the checkout's `HEAD`, marked `-dirty` when a file the binary is
//! built from differs from it, or `unknown` when the source is not a git checkout. (The report
//! used to ask git at run time, in whatever folder the proof ran from.)

use std::path::Path;
use std::process::Command;

/// What the binary is compiled from; a change to anything else does not make it another build.
const SOURCES: [&str; 6] = [
    "src",
    "migrations",
    "schema.sql",
    "Cargo.toml",
    "Cargo.lock",
    "build.rs",
];

fn git(args: &[&str]) -> Option<String> {
    // `--no-optional-locks`: `git status` would otherwise refresh the index, whose change would
    // make the next build run this script, and compile fedcore, again.
    let output = Command::new("git")
        .arg("--no-optional-locks")
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn main() {
    for source in SOURCES {
        println!("cargo:rerun-if-changed={source}");
    }
    // A new commit moves HEAD's branch; `git add` and `git commit` rewrite the index. Paths as
    // git resolves them (a linked worktree keeps its branches in the common folder), and only
    // those that exist: cargo reruns the script on every build for a path that is missing.
    let mut watched = vec![
        "HEAD".to_string(),
        "index".to_string(),
        "packed-refs".to_string(),
    ];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    let commit = match git(&["rev-parse", "HEAD"]) {
        None => "unknown (not built from a git checkout)".to_string(),
        Some(sha) => {
            let mut status = vec!["status", "--porcelain", "--untracked-files=no", "--"];
            status.extend(SOURCES);
            match git(&status) {
                Some(changes) if changes.is_empty() => sha,
                _ => format!("{sha}-dirty"),
            }
        }
    };
    println!("cargo:rustc-env=FEDCORE_BUILD_COMMIT={commit}");
}
