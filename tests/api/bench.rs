//! `fedcore bench load` and the ceiling endpoint it measures: the benchmark must run its whole
//! workload cleanly (every answer checked by the benchmark itself), leave a database that
//! verifies, and report what BENCHMARKS.md quotes. Nothing here is timed.

use crate::support::{run_cli, Server};
use serde_json::{json, Value};

#[test]
fn bench_load_runs_the_governed_mix_cleanly_and_leaves_a_database_that_verifies() {
    let (code, stdout, stderr) = run_cli(&[
        "bench",
        "load",
        "--conns",
        "4",
        "--seconds",
        "1",
        "--warmup",
        "0",
        "--rounds",
        "1",
        "--json",
    ]);
    assert_eq!(code, 0, "bench load failed: {stdout}\n{stderr}");
    let report: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["connections_unserved"], 0, "{report}");
    assert_eq!(report["verified"], true, "{report}");
    let round = &report["rounds"][0];
    for key in [
        "workflows_per_s",
        "step_requests_per_s",
        "ceiling_requests_per_s",
        "ratio_to_ceiling",
    ] {
        let value = round[key].as_f64().unwrap_or(0.0);
        assert!(value > 0.0, "{key} should be measured: {report}");
    }
    assert!(
        round["workflows_completed"].as_u64().unwrap_or(0) > 0,
        "{report}"
    );
    // CPU per request of each phase (in 10 ms ticks over a 1 s window: only the figures large
    // enough to be sure of a tick are required to be non-zero).
    if cfg!(target_os = "linux") {
        let measured = [
            ("ceiling_cpu", "server_us"),
            ("workflow_cpu", "server_us"),
            ("workflow_cpu", "writer_us"),
            ("workflow_cpu", "client_us"),
        ];
        for (phase, who) in measured {
            let value = report[phase][who].as_f64().unwrap_or(0.0);
            assert!(value > 0.0, "{phase}.{who} should be measured: {report}");
        }
    }
    // Every run of the mix writes one of these; the breakdown explains bytes per workflow.
    let tables: Vec<&str> = report["db_tables"]
        .as_array()
        .expect("db_tables")
        .iter()
        .filter_map(|t| t["table"].as_str())
        .collect();
    for table in ["audit_log", "evidence", "steps", "decisions", "runs"] {
        assert!(tables.contains(&table), "{table} missing from {tables:?}");
    }
    assert!(!tables.contains(&"bench_ceiling"), "{tables:?}");
}

#[test]
fn bench_load_refuses_bad_flags_with_exit_two() {
    for args in [
        &["bench", "load", "--conns", "0"][..],
        &["bench", "load", "--seconds", "0"][..],
        &["bench", "load", "--durability", "fast"][..],
        &["bench", "unload"][..],
    ] {
        let (code, _, stderr) = run_cli(args);
        assert_eq!(
            code,
            2,
            "expected `fedcore {}` refused: {stderr}",
            args.join(" ")
        );
    }
}

#[test]
fn the_ceiling_route_exists_only_when_asked_for_and_needs_an_agent_token() {
    let plain = Server::start();
    let mut c = plain.client();
    assert_eq!(c.post("/bench/ceiling", &json!({})).status, 404);

    let bench = Server::start_with(&["--bench-ceiling"]);
    let mut c = bench.client();
    // The client sends the token of the actor a body names: here an agent, then an auditor.
    let agent = json!({"actor": "agent-bench"});
    let first = c.post("/bench/ceiling", &agent);
    assert_eq!(first.status, 201, "{:?}", first.json());
    let second = c.post("/bench/ceiling", &agent);
    assert!(second.json()["id"].as_i64() > first.json()["id"].as_i64());
    let auditor = c.post("/bench/ceiling", &json!({"actor": "auditor-bench"}));
    assert_eq!(
        auditor.status,
        403,
        "only an agent may write: {:?}",
        auditor.json()
    );
    let refused = c.send_unauthenticated("POST", "/bench/ceiling", &[], b"");
    assert_eq!(refused.status, 401);
}

#[test]
fn bench_load_runs_again_on_a_kept_database_and_adds_to_it() {
    let dir = crate::support::TempDir::new();
    let kept = dir.path().join("kept");
    let kept_arg = kept.to_str().unwrap();
    let short = [
        "--conns",
        "2",
        "--seconds",
        "0.5",
        "--warmup",
        "0",
        "--rounds",
        "1",
        "--json",
    ];
    let first = [&["bench", "load", "--keep", kept_arg][..], &short[..]].concat();
    let (code, stdout, stderr) = run_cli(&first);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let first: Value = serde_json::from_str(stdout.trim()).unwrap();

    let db = kept.join("bench.db");
    let again = [
        &["bench", "load", "--db", db.to_str().unwrap()][..],
        &short[..],
    ]
    .concat();
    let (code, stdout, stderr) = run_cli(&again);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let second: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(second["verified"], true, "{second}");
    // On a database of one's own, sizes count what the run added, and no ceiling is measured
    // (its table would stay in the file).
    assert!(second["runs"].as_u64() > Some(0), "{second}");
    assert!(
        second["db_bytes_per_workflow"].as_f64() > Some(0.0),
        "{second}"
    );
    assert_eq!(second["ceiling_measured"], false, "{second}");
    assert_eq!(first["ceiling_measured"], true, "{first}");

    let both = [
        "bench",
        "load",
        "--keep",
        kept_arg,
        "--db",
        db.to_str().unwrap(),
    ];
    assert_eq!(run_cli(&both).0, 2, "--keep and --db exclude each other");
    let missing = dir.path().join("missing.db");
    assert_eq!(
        run_cli(&["bench", "load", "--db", missing.to_str().unwrap()]).0,
        2
    );
}
