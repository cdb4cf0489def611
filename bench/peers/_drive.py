"""The load driver both peer benchmarks share.

`drive` keeps `concurrency` workflows in flight from a thread pool, the way fedcore's load client
keeps 32 keep-alive connections busy: each worker starts a workflow, waits for it to finish, and
starts the next, until the time budget (or the workflow count) is used up. The clock stops when the
last workflow in flight has finished, so every counted workflow is complete and durable.
"""

import argparse
import contextlib
import json
import shutil
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, Iterator, Optional

STEPS_PER_WORKFLOW = 5


def parser(description: str) -> argparse.ArgumentParser:
    """The flags both benchmarks take; a benchmark may add its own before parsing."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="start workflows for this long (default 10)")
    parser.add_argument("--workflows", type=int, default=None,
                        help="run exactly this many workflows instead of a time budget")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="workflows in flight at once (default 32)")
    parser.add_argument("--warmup", type=int, default=64,
                        help="workflows run before the clock starts, not counted (default 64)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temp directory with the database (default: removed)")
    return parser


@contextlib.contextmanager
def temp_dir(prefix: str, keep: bool) -> Iterator[str]:
    """A fresh directory for one benchmark's database, removed afterwards unless `keep`."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def drive(run_one: Callable[[str], None], prefix: str, seconds: float,
          workflows: Optional[int], concurrency: int) -> Dict[str, float]:
    """Run workflows from `concurrency` threads; return the count and the elapsed seconds.

    `run_one(workflow_key)` must run one whole workflow and return only once it is durable. Any
    exception stops the benchmark: a failed workflow is never counted as throughput.
    """
    lock = threading.Lock()
    started = 0
    completed = 0
    errors = []
    start = time.perf_counter()
    deadline = start + seconds

    def take() -> Optional[int]:
        nonlocal started
        with lock:
            if errors:
                return None
            if workflows is not None:
                if started >= workflows:
                    return None
            elif time.perf_counter() >= deadline:
                return None
            started += 1
            return started

    def worker() -> None:
        nonlocal completed
        while True:
            number = take()
            if number is None:
                return
            try:
                run_one(f"{prefix}-{number}")
            except BaseException as error:  # noqa: BLE001 - reported, then the run fails
                with lock:
                    errors.append(repr(error))
                return
            with lock:
                completed += 1

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        print(f"workflow failed: {errors[0]} ({len(errors)} failures)", file=sys.stderr)
        sys.exit(1)
    return {"workflows": completed, "seconds": elapsed}


def report(system: str, result: Dict[str, float], **extra) -> None:
    """Print the one JSON line run.sh reads."""
    workflows = result["workflows"]
    seconds = result["seconds"]
    line = {
        "system": system,
        "workflows": workflows,
        "seconds": round(seconds, 3),
        "workflows_per_s": round(workflows / seconds, 1),
        "steps_per_s": round(STEPS_PER_WORKFLOW * workflows / seconds, 1),
    }
    line.update(extra)
    print(json.dumps(line))
