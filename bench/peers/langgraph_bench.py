"""LangGraph running the five-step workflow with SqliteSaver checkpoints in a file-backed SQLite.

The graph is a `StateGraph` of five nodes in a line (observe, decide, gate, act, transform) doing
trivial work, compiled with `SqliteSaver` from langgraph-checkpoint-sqlite. Each workflow is one
`invoke` on its own `thread_id`, with `durability="sync"`: LangGraph writes each step's checkpoint
and writes before the next step starts (the default, "async", overlaps the write with the next step;
"exit" writes only at the end).

Concurrency: 32 threads (`--concurrency`) each invoke the compiled graph and start the next run when
it returns. They share one `SqliteSaver` on one `sqlite3` connection opened with
`check_same_thread=False`, which is how the package documents multi-threaded use: the saver holds a
`threading.Lock` around every statement and its commit, so SQLite work is serialised while the
Python work of the graphs overlaps.

Durability: `SqliteSaver.setup()` switches the file to WAL; it does not set `synchronous`, so this
script sets `PRAGMA synchronous=FULL` on the connection (this build's default is FULL too) and
reports both pragmas as read back. Every `put` and `put_writes` is its own committed transaction.
"""

import os
import sqlite3
from typing import TypedDict

from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

import _drive


class State(TypedDict, total=False):
    ticket: str
    seen: int
    plan: str
    allowed: bool
    done: bool
    summary: str


def observe(state: State) -> State:
    return {"seen": 3}


def decide(state: State) -> State:
    return {"plan": "go" if state["seen"] > 0 else "stop"}


def gate(state: State) -> State:
    return {"allowed": state["plan"] == "go"}


def act(state: State) -> State:
    return {"done": state["allowed"]}


def transform(state: State) -> State:
    return {"summary": "ok" if state["done"] else "skipped"}


def build(saver: SqliteSaver):
    graph = StateGraph(State)
    previous = START
    for name, node in [("observe", observe), ("decide", decide), ("gate", gate), ("act", act),
                       ("transform", transform)]:
        graph.add_node(name, node)
        graph.add_edge(previous, name)
        previous = name
    graph.add_edge(previous, END)
    return graph.compile(checkpointer=saver)


def main() -> None:
    args = _drive.parser(__doc__.splitlines()[0]).parse_args()
    with _drive.temp_dir("langgraph-bench-", args.keep) as workdir:
        bench(args, workdir)


def bench(args, workdir: str) -> None:
    path = os.path.join(workdir, "checkpoints.sqlite")
    connection = sqlite3.connect(path, check_same_thread=False)
    saver = SqliteSaver(connection)
    saver.setup()
    with saver.lock:
        connection.execute("PRAGMA synchronous=FULL")
        journal_mode = connection.execute("PRAGMA journal_mode").fetchone()[0]
        synchronous = connection.execute("PRAGMA synchronous").fetchone()[0]
    app = build(saver)

    def run_one(key: str) -> None:
        final = app.invoke({"ticket": key}, {"configurable": {"thread_id": key}},
                           durability="sync")
        if final.get("summary") != "ok":
            raise RuntimeError(f"run {key} ended with {final}")

    _drive.drive(run_one, "warmup", 0, args.warmup, args.concurrency)
    result = _drive.drive(run_one, "wf", args.seconds, args.workflows, args.concurrency)

    # Check that what was counted is in the file: every run has a checkpoint after its fifth step.
    with saver.lock:
        threads = connection.execute(
            "SELECT count(DISTINCT thread_id) FROM checkpoints").fetchone()[0]
        finished = connection.execute(
            "SELECT count(DISTINCT thread_id) FROM checkpoints "
            "WHERE json_extract(CAST(metadata AS TEXT), '$.step') = 5").fetchone()[0]
    connection.close()
    expected = args.warmup + result["workflows"]
    if threads != expected or finished != expected:
        raise SystemExit(f"langgraph: expected {expected} finished runs, found {threads} threads "
                         f"of which {finished} finished")

    _drive.report(
        "langgraph", result,
        concurrency=args.concurrency,
        journal_mode=journal_mode,
        synchronous={0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[synchronous],
        durability="sync",
        **({"database": path} if args.keep else {}),
    )


if __name__ == "__main__":
    main()
