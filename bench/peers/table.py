"""Turn the per-round JSON lines run.sh collected into one markdown table with footnotes.

Input: a file of JSON lines, one per system per round: `{"system", "round", "workflows_per_s",
"steps_per_s", ...}`, or `{"system", "round", "unavailable": "why"}` when a system did not run.
Output (stdout): the table, medians first, then every round, then what each number counts.
"""

import json
import statistics
import sys

ORDER = ["fedcore", "dbos", "langgraph"]
LABEL = {"fedcore": "fedcore (HTTP)", "dbos": "DBOS", "langgraph": "LangGraph"}

FOOTNOTES = """\
What each number counts, so that unlike things are not compared silently:

- **workflows/s** is five-step workflows that ended per second of wall-clock time, 32 in flight, on a
  fresh file-backed SQLite database per round, median over the rounds. It is the column closest to
  meaning the same thing in every row (fedcore's mix differs a little, see below), and the ratio is
  taken on it.
- **steps/s, DBOS and LangGraph**: steps *executed* per second (5 × workflows/s). A DBOS step is one
  `@DBOS.step()` whose output DBOS commits to SQLite before the next step; a LangGraph step is one
  node whose checkpoint and writes SqliteSaver commits before the next node (`durability="sync"`).
  The steps do trivial work in-process; no policy, no audit, no network.
- **steps/s, fedcore**: governed step *requests* per second over HTTP (`step_requests_per_s` of
  `fedcore bench load`). Every step is two requests, `POST …/steps` (policy evaluated, decision and
  audit entries written) and `PATCH …/steps/{id}` (completion, receipt and audit entries written),
  each committed (WAL, `synchronous=FULL`) before it is answered. So fedcore steps/s is about twice
  its executed steps/s, and each of its workflows also carries the run's creation and its receipt.
- **workflows/s, fedcore**: its `workflows_per_s`, runs that ended inside the measured window
  (`workflows_completed` + `workflows_denied` in the raw JSON) over the mix `bench load` drives:
  1 run in 10 is flagged, approved by a second actor and resumed by an admin; 1 in 20 is denied and
  fails closed after fewer steps. The peers run the plain five steps every time.
- Durability as measured: DBOS WAL + `synchronous=FULL` (set by this script; DBOS itself sets no
  journal pragma), LangGraph WAL (set by SqliteSaver) + `synchronous=FULL`, fedcore WAL +
  `synchronous=FULL` (its default). See the JSON lines for the pragmas each peer read back.
"""


def fmt(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def main() -> None:
    rows = {}
    for line in open(sys.argv[1], encoding="utf-8"):
        if line.strip():
            record = json.loads(line)
            rows.setdefault(record["system"], []).append(record)

    medians = {}
    for system, records in rows.items():
        measured = [r for r in records if "unavailable" not in r]
        if measured:
            medians[system] = (statistics.median(r["workflows_per_s"] for r in measured),
                               statistics.median(r["steps_per_s"] for r in measured))

    print("| system | workflows/s (median) | steps/s (median) | workflows/s per round "
          "| steps/s per round | fedcore ÷ system (workflows/s) |")
    print("|---|---:|---:|---|---|---:|")
    for system in ORDER:
        records = rows.get(system, [])
        if system not in medians:
            why = records[0]["unavailable"] if records else "not run"
            print(f"| {LABEL[system]} | {why} | | | | |")
            continue
        workflows, steps = medians[system]
        # A round that did not run stays in the list as "–", so a median over fewer rounds shows.
        per_round_workflows = " / ".join(
            "–" if "unavailable" in r else fmt(r["workflows_per_s"]) for r in records)
        per_round_steps = " / ".join(
            "–" if "unavailable" in r else fmt(r["steps_per_s"]) for r in records)
        if system == "fedcore":
            ratio = "1.00×"
        elif "fedcore" in medians:
            ratio = f"{medians['fedcore'][0] / workflows:.2f}×"
        else:
            ratio = "n/a (no fedcore figure)"
        steps_label = f"{fmt(steps)} step requests" if system == "fedcore" else f"{fmt(steps)} steps"
        print(f"| {LABEL[system]} | {fmt(workflows)} | {steps_label} | {per_round_workflows} "
              f"| {per_round_steps} | {ratio} |")
    print()
    print(FOOTNOTES, end="")


if __name__ == "__main__":
    main()
