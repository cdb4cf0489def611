//! Tokens and roles: every request but `GET /health` authenticates with a bearer token, the
//! token's name is the actor, and its role decides which changes it may make.

use crate::scenarios::{
    audit_after, audit_head, expect, expect_error, flagged_run, new_pt004_run, pt004_server,
    start_step, step_input, text, AGENT, WORKFLOW_ID,
};
use crate::support::{admin_token_file, run_cli, Client, Server, TempDir};
use serde_json::{json, Value};

/// Sends `body` (no `actor`) as `Authorization: Bearer token`, exactly.
fn send_with(
    c: &mut Client,
    token: &str,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> (u16, Value) {
    let bearer = format!("Bearer {token}");
    let bytes = body
        .map(|b| serde_json::to_vec(b).expect("encode"))
        .unwrap_or_default();
    let mut headers = vec![("Authorization", bearer.as_str())];
    if body.is_some() {
        headers.push(("Content-Type", "application/json"));
    }
    let resp = c.send_unauthenticated(method, path, &headers, &bytes);
    let body = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
    (resp.status, body)
}

fn assert_status(got: (u16, Value), status: u16, code: Option<&str>, what: &str) -> Value {
    assert_eq!(
        got.0, status,
        "{what}: expected {status}, got {} {}",
        got.0, got.1
    );
    if let Some(code) = code {
        assert_eq!(got.1["error"]["code"], code, "{what}: {}", got.1);
    }
    got.1
}

#[test]
fn each_role_may_do_its_own_changes_and_every_role_reads() {
    let (_server, mut c) = pt004_server();
    let roles = ["agent", "approver", "admin", "auditor"];
    for role in roles {
        let name = format!("{role}-r");
        let token = c.token(&name, role).expect("a token");
        let may = |r: &str| r == role;
        let what = |w: &str| format!("{w} as {role}");

        for path in [
            "/workflows/runs",
            "/audit",
            "/registry/agents",
            "/policies/pt004_governance",
        ] {
            assert_status(
                send_with(&mut c, &token, "GET", path, None),
                200,
                None,
                &what(path),
            );
        }

        let agent = json!({"status": "active"});
        let got = send_with(
            &mut c,
            &token,
            "PUT",
            "/registry/agents/agent-z",
            Some(&agent),
        );
        let (status, code) = if may("admin") {
            (200, None)
        } else {
            (403, Some("forbidden_role"))
        };
        assert_status(got, status, code, &what("PUT agent"));

        let new_token = json!({"name": format!("made-by-{role}"), "role": "auditor"});
        let got = send_with(&mut c, &token, "POST", "/tokens", Some(&new_token));
        let (status, code) = if may("admin") {
            (201, None)
        } else {
            (403, Some("forbidden_role"))
        };
        assert_status(got, status, code, &what("POST /tokens"));

        let run = json!({"workflow_id": WORKFLOW_ID, "input": {}});
        let got = send_with(&mut c, &token, "POST", "/workflows/runs", Some(&run));
        let (status, code) = if may("agent") {
            (201, None)
        } else {
            (403, Some("forbidden_role"))
        };
        assert_status(got, status, code, &what("POST run"));

        // Run-scoped changes: a refusal there is recorded as request.refused under the name.
        let run_id = new_pt004_run(&mut c, "roles");
        let (seq, _) = audit_head(&mut c);
        let step = json!({"step_id": "observe", "input": step_input("observe", "low")});
        let got = send_with(
            &mut c,
            &token,
            "POST",
            &format!("/workflows/runs/{run_id}/steps"),
            Some(&step),
        );
        if may("agent") {
            assert_status(got, 201, None, &what("POST step"));
        } else {
            assert_status(got, 403, Some("forbidden_role"), &what("POST step"));
            let entries = audit_after(&mut c, seq);
            assert_eq!(entries.len(), 1, "{}: {entries:?}", what("refused step"));
            assert_eq!(entries[0]["action"], "request.refused");
            assert_eq!(entries[0]["actor"], name.as_str());
            assert_eq!(entries[0]["run_id"], run_id.as_str());
        }

        let running = new_pt004_run(&mut c, "status");
        start_step(&mut c, &running, "observe", &step_input("observe", "low"));
        let pause = json!({"status": "PAUSED", "reason": "roles"});
        let got = send_with(
            &mut c,
            &token,
            "PATCH",
            &format!("/workflows/runs/{running}/status"),
            Some(&pause),
        );
        let (status, code) = if may("admin") {
            (200, None)
        } else {
            (403, Some("forbidden_role"))
        };
        assert_status(got, status, code, &what("PATCH status"));

        let (flagged, gate_id) = flagged_run(&mut c, AGENT);
        let approve = json!({"decision": "approve"});
        let got = send_with(
            &mut c,
            &token,
            "PATCH",
            &format!("/workflows/runs/{flagged}/gates/{gate_id}"),
            Some(&approve),
        );
        let (status, code) = if may("approver") {
            (200, None)
        } else {
            (403, Some("forbidden_role"))
        };
        assert_status(got, status, code, &what("PATCH gate"));

        let gate = json!({"step_id": "gate", "reason": "look"});
        let got = send_with(
            &mut c,
            &token,
            "POST",
            &format!("/workflows/runs/{running}/gates"),
            Some(&gate),
        );
        if !may("agent") {
            assert_status(got, 403, Some("forbidden_role"), &what("POST gate"));
        }
    }
}

#[test]
fn requests_without_a_live_token_are_401_and_health_stays_open() {
    let (_server, mut c) = pt004_server();
    let no_token = c.send_unauthenticated("GET", "/workflows/runs", &[], &[]);
    assert_eq!(no_token.status, 401);
    assert_eq!(no_token.error_code(), "unauthenticated");
    assert!(
        no_token
            .header("www-authenticate")
            .is_some_and(|v| v.starts_with("Bearer")),
        "expected WWW-Authenticate: Bearer: {:?}",
        no_token.headers
    );
    for bad in [
        "Bearer fc_nonsense",
        "Basic YWRtaW46YWRtaW4=",
        "Bearer ",
        "fc_x",
    ] {
        let resp = c.send_unauthenticated("GET", "/audit", &[("Authorization", bad)], &[]);
        assert_eq!(resp.status, 401, "{bad}");
        assert_eq!(resp.error_code(), "unauthenticated", "{bad}");
    }
    let health = c.send_unauthenticated("GET", "/health", &[], &[]);
    assert_eq!(health.status, 200, "GET /health needs no token");

    let made = expect(
        c.post("/tokens", &json!({"name": "agent-gone", "role": "agent"})),
        201,
        "make a token",
    );
    let token = text(&made, "token");
    assert!(token.starts_with("fc_") && token.len() == 67, "{token}");
    assert_status(
        send_with(&mut c, &token, "GET", "/audit", None),
        200,
        None,
        "before revoking",
    );
    let revoked = expect(
        c.send("DELETE", "/tokens/agent-gone", &[], &[]),
        200,
        "revoke",
    );
    assert_eq!(
        revoked["revoked"][0]["token_id"], made["token_id"],
        "{revoked}"
    );
    assert_status(
        send_with(&mut c, &token, "GET", "/audit", None),
        401,
        Some("unauthenticated"),
        "after revoking",
    );
    expect_error(
        c.send("DELETE", "/tokens/agent-gone", &[], &[]),
        404,
        "unknown_token",
        "revoke again",
    );
}

#[test]
fn a_body_or_header_actor_that_is_not_the_token_holder_is_403_and_writes_nothing() {
    let (_server, mut c) = pt004_server();
    let token = c.token(AGENT, "agent").expect("agent token");
    let (seq, _) = audit_head(&mut c);
    let run = json!({"workflow_id": WORKFLOW_ID, "input": {}, "actor": "agent-8"});
    assert_status(
        send_with(&mut c, &token, "POST", "/workflows/runs", Some(&run)),
        403,
        Some("actor_mismatch"),
        "body actor",
    );
    let bytes = serde_json::to_vec(&json!({"workflow_id": WORKFLOW_ID, "input": {}})).unwrap();
    let bearer = format!("Bearer {token}");
    let headers = [
        ("Authorization", bearer.as_str()),
        ("Content-Type", "application/json"),
        ("X-Actor", "agent-8"),
    ];
    let resp = c.send_unauthenticated("POST", "/workflows/runs", &headers, &bytes);
    assert_eq!(
        (resp.status, resp.error_code()),
        (403, "actor_mismatch".to_string())
    );
    assert_eq!(audit_head(&mut c).0, seq, "expected nothing written");
    // Without an actor, the token's holder acts.
    let run = json!({"workflow_id": WORKFLOW_ID, "input": {}});
    let made = assert_status(
        send_with(&mut c, &token, "POST", "/workflows/runs", Some(&run)),
        201,
        None,
        "no actor",
    );
    assert_eq!(made["created_by"], AGENT, "{made}");
}

#[test]
fn an_approver_token_in_the_requesters_name_cannot_approve_its_gate() {
    let (_server, mut c) = pt004_server();
    let (run_id, gate_id) = flagged_run(&mut c, AGENT);
    let token = c
        .token(AGENT, "approver")
        .expect("an approver token named agent-7");
    let got = send_with(
        &mut c,
        &token,
        "PATCH",
        &format!("/workflows/runs/{run_id}/gates/{gate_id}"),
        Some(&json!({"decision": "approve"})),
    );
    assert_status(
        got,
        403,
        Some("self_approval"),
        "approval by the requester's name",
    );
    let approver = c.token("approver-9", "approver").expect("approver");
    let got = send_with(
        &mut c,
        &approver,
        "PATCH",
        &format!("/workflows/runs/{run_id}/gates/{gate_id}"),
        Some(&json!({"decision": "approve"})),
    );
    let body = assert_status(got, 200, None, "approval by another");
    assert_eq!(body["gate"]["resolved_by"], "approver-9");
}

#[test]
fn the_token_command_creates_lists_and_revokes_and_a_server_honours_it() {
    let dir = TempDir::new();
    let db = dir.path().join("tokens.db");
    let db_text = db.to_str().unwrap();
    let (code, token, err) = run_cli(&[
        "token",
        "create",
        "--name",
        "auditor-1",
        "--role",
        "auditor",
        "--db",
        db_text,
    ]);
    assert_eq!(code, 0, "{err}");
    let token = token.trim().to_string();
    assert!(token.starts_with("fc_"), "{token}");
    assert_eq!(
        run_cli(&["token", "create", "--name", "x", "--role", "root", "--db", db_text]).0,
        2
    );
    assert_eq!(
        run_cli(&["token", "create", "--name", "bad name", "--role", "agent", "--db", db_text]).0,
        2
    );
    let (code, list, _) = run_cli(&["token", "list", "--db", db_text]);
    assert_eq!(code, 0);
    assert!(
        list.contains("auditor-1\tauditor\t") && list.contains("\tlive"),
        "{list}"
    );
    assert!(!list.contains(&token), "list never shows a secret");

    let server = Server::start_on(&db, &[]);
    let mut c = server.client();
    assert_status(
        send_with(&mut c, &token, "GET", "/audit", None),
        200,
        None,
        "CLI token works",
    );
    let (code, _, err) = run_cli(&["token", "revoke", "--name", "auditor-1", "--db", db_text]);
    assert_eq!(code, 0, "{err}");
    assert_status(
        send_with(&mut c, &token, "GET", "/audit", None),
        401,
        Some("unauthenticated"),
        "revoked while serving",
    );
    assert_eq!(
        run_cli(&["token", "revoke", "--name", "auditor-1", "--db", db_text]).0,
        1
    );

    let entries = audit_after(&mut c, 0);
    let of_auditor: Vec<&Value> = entries
        .iter()
        .filter(|e| e["subject"] == "token:auditor-1")
        .collect();
    assert_eq!(of_auditor.len(), 2, "{of_auditor:?}");
    assert_eq!(of_auditor[0]["action"], "token.created");
    assert_eq!(of_auditor[1]["action"], "token.revoked");
    for entry in of_auditor {
        let hash = entry["payload_hash"].as_str().unwrap();
        let evidence = c.get(&format!("/evidence/{hash}")).json();
        assert_eq!(evidence["name"], "auditor-1", "{evidence}");
        assert_eq!(evidence["role"], "auditor", "{evidence}");
        assert!(evidence["token_id"].is_string(), "{evidence}");
        let text = evidence.to_string();
        assert!(
            !text.contains(&token) && !text.contains("token_hash"),
            "{text}"
        );
    }
    drop(server);
    let (code, out, err) = run_cli(&["verify", "--db", db_text]);
    assert_eq!(code, 0, "verify after token changes: {out}{err}");
}

#[test]
fn the_admin_token_file_is_made_once_with_mode_0600_and_never_overwritten() {
    let dir = TempDir::new();
    let db = dir.path().join("boot.db");
    let mut server = Server::start_on(&db, &[]);
    let file = admin_token_file(&db);
    let first = std::fs::read_to_string(&file).expect("the admin token file");
    assert_eq!(first.trim(), server.admin_token());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "mode {mode:o}");
    }
    let mut c = server.client();
    let head = audit_after(&mut c, 0);
    assert_eq!(head[0]["action"], "token.created", "{:?}", head[0]);
    assert_eq!(head[0]["subject"], "token:admin");
    assert_eq!(server.terminate(), Some(0));

    let restarted = Server::start_on(&db, &[]);
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        first,
        "the file is left as it was"
    );
    let mut c = restarted.client();
    let created: Vec<Value> = audit_after(&mut c, 0)
        .into_iter()
        .filter(|e| e["action"] == "token.created")
        .collect();
    assert_eq!(
        created.len(),
        1,
        "one admin token, made on the first start only"
    );
}

#[test]
fn a_non_loopback_listen_is_refused_until_a_token_exists() {
    let dir = TempDir::new();
    let db = dir.path().join("open.db");
    let db_text = db.to_str().unwrap();
    let (code, _, err) = run_cli(&["serve", "--db", db_text, "--listen", "0.0.0.0:0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no live token"), "{err}");
    assert!(
        !admin_token_file(&db).exists(),
        "no admin token is made for a refused start"
    );
    let (code, _, err) = run_cli(&[
        "token",
        "create",
        "--name",
        "admin-ops",
        "--role",
        "admin",
        "--db",
        db_text,
    ]);
    assert_eq!(code, 0, "{err}");
    let server = Server::start_on(&db, &["--listen", "0.0.0.0:0"]);
    let mut c = server.client();
    expect(
        c.get("/audit"),
        200,
        "served on 0.0.0.0 once a token exists",
    );
}

#[test]
fn every_token_change_extends_the_one_audit_chain() {
    let (server, mut c) = pt004_server();
    expect(
        c.post("/tokens", &json!({"name": "auditor-2", "role": "auditor"})),
        201,
        "create",
    );
    expect(
        c.send("DELETE", "/tokens/auditor-2", &[], &[]),
        200,
        "revoke",
    );
    expect_error(
        c.post("/tokens", &json!({"name": "fedcore", "role": "admin"})),
        422,
        "invalid_value",
        "fedcore's own name",
    );
    let db = server.db.to_str().unwrap().to_string();
    let (code, out, err) = run_cli(&["verify", "--db", &db]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn a_token_revoked_while_its_request_body_is_on_the_way_changes_nothing() {
    use std::io::{BufReader, Write as _};
    let (server, mut c) = pt004_server();
    let made = expect(
        c.post("/tokens", &json!({"name": "admin-thief", "role": "admin"})),
        201,
        "an admin token that will be stolen",
    );
    let stolen = made["token"].as_str().expect("the token").to_string();

    // Headers and the first byte of the body now; the rest after the revocation.
    let body = br#"{"name":"backdoor","role":"admin"}"#;
    let mut slow = std::net::TcpStream::connect(server.addr).expect("connect");
    let head = format!(
        "POST /tokens HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {stolen}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    slow.write_all(head.as_bytes()).expect("send the head");
    slow.write_all(&body[..1]).expect("send a byte");
    slow.flush().expect("flush");
    std::thread::sleep(std::time::Duration::from_millis(300));
    expect(
        c.send("DELETE", "/tokens/admin-thief", &[], &[]),
        200,
        "revoke",
    );
    slow.write_all(&body[1..]).expect("send the rest");
    let answer = crate::support::read_response(&mut BufReader::new(slow)).expect("an answer");
    assert_eq!(
        answer.status,
        401,
        "expected the revoked token refused: {:?}",
        answer.error_code()
    );
    assert_eq!(answer.error_code(), "unauthenticated");

    let listed = expect(c.get("/audit?limit=1000"), 200, "the log")["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        !listed.iter().any(|e| e["subject"] == "token:backdoor"),
        "expected no token made under the revoked one"
    );
    let (code, out, _) = run_cli(&["token", "list", "--db", server.db.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(!out.contains("backdoor"), "{out}");
}

#[test]
fn a_large_refused_request_is_kept_as_its_hash_and_size() {
    let (_server, mut c) = pt004_server();
    let run_id = new_pt004_run(&mut c, "refused");
    let evidence_of = |c: &mut Client, entry: &Value| -> Value {
        let hash = entry["evidence_pack_ref"]
            .as_str()
            .and_then(|r| r.strip_prefix("sha256:"))
            .expect("the refusal's evidence");
        c.get(&format!("/evidence/{hash}")).json()
    };
    let last_refusal = |c: &mut Client| -> Value {
        crate::scenarios::run_logs(c, &run_id)
            .into_iter()
            .rfind(|e| e["action"] == "request.refused")
            .expect("a refusal")
    };
    let path = format!("/workflows/runs/{run_id}/steps");

    // An auditor may not write: a small request is kept as it was sent.
    let small = json!({"step_id": "observe", "input": {"note": "hi"}, "actor": "auditor-1"});
    expect_error(c.post(&path, &small), 403, "forbidden_role", "small");
    let refusal = last_refusal(&mut c);
    let kept = evidence_of(&mut c, &refusal);
    assert_eq!(kept["request"]["input"], json!({"note": "hi"}), "{kept}");

    // A large one is kept as its hash and size, so refusals cannot fill the file.
    let pad = "x".repeat(200_000);
    let large = json!({"step_id": "observe", "input": {"pad": pad}, "actor": "auditor-1"});
    expect_error(c.post(&path, &large), 403, "forbidden_role", "large");
    let refusal = last_refusal(&mut c);
    let kept = evidence_of(&mut c, &refusal);
    let request = json!({"step_id": "observe", "input": {"pad": pad}});
    let canonical = serde_json::to_vec(&request).expect("encode");
    assert_eq!(kept["request"]["omitted"], true, "{kept}");
    assert_eq!(kept["request"]["bytes"], canonical.len(), "{kept}");
    assert_eq!(
        kept["request"]["hash"].as_str(),
        Some(crate::scenarios::h(&request).as_str())
    );
    assert!(kept.to_string().len() < 1000, "{kept}");
}

#[test]
fn a_name_has_one_spelling_so_separation_of_duties_cannot_be_sidestepped_by_case() {
    let (_server, mut c) = pt004_server();
    // agent-7 holds a token (the fixture's runs are its).
    new_pt004_run(&mut c, "case");
    let before = audit_head(&mut c);
    for name in ["Agent-7", "AGENT-7", "Fedcore", "FEDCORE"] {
        let refused = expect_error(
            c.post("/tokens", &json!({"name": name, "role": "approver"})),
            422,
            "invalid_value",
            name,
        );
        assert_eq!(refused["details"]["path"], "name", "{name}: {refused}");
    }
    assert_eq!(audit_head(&mut c), before, "expected no token made");
    // The same spelling may hold another role: the names still match exactly.
    expect(
        c.post("/tokens", &json!({"name": AGENT, "role": "approver"})),
        201,
        "agent-7 as an approver too",
    );
}
