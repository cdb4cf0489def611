//! Renders the PT-004 proof report as Markdown: provenance (time, git SHA, binary digest), the
//! setup, then per scenario its checks, step visibility, policy decisions, gates, audit entries
//! and receipt chain, then the verifier's results, the negative scenarios and the verdict.

use super::{Check, Proof, Scenario};
use serde_json::Value;
use std::fmt::Write;

pub fn render(proof: &Proof) -> String {
    let mut out = String::new();
    let n_checks = proof.checks().count();
    let n_passed = proof.checks().filter(|c| c.passed).count();
    let verdict = if proof.passed() { "PASS" } else { "FAIL" };
    let _ = writeln!(
        out,
        "# PT-004 — workflow orchestration + execution spine: proof report\n"
    );
    let _ = writeln!(
        out,
        "**Verdict: {verdict}** — {n_passed} of {n_checks} checks passed.\n"
    );
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(out, "| generated | {} |", proof.started_at);
    let _ = writeln!(
        out,
        "| fedcore | {} (schema version {}) |",
        env!("CARGO_PKG_VERSION"),
        crate::store::SCHEMA_VERSION
    );
    let _ = writeln!(
        out,
        "| git SHA (the commit the binary was built from) | `{}` |",
        proof.git_sha
    );
    let _ = writeln!(
        out,
        "| binary SHA-256 (image digest) | `{}` |",
        proof.binary_sha256
    );
    let _ = writeln!(out, "| database | `{}` |", shown(&proof.db));
    let _ = writeln!(
        out,
        "| command | `fedcore proof --out {}` |\n",
        proof.out.display()
    );
    let _ = writeln!(
        out,
        "`fedcore proof` started a real server on a free loopback port over a fresh database and drove \
         the PT-004 workflow over HTTP as the agent `{}` and, for approvals, `{}`. Every line below \
         marked ✅ or ❌ is a check the proof made: on what the API answered, on the files it \
         exported, or on what the verifier reported.\n",
        super::AGENT,
        super::APPROVER
    );

    let _ = writeln!(out, "## Setup\n");
    let p = &proof.policy;
    let _ = writeln!(
        out,
        "- Policy `{}` version {}, tier {}, default effect {}, `policy_hash` `{}`",
        s(&p["policy_id"]),
        p["version"],
        s(&p["tier"]),
        s(&p["default_effect"]),
        s(&p["policy_hash"])
    );
    for rule in p["rules"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  - `{}` → **{}**: {} — when `{}`",
            s(&rule["rule_id"]),
            s(&rule["effect"]),
            s(&rule["reason"]),
            rule["when"]
        );
    }
    let d = &proof.definition;
    let steps: Vec<String> = d["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|st| format!("{} {}", s(&st["step_type"]), s(&st["step_id"])))
        .collect();
    let _ = writeln!(
        out,
        "- Workflow `{}` version {}: {}; `definition_hash` `{}`\n",
        s(&d["workflow_id"]),
        d["version"],
        steps.join(" → "),
        s(&d["definition_hash"])
    );

    for scenario in &proof.scenarios {
        render_scenario(&mut out, scenario);
    }

    let _ = writeln!(out, "## Exported receipts and the verifier\n");
    let _ = writeln!(
        out,
        "Each run was exported with `fedcore export` and checked without the database:\n"
    );
    for (folder, check) in &proof.verify_folders {
        let _ = writeln!(
            out,
            "- {} `{}` — {}",
            mark(check),
            shown(folder),
            check.detail
        );
    }
    let (check, text) = &proof.verify_db;
    let _ = writeln!(
        out,
        "\n{} `fedcore verify --db {}`:\n",
        mark(check),
        shown(&proof.db)
    );
    let _ = writeln!(out, "```\n{}\n```\n", text.trim_end());

    let _ = writeln!(out, "## Signatures\n");
    let _ = writeln!(
        out,
        "The server signed every workflow receipt and wrote signed checkpoints of the audit head \
         (C2SP signed-note checkpoints, Ed25519 via ed25519-dalek). Its public key, as \
         `fedcore key show` prints it:\n"
    );
    let _ = writeln!(out, "```\n{}\n```\n", proof.public_key);
    let (check, note) = &proof.signatures;
    let _ = writeln!(out, "{} {} — {}\n", mark(check), check.name, check.detail);
    if let Some(note) = note {
        let _ = writeln!(
            out,
            "The latest signed checkpoint (`fedcore checkpoint`):\n"
        );
        let _ = writeln!(out, "```\n{}\n```\n", note.trim_end());
    }

    let _ = writeln!(out, "## Tamper evidence\n");
    for check in &proof.negative {
        let _ = writeln!(out, "- {} {} — {}", mark(check), check.name, check.detail);
    }

    let _ = writeln!(out, "\n## Verdict\n");
    let failed: Vec<&Check> = proof.checks().filter(|c| !c.passed).collect();
    if failed.is_empty() {
        let _ = writeln!(out, "**PASS.** All {n_checks} checks passed: the three scenarios behaved as the contract says, every receipt and the whole audit chain verify (with every decision replayed), each exported run verifies on its own, and the two tamper scenarios above were caught. Write the audit head down: a later `fedcore verify --expect-head SEQ:HASH` proves the log still holds it.");
    } else {
        let _ = writeln!(
            out,
            "**FAIL.** {} of {n_checks} checks failed:\n",
            failed.len()
        );
        for c in failed {
            let _ = writeln!(out, "- ❌ {} — {}", c.name, c.detail);
        }
    }
    out
}

fn render_scenario(out: &mut String, scenario: &Scenario) {
    let run = &scenario.run;
    let _ = writeln!(out, "## {}\n", scenario.title);
    let _ = writeln!(out, "- Run ID: `{}`", scenario.run_id);
    let _ = writeln!(out, "- Final status: **{}**", s(&run["status"]));
    if !run["failure"].is_null() {
        let f = &run["failure"];
        let _ = writeln!(
            out,
            "- Failure: `{}` at step `{}`: {}",
            s(&f["code"]),
            s(&f["step_id"]),
            s(&f["reason"])
        );
    }
    let _ = writeln!(out, "- Workflow receipt: `{}`\n", s(&run["receipt_hash"]));

    let _ = writeln!(out, "### Checks\n");
    for c in &scenario.checks {
        let _ = writeln!(out, "- {} {} — {}", mark(c), c.name, c.detail);
    }

    let _ = writeln!(out, "\n### Step visibility\n");
    let _ = writeln!(out, "| step | type | attempt | status | actor | started_at | ended_at | receipt_hash |\n|---|---|---|---|---|---|---|---|");
    for st in run["steps"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | `{}` |",
            s(&st["step_id"]),
            s(&st["step_type"]),
            st["attempt"],
            s(&st["status"]),
            s(&st["actor"]),
            s(&st["started_at"]),
            s(&st["ended_at"]),
            short(&st["receipt_hash"])
        );
    }

    let _ = writeln!(out, "\n### Policy decisions\n");
    let _ = writeln!(out, "| step | attempt | effect | policy_id | version | tier | rules_triggered | reason | decision_hash |\n|---|---|---|---|---|---|---|---|---|");
    for d in run["decisions"].as_array().into_iter().flatten() {
        let rules: Vec<String> = d["rules_triggered"]
            .as_array()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        let _ = writeln!(
            out,
            "| {} | {} | **{}** | {} | {} | {} | {} | {} | `{}` |",
            s(&d["step_id"]),
            d["attempt"],
            s(&d["effect"]),
            s(&d["policy_id"]),
            d["policy_version"],
            s(&d["tier"]),
            rules.join(", "),
            s(&d["reason"]),
            short(&d["decision_hash"])
        );
    }

    if let Some(gates) = run["gates"].as_array().filter(|g| !g.is_empty()) {
        let _ = writeln!(out, "\n### Gates\n");
        let _ = writeln!(out, "| gate_id | step | status | requested_by | resolved_by | resolved_at | comment | receipt_hash |\n|---|---|---|---|---|---|---|---|");
        for g in gates {
            let _ = writeln!(
                out,
                "| `{}` | {}#{} | {} | {} | {} | {} | {} | `{}` |",
                s(&g["gate_id"]),
                s(&g["step_id"]),
                g["attempt"],
                s(&g["status"]),
                s(&g["requested_by"]),
                s(&g["resolved_by"]),
                s(&g["resolved_at"]),
                s(&g["comment"]),
                short(&g["receipt_hash"])
            );
        }
    }

    let _ = writeln!(out, "\n### Audit entries\n");
    let _ = writeln!(out, "| seq | at | actor | action | subject | decision | reason | evidence_pack_ref |\n|---|---|---|---|---|---|---|---|");
    for e in &scenario.logs {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            e["seq"],
            s(&e["at"]),
            s(&e["actor"]),
            s(&e["action"]),
            s(&e["subject"]),
            s(&e["decision"]),
            s(&e["reason"]).replace('|', "\\|"),
            short_or_none(&e["evidence_pack_ref"])
        );
    }

    let _ = writeln!(out, "\n### Receipt chain (step → workflow)\n");
    let _ = writeln!(out, "```");
    let _ = writeln!(out, "genesis            {}", s(&run["genesis_hash"]));
    for st in run["steps"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|st| st["receipt_hash"].is_string())
    {
        let _ = writeln!(
            out,
            "step {:<9} #{} {}  (prev {}, {})",
            s(&st["step_id"]),
            st["attempt"],
            s(&st["receipt_hash"]),
            short(&st["prev_receipt_hash"]),
            s(&st["status"])
        );
    }
    let receipt = &scenario.receipt["receipt"];
    for g in receipt["gate_receipts"].as_array().into_iter().flatten() {
        let _ = writeln!(out, "gate               {}", s(g));
    }
    let _ = writeln!(
        out,
        "workflow           {}  ({})",
        s(&scenario.receipt["receipt_hash"]),
        s(&receipt["status"])
    );
    let _ = writeln!(out, "```\n");
}

fn mark(check: &Check) -> &'static str {
    if check.passed {
        "✅"
    } else {
        "❌"
    }
}

/// A JSON value as plain text: strings without quotes, null as an empty cell.
fn s(v: &Value) -> String {
    match v {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// A hash shortened for tables (the full hashes are in the exported receipts).
fn short(v: &Value) -> String {
    let text = s(v);
    let bare = text.strip_prefix("sha256:").unwrap_or(&text);
    if bare.len() > 16 {
        format!("{}…", &text[..text.len() - bare.len() + 16])
    } else {
        text
    }
}

fn shown(path: &std::path::Path) -> String {
    path.display().to_string()
}

/// A shortened hash as code, or "—" where there is none.
fn short_or_none(v: &Value) -> String {
    if v.is_null() {
        "—".into()
    } else {
        format!("`{}`", short(v))
    }
}
