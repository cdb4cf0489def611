#!/usr/bin/env bash
# Runs every benchmark BENCHMARKS.md quotes, in one go, and keeps their outputs.
#
#   bash bench/all.sh                 # about 15 minutes; needs ~3 GB free in $WORK
#   WORK=/big/disk bash bench/all.sh  # where the large databases go (default: /tmp/fedcore-bench-all)
#
# 1. bench load, 32 connections, durability full, then normal (3 rounds each; medians)
# 2. the step rate on an empty database and on one holding 1,000,000 runs, interleaved
#    (empty, large, empty, large, empty, large) so a machine that slows down slows both alike
# 3. bench verify over 1,000,000 audit entries (3 rounds)
# 4. the peers: DBOS, LangGraph and fedcore in one run (bench/peers/run.sh)
# A benchmark that reports errors (exit 1) is recorded and the suite goes on; see its output.
set -uo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/fedcore-bench-all}
OUT=$WORK/results-$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$OUT" || exit 2
cargo build --release || exit 2
# Wherever cargo puts its builds here (CARGO_TARGET_DIR, build.target-dir).
BIN=$(cargo metadata --format-version 1 --no-deps |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release/fedcore

{
  echo "# machine"
  nproc
  grep -m1 'model name' /proc/cpuinfo || true
  free -g | head -2
  uptime
  echo "filesystem of $WORK: $(df -T "$WORK" | awk 'NR==2 {print $2}')"
  git rev-parse HEAD 2>/dev/null || echo "(not a git checkout)"
} > "$OUT/machine.txt"

echo "== 1. bench load, full and normal"
# Every database goes under $WORK, so that empty and large runs use the same disk.
$BIN bench load --conns 32 --rounds 3 --keep "$WORK/full" | tee "$OUT/load-full.txt"
$BIN bench load --conns 32 --rounds 3 --durability normal --keep "$WORK/normal" |
    tee "$OUT/load-normal.txt"
rm -rf "$WORK/full" "$WORK/normal"

echo "== 2. a million runs"
LARGE=$WORK/runs1m.db
if [ ! -f "$LARGE" ]; then
  $BIN bench seed --db "$LARGE" --workflows 1000000 --runs-only | tee "$OUT/seed-1m.txt"
fi
# A file kept from an older build is brought to this build's schema once, here, rather than in
# every copy just before its round (any command that opens it for writing migrates it).
$BIN token list --db "$LARGE" > /dev/null || exit 2
# Both sides take the same path: `--db` on a file made beforehand (so neither round is preceded by
# a ceiling phase, whose rows and WAL would weigh on one side only), synced to disk before the
# round starts (so the copy's write-back does not compete with the round's fsyncs).
for i in 1 2 3; do
  rm -rf "$WORK/empty"; mkdir -p "$WORK/empty"  # never a file left by an interrupted run
  $BIN bench seed --db "$WORK/empty/empty.db" --workflows 0 --runs-only > /dev/null; sync
  $BIN bench load --conns 32 --rounds 1 --no-verify --json --db "$WORK/empty/empty.db" > "$OUT/empty-$i.json"
  rm -rf "$WORK/empty"
  # A copy each time, so every large round starts from the same million runs.
  cp "$LARGE" "$WORK/large.db"; cp "$LARGE.key" "$WORK/large.db.key"; sync
  $BIN bench load --conns 32 --rounds 1 --no-verify --json --db "$WORK/large.db" > "$OUT/large-$i.json"
  rm -f "$WORK"/large.db*
done
python3 - "$OUT" > "$OUT/runs-1m.txt" <<'PY'
import json, statistics, sys
out = sys.argv[1]
def rates(kind):
    return [json.load(open(f"{out}/{kind}-{i}.json"))["step_requests_per_s"] for i in (1, 2, 3)]
empty, large = rates("empty"), rates("large")
print("step requests/s, empty:     ", " ".join(f"{r:.0f}" for r in empty), " median", f"{statistics.median(empty):.0f}")
print("step requests/s, 1M runs:   ", " ".join(f"{r:.0f}" for r in large), " median", f"{statistics.median(large):.0f}")
print(f"1M runs / empty: {statistics.median(large) / statistics.median(empty):.3f}")
PY
cat "$OUT/runs-1m.txt"

echo "== 3. verify over a million audit entries"
$BIN bench verify --entries 1000000 --db "$WORK/verify1m.db" --rounds 3 | tee "$OUT/verify-1m.txt"

echo "== 4. peers"
FEDCORE_BIN=$BIN bash bench/peers/run.sh | tee "$OUT/peers.txt"

echo "results in $OUT"
