#!/usr/bin/env bash
# Peers, side by side: the same five-step workflow on DBOS, LangGraph and fedcore (over HTTP),
# each on a fresh file-backed SQLite database with durable settings, in one run.
#
#   bash bench/peers/run.sh            # 3 rounds of 10 s per system
#   ROUNDS=5 bash bench/peers/run.sh
#   FEDCORE_BIN=/path/to/fedcore bash bench/peers/run.sh   # that binary, not a build of this tree
#
# Rounds are interleaved (round 1 of each system, then round 2 of each, ...) so that a machine
# that slows down during the run slows every system alike. Prints one markdown table and writes
# it, with every round's raw JSON, to bench/peers/results/; the path is printed at the end.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
rounds=${ROUNDS:-3}
python=${PYTHON:-python3}
venv="$here/.venv"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv with $python" >&2
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"

# FEDCORE_BIN=path measures another build (say, a branch's) instead of building this checkout.
if [[ -n "${FEDCORE_BIN:-}" ]]; then
    fedcore=$FEDCORE_BIN
else
    echo "building fedcore (release)" >&2
    (cd "$root" && cargo build --release --quiet)
    # Wherever cargo puts its builds here (CARGO_TARGET_DIR, build.target-dir).
    target=$(cd "$root" && cargo metadata --format-version 1 --no-deps |
        "$python" -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    fedcore="$target/release/fedcore"
fi

mkdir -p "$here/results"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
results="$here/results/peers-$stamp.md"
lines=$(mktemp)
trap 'rm -f "$lines"' EXIT
load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)

# Every system here commits durably, so note what the disk under the temp directory gives right
# now for one such commit (one row, WAL, synchronous=FULL, one connection). On a shared disk this
# moves a lot; it is context for the figures, not a correction to them.
fsync_rate=$("$venv/bin/python" - <<'PY'
import os, sqlite3, tempfile, time
with tempfile.TemporaryDirectory(prefix="peers-fsync-") as directory:
    connection = sqlite3.connect(os.path.join(directory, "probe.sqlite"), isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=FULL")
    connection.execute("CREATE TABLE t (x)")
    start, n = time.perf_counter(), 300
    for i in range(n):
        connection.execute("INSERT INTO t VALUES (?)", (i,))
    print(round(n / (time.perf_counter() - start)))
    connection.close()
PY
)
echo "disk: $fsync_rate durable SQLite commits/s from one connection (WAL, synchronous=FULL)" >&2

# One round of fedcore: its own JSON, reduced to the keys the table needs, or why it did not run.
fedcore_round() {
    local round=$1 out err status=0
    out=$(mktemp) err=$(mktemp)
    "$fedcore" bench load --json --rounds 1 --seconds 10 >"$out" 2>"$err" || status=$?
    "$venv/bin/python" - "$round" "$status" "$out" "$err" <<'PY'
import json, re, sys
round_, status, out, err = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
stderr = open(err, encoding="utf-8", errors="replace").read()
line = {"system": "fedcore", "round": round_}
if status != 0 and re.search(r"unknown command|unrecognized|unexpected argument|unknown flag", stderr):
    line["unavailable"] = "not available (bench load missing)"
elif status != 0:
    first = (stderr.strip().splitlines() or ["no output"])[0]
    line["unavailable"] = f"failed (exit {status}: {first})"
else:
    try:
        raw = json.loads(open(out, encoding="utf-8").read())
        line.update(workflows_per_s=raw["workflows_per_s"], steps_per_s=raw["step_requests_per_s"],
                    raw=raw)
    except (ValueError, KeyError) as error:
        line["unavailable"] = f"failed (unreadable JSON: {error!r})"
if "unavailable" in line:
    print(f"  fedcore: {line['unavailable']}", file=sys.stderr)
print(json.dumps(line))
PY
    rm -f "$out" "$err"
}

# One round of a Python peer: its JSON line with the round number added, or why it failed (its
# stderr is shown), so that one peer's failure does not lose the other systems' figures.
peer_round() {
    local system=$1 round=$2 out status=0
    out=$(mktemp)
    (cd "$here" && "$venv/bin/python" "${system}_bench.py" --seconds 10) >"$out" || status=$?
    "$venv/bin/python" - "$system" "$round" "$status" "$out" <<'PY'
import json, sys
system, round_, status, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
text = open(out, encoding="utf-8", errors="replace").read()
if status == 0:
    line = json.loads(text)
    line["round"] = round_
else:
    line = {"system": system, "round": round_, "unavailable": f"failed (exit {status})"}
    print(f"  {system}: {line['unavailable']}", file=sys.stderr)
print(json.dumps(line))
PY
    rm -f "$out"
}

for round in $(seq 1 "$rounds"); do
    echo "round $round/$rounds: dbos" >&2
    peer_round dbos "$round" >>"$lines"
    echo "round $round/$rounds: langgraph" >&2
    peer_round langgraph "$round" >>"$lines"
    echo "round $round/$rounds: fedcore" >&2
    fedcore_round "$round" >>"$lines"
done

table=$("$venv/bin/python" "$here/table.py" "$lines")
echo
echo "$table"

{
    echo "# Peers, side by side ($stamp)"
    echo
    echo "Machine: $(nproc) cores, $(uname -sr); load average $load_at_start at the start," \
         "$(cut -d' ' -f1-3 /proc/loadavg) at the end."
    echo "Temp directory: ${TMPDIR:-/tmp} ($(df -T "${TMPDIR:-/tmp}" | awk 'NR==2 {print $2}'));" \
         "$fsync_rate durable SQLite commits/s from one connection there (WAL, synchronous=FULL)."
    echo "Python $("$venv/bin/python" -c 'import platform, sqlite3; print(platform.python_version(), "with SQLite", sqlite3.sqlite_version)');" \
         "$(grep -v '^#' "$here/requirements.txt" | tr '\n' ' ')"
    if [[ -n "${FEDCORE_BIN:-}" ]]; then
        echo "fedcore: $FEDCORE_BIN (FEDCORE_BIN)."
    else
        echo "fedcore: built from $(cd "$root" && git rev-parse --short HEAD)$(cd "$root" && git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo ' with uncommitted changes')."
    fi
    echo
    echo "$table"
    echo
    echo "## Raw rounds (JSON lines)"
    echo
    echo '```json'
    cat "$lines"
    echo '```'
} >"$results"
echo
echo "results: $results"
