//! The command line and the server's own output: help texts, exit codes for bad usage, the
//! request log, and how evidence is served.

use crate::support::{bin, files_in, run_cli, Server, TempDir};
use serde_json::json;
use std::time::{Duration, Instant};

#[test]
fn every_command_answers_help_with_exit_zero() {
    for args in [&["--help"][..], &["serve", "--help"][..]] {
        let (code, stdout, _) = run_cli(args);
        assert_eq!(code, 0, "expected `fedcore {}` to exit 0", args.join(" "));
        assert!(
            stdout.contains("Usage"),
            "expected usage text from `fedcore {}`, got {stdout:?}",
            args.join(" ")
        );
    }
}

#[test]
fn an_empty_path_or_an_option_where_a_path_belongs_is_refused_and_makes_nothing() {
    // SQLite takes "" for a private temporary database, another one on each connection: a
    // server on it answered 500 to everything, and a token made on it was lost.
    let dir = TempDir::new();
    let commands: [&[&str]; 6] = [
        &["serve", "--db", "", "--listen", "127.0.0.1:0"],
        &[
            "token", "create", "--name", "x", "--role", "agent", "--db", "",
        ],
        &["verify", "--db", ""],
        &["verify", "--db", "--json"],
        &["export", "--db", "x.db", "--run", "r", "--out", ""],
        &["serve", "--db", "x.db", "--key", ""],
    ];
    for args in commands {
        let out = std::process::Command::new(bin())
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("run fedcore");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(2),
            "expected {args:?} refused: {stderr}"
        );
        assert!(stderr.contains("wants a path"), "{args:?}: {stderr}");
        assert_eq!(
            files_in(dir.path()),
            Vec::<String>::new(),
            "{args:?} made files"
        );
    }
}

#[test]
fn serve_runs_with_durability_normal_and_refuses_an_unknown_level() {
    let server = Server::start_with(&["--durability", "normal"]);
    let mut c = server.client();
    assert_eq!(c.get("/health").status, 200);
    let (code, _, stderr) = run_cli(&["serve", "--durability", "fast"]);
    assert_eq!(code, 2, "expected an unknown durability refused: {stderr}");
    assert!(stderr.contains("durability"), "{stderr}");
}

#[test]
fn bad_usage_exits_two_and_says_why() {
    let (code, _, stderr) = run_cli(&["serve", "--no-such-flag"]);
    assert_eq!(code, 2, "expected exit 2 for an unknown flag");
    assert!(
        stderr.contains("no-such-flag"),
        "expected the bad flag named on stderr, got {stderr:?}"
    );
    let (code, _, _) = run_cli(&["frobnicate"]);
    assert_eq!(code, 2, "expected exit 2 for an unknown command");
}

#[test]
fn serve_logs_one_line_per_request_with_method_path_and_status() {
    let server = Server::start();
    assert!(
        server.db.exists(),
        "expected serve to create the database at {}",
        server.db.display()
    );
    let mut c = server.client();
    assert_eq!(c.get("/health").status, 200);
    assert_eq!(c.get("/no/such/route").status, 404);
    assert_eq!(
        c.post(
            "/workflows/runs",
            &json!({"workflow_id": "nope", "input": {}, "actor": "a"})
        )
        .status,
        404
    );

    let wanted = [
        "GET /health 200",
        "GET /no/such/route 404",
        "POST /workflows/runs 404",
    ];
    let mut lines = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && !wanted
            .iter()
            .all(|w| lines.iter().any(|l: &String| l.starts_with(w)))
    {
        lines.extend(server.log_lines());
        std::thread::sleep(Duration::from_millis(20));
    }
    for w in wanted {
        let matching = lines.iter().filter(|l| l.starts_with(w)).count();
        assert_eq!(
            matching, 1,
            "expected exactly one log line starting {w:?}, got {lines:?}"
        );
    }
}

#[test]
fn evidence_is_served_as_json_with_its_exact_bytes() {
    let server = Server::start();
    let mut c = server.client();
    let agent =
        json!({"status": "active", "capabilities": ["b", "a"], "tier": "T2", "actor": "admin"});
    assert_eq!(c.put("/registry/agents/agent-9", &agent).status, 200);
    let audit = c.get("/audit").json();
    // Entry 1 is the creation of the admin token; the registry entry follows it.
    let reference = audit["entries"][1]["evidence_pack_ref"]
        .as_str()
        .expect("agent.put carries evidence")
        .to_string();
    let hash = reference
        .strip_prefix("sha256:")
        .expect("evidence_pack_ref is sha256:<hash>");
    let blob = c.get(&format!("/evidence/{hash}"));
    assert_eq!(blob.status, 200);
    assert_eq!(
        blob.header("content-type"),
        Some("application/json"),
        "expected evidence served as JSON"
    );
    assert_eq!(
        String::from_utf8_lossy(&blob.body),
        r#"{"agent_id":"agent-9","capabilities":["b","a"],"status":"active","tier":"T2"}"#,
        "expected the JCS bytes of the registry entry"
    );
}

#[test]
fn verify_json_answers_a_json_object_also_when_it_could_not_check() {
    let dir = TempDir::new();
    let missing = dir.path().join("missing.db");
    let cases: [&[&str]; 3] = [
        &["verify", "--db", missing.to_str().unwrap(), "--json"],
        &["verify", "--receipts", missing.to_str().unwrap(), "--json"],
        &[
            "verify",
            "--db",
            missing.to_str().unwrap(),
            "--json",
            "--pubkey",
            "not-a-key",
        ],
    ];
    for args in cases {
        let (code, stdout, stderr) = run_cli(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let report: serde_json::Value = serde_json::from_str(stdout.trim())
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not JSON ({e}): {stdout:?}"));
        assert_eq!(report["ok"], false);
        assert_eq!(report["checked"], false);
        assert_eq!(report["error"].as_str(), Some(stderr.trim()), "{report}");
    }
}
