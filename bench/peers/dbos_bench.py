"""DBOS (Transact, Python) running the five-step workflow on a file-backed SQLite system database.

Each workflow is one `@DBOS.workflow()` calling five `@DBOS.step()`s (observe, decide, gate, act,
transform) that do trivial work. DBOS records the workflow's start, every step's output and the
workflow's end in its system database before it moves on, which is what makes it durable.

Concurrency: 32 threads (`--concurrency`) each call the workflow function directly, which runs it in
the calling thread, and start the next when it returns. That keeps 32 workflows in flight, as
fedcore's load client keeps 32 requests in flight. (`DBOS.start_workflow` would hand the same work to
DBOS's own executor pool; calling directly keeps the thread count explicit.)

Durability: DBOS's SQLite engine sets `isolation_level=IMMEDIATE`, `busy_timeout=30000` and
`foreign_keys=ON` and nothing else, so on its own it runs SQLite's defaults: rollback journal
(`journal_mode=DELETE`) and `synchronous=FULL` on this build. DBOS has no setting for pragmas, so
this script sets them itself: the file is switched to WAL before DBOS opens it (WAL is persistent in
the file), and a SQLAlchemy pool listener sets `synchronous=FULL` on every connection DBOS opens.
Every connection's pragmas are read back and reported. `--as-shipped` skips both and measures DBOS
with SQLite's defaults.
"""

import contextlib
import os
import sqlite3

import sqlalchemy
from sqlalchemy import event
from dbos import DBOS, DBOSConfig

import _drive


@DBOS.step()
def observe(ticket: str) -> dict:
    return {"ticket": ticket, "seen": 3}


@DBOS.step()
def decide(observed: dict) -> dict:
    return {"plan": "go" if observed["seen"] > 0 else "stop"}


@DBOS.step()
def gate(decision: dict) -> bool:
    return decision["plan"] == "go"


@DBOS.step()
def act(allowed: bool) -> dict:
    return {"done": allowed}


@DBOS.step()
def transform(result: dict) -> dict:
    return {"summary": "ok" if result["done"] else "skipped"}


@DBOS.workflow()
def five_steps(ticket: str) -> dict:
    observed = observe(ticket)
    decision = decide(observed)
    allowed = gate(decision)
    result = act(allowed)
    return transform(result)


def main() -> None:
    parser = _drive.parser(__doc__.splitlines()[0])
    parser.add_argument("--as-shipped", action="store_true",
                        help="leave SQLite's pragmas as DBOS leaves them (rollback journal)")
    args = parser.parse_args()
    with _drive.temp_dir("dbos-bench-", args.keep) as workdir:
        bench(args, workdir)


def bench(args, workdir: str) -> None:
    as_shipped = args.as_shipped
    path = os.path.join(workdir, "dbos_sys.sqlite")
    seen_pragmas = set()

    if not as_shipped:
        with contextlib.closing(sqlite3.connect(path)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(sqlalchemy.pool.Pool, "connect")
    def durable(dbapi_connection, _record) -> None:
        if not as_shipped:
            dbapi_connection.execute("PRAGMA synchronous=FULL")
        journal = dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]
        synchronous = dbapi_connection.execute("PRAGMA synchronous").fetchone()[0]
        seen_pragmas.add((journal, {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[synchronous]))

    config: DBOSConfig = {
        "name": "fedcore-peer-bench",
        "system_database_url": f"sqlite:///{path}",
        # One connection per worker thread plus a few for DBOS's own background threads.
        "sys_db_pool_size": args.concurrency + 4,
        "run_admin_server": False,
        "log_level": "WARNING",
    }
    DBOS(config=config)
    DBOS.launch()
    try:
        _drive.drive(five_steps, "warmup", 0, args.warmup, args.concurrency)
        result = _drive.drive(five_steps, "wf", args.seconds, args.workflows,
                              args.concurrency)
    finally:
        DBOS.destroy()

    # Check that what was counted is in the file: every workflow SUCCESS with its five steps.
    with contextlib.closing(sqlite3.connect(path)) as connection:
        succeeded = connection.execute(
            "SELECT count(*) FROM workflow_status WHERE status = 'SUCCESS'").fetchone()[0]
        step_rows = connection.execute("SELECT count(*) FROM operation_outputs").fetchone()[0]
    expected = args.warmup + result["workflows"]
    if succeeded != expected or step_rows != 5 * expected:
        raise SystemExit(f"dbos: expected {expected} workflows and {5 * expected} step rows, "
                         f"found {succeeded} and {step_rows}")

    _drive.report(
        "dbos", result,
        concurrency=args.concurrency,
        journal_mode="/".join(sorted({journal for journal, _ in seen_pragmas})),
        synchronous="/".join(sorted({sync for _, sync in seen_pragmas})),
        as_shipped=as_shipped,
        **({"database": path} if args.keep else {}),
    )


if __name__ == "__main__":
    main()
