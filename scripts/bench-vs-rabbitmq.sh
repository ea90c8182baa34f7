#!/usr/bin/env bash
# Benchmark lockgate against RabbitMQ, side by side, with lockgate-bench.
#
#   scripts/bench-vs-rabbitmq.sh [--quick] [--rounds N] [--only "SCENARIO ..."] [--out DIR]
#
# Builds lockgate and lockgate-bench in release, starts a private RabbitMQ node
# (scripts/rabbitmq.sh, which installs Debian's rabbitmq-server if missing) and
# a lockgate, both on free 127.0.0.1 ports with fresh data directories, and runs
# every scenario against both in turn (lockgate, RabbitMQ, lockgate, RabbitMQ,
# ...; --rounds, at least 3). Each run samples the broker's RSS and CPU
# (--broker-pid) and verifies every message. Also measures each broker's idle
# RSS and its time from start to accepting AMQP connections.
#
# Writes bench-results/<UTC date>/ (or --out): results.jsonl (one record per
# run), meta.json, results.md (medians with min–max and the lockgate/RabbitMQ
# ratio, ready for the README) and ratios.svg; prints the table.
# Both brokers are stopped on exit, whatever happens.
#
# Time: --quick about 5 minutes, the default about 9, after a ~3-minute release build (fat LTO;
# 8 min 50 s of runs at 17:38 UTC on 2026-11-22).
# Scenarios: transient persistent fanout latency backlog many-queues connections.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=default
ROUNDS=3
ONLY=""
OUT=""

usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) MODE=quick ;;
        --rounds) ROUNDS=${2:?}; shift ;;
        --only) ONLY=${2:?}; shift ;;
        --out) OUT=${2:?}; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
    esac
    shift
done
if [ "$ROUNDS" -lt 3 ]; then
    echo "bench-vs-rabbitmq: --rounds must be at least 3" >&2
    exit 2
fi

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

DATE=$(date -u +%Y-%m-%d)
OUT=${OUT:-$ROOT/bench-results/$DATE}
mkdir -p "$OUT"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/lockgate-bench.XXXXXX")
export LOCKGATE_RABBITMQ_DIR="$WORK/rabbitmq"
LG_PID=""

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [ -n "$LG_PID" ] && kill -0 "$LG_PID" 2>/dev/null; then
        log "stopping lockgate"
        kill -TERM "$LG_PID" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$LG_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$LG_PID" 2>/dev/null || true
    fi
    # Every node under our private directory, including one still starting.
    local node
    for node in "$LOCKGATE_RABBITMQ_DIR"/*/; do
        [ -f "$node/wrapper.pid" ] || continue
        log "stopping RabbitMQ"
        "$ROOT/scripts/rabbitmq.sh" stop "$(basename "$node")" || true
    done
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
elapsed() { python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))" "$1" "$2"; }
rss_mib() { awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$1/status"; }

# Build.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
log "building lockgate and lockgate-bench (release)"
(cd "$ROOT" && cargo build --release -q -p lockgate -p lockgate-bench)
LOCKGATE="$CARGO_TARGET_DIR/release/lockgate"
BENCH="$CARGO_TARGET_DIR/release/lockgate-bench"

# Both brokers and the bench get the highest open-file limit allowed, for
# the connections scenario.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# RabbitMQ (installed if missing by rabbitmq.sh).
log "starting RabbitMQ"
t0=$(now)
RMQ_PORT=$("$ROOT/scripts/rabbitmq.sh" start)
RMQ_START=$(elapsed "$t0" "$(now)")
RMQ_BEAM=$(cat "$LOCKGATE_RABBITMQ_DIR/$RMQ_PORT/rabbit.pid")
RMQ_VERSION=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo unknown)
log "RabbitMQ $RMQ_VERSION on port $RMQ_PORT (beam pid $RMQ_BEAM), accepting after ${RMQ_START}s"

# lockgate, on a free port with a fresh data directory. Like the RabbitMQ node
# (no plugins), it runs without its management API and metrics endpoint.
log "starting lockgate"
cat >"$WORK/lockgate.toml" <<EOF
[management]
enabled = false

[metrics]
enabled = false
EOF
t0=$(now)
"$LOCKGATE" --config "$WORK/lockgate.toml" --listen 127.0.0.1:0 --data-dir "$WORK/lockgate-data" \
    --log-level warn,lockgate=info 2>"$WORK/lockgate.log" >/dev/null &
LG_PID=$!
LG_PORT=""
for _ in $(seq 3000); do
    LG_PORT=$(grep -oE 'listening.*addr=[0-9.]+:[0-9]+' "$WORK/lockgate.log" 2>/dev/null |
        grep -oE '[0-9]+$' | head -n 1 || true)
    [ -n "$LG_PORT" ] && break
    kill -0 "$LG_PID" 2>/dev/null || { cat "$WORK/lockgate.log" >&2; log "lockgate exited"; exit 1; }
    sleep 0.01
done
[ -n "$LG_PORT" ] || { log "lockgate did not start"; exit 1; }
LG_START=$(elapsed "$t0" "$(now)")
log "lockgate on port $LG_PORT (pid $LG_PID), accepting after ${LG_START}s"

sleep 3
LG_IDLE=$(rss_mib "$LG_PID")
RMQ_IDLE=$(rss_mib "$RMQ_BEAM")
log "idle RSS: lockgate ${LG_IDLE} MiB, RabbitMQ ${RMQ_IDLE} MiB"

# Scenario arguments per mode.
if [ "$MODE" = quick ]; then
    TIMING=(--warmup 0.5 --duration 1.5 --drain-timeout 5)
    declare -A ARGS=(
        [transient]="transient"
        [persistent]="persistent"
        [fanout]="fanout"
        [latency]="latency --rates 1000,10000,50000"
        [backlog]="backlog --count 100000"
        [many-queues]="many-queues --queues 200"
        [connections]="connections --count 1000 --hold 3 --churn 1"
    )
else
    TIMING=(--warmup 2 --duration 5 --drain-timeout 10)
    declare -A ARGS=(
        [transient]="transient"
        [persistent]="persistent"
        [fanout]="fanout"
        [latency]="latency --rates 1000,10000,50000"
        [backlog]="backlog --count 1000000"
        [many-queues]="many-queues --queues 1000"
        [connections]="connections --count 10000 --hold 5 --churn 5"
    )
fi
# connections first: its memory-per-connection figure is cleanest on a broker that has
# not yet grown and shrunk its heap for the message scenarios.
SCENARIOS=${ONLY:-connections transient persistent fanout latency backlog many-queues}

RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
ERRORS=()
run_one() {
    local round=$1 scenario=$2 label=$3 port=$4 pid=$5
    local out="$WORK/run.jsonl" status=0
    # shellcheck disable=SC2086 # ARGS entries are word lists
    timeout 900 "$BENCH" --json --label "$label" --broker-pid "$pid" \
        --uri "amqp://guest:guest@127.0.0.1:$port/%2f" "${TIMING[@]}" \
        ${ARGS[$scenario]} >"$out" 2>"$WORK/run.err" || status=$?
    sed "s/^{/{\"round\":$round,/" "$out" >>"$RESULTS"
    if [ "$status" -ne 0 ]; then
        log "  $label $scenario: exit $status: $(tail -n 3 "$WORK/run.err" | tr '\n' ' ')"
        [ "$status" -eq 1 ] || ERRORS+=("$label $scenario round $round (exit $status)")
    fi
}

started=$SECONDS
for round in $(seq "$ROUNDS"); do
    for scenario in $SCENARIOS; do
        [ -n "${ARGS[$scenario]:-}" ] || { log "unknown scenario $scenario"; exit 2; }
        log "round $round/$ROUNDS: $scenario"
        run_one "$round" "$scenario" lockgate "$LG_PORT" "$LG_PID"
        run_one "$round" "$scenario" rabbitmq "$RMQ_PORT" "$RMQ_BEAM"
    done
done
log "runs took $((SECONDS - started))s"
BENCH_ERRORS=$(IFS='|'; echo "${ERRORS[*]:-}")
export BENCH_ERRORS

python3 - "$OUT/meta.json" <<EOF
import json, os, sys
meta = {
    "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
    "mode": "$MODE",
    "rounds": $ROUNDS,
    "rabbitmq_version": "$RMQ_VERSION",
    "machine": "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)",
    "lockgate": {"idle_rss_mib": $LG_IDLE, "start_s": $LG_START},
    "rabbitmq": {"idle_rss_mib": $RMQ_IDLE, "start_s": $RMQ_START},
    "errors": [e for e in os.environ.get("BENCH_ERRORS", "").split("|") if e],
}
json.dump(meta, open(sys.argv[1], "w"), indent=2)
EOF
python3 "$ROOT/scripts/bench/aggregate.py" \
    "$RESULTS" "$OUT/meta.json" "$OUT"
log "results in $OUT (results.md, ratios.svg, results.jsonl)"
